"""COCO-format detection datasets: json + image folder -> (image, Target).

The COCO file format (`bbox_xywh`, dataset category ids) stops here; everything downstream sees
`boxes_xyxy` in pixels and contiguous labels 0..K-1, and `CategoryMap` maps labels back for evaluation.
The json is validated first (`data.validate`), so a bad record stops here with a report instead of
failing later.
"""
from __future__ import annotations

import contextlib
from collections import Counter
import io
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from retinanet.data.decode import decode_for_input, load_image
from retinanet.data.image_cache import MODES, CachedImage, ImageCache, frame_size
from retinanet.data.transforms import to_tensors
from retinanet.data.validate import (
    DatasetError,
    InvalidRecordsError,
    ValidationReport,
    clean_coco,
    load_coco_json,
    skip_message,
    validate_coco,
)
from retinanet.structures import Target

logger = logging.getLogger("retinanet.data")

# (image uint8 HWC, boxes_xyxy (M,4) in its pixels, labels (M,), iscrowd (M,), the original (H, W) it stands for)
#   -> (image (3,H,W), boxes_xyxy, labels, iscrowd)
TransformFn = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, int]], tuple[Tensor, Tensor, Tensor, Tensor]
]


class CategoryMap:
    """Dataset category ids (any integers, gaps allowed) <-> contiguous labels 0..K-1.

    Labels follow sorted category ids, so the mapping depends only on the declared categories,
    never on which of them a split happens to use. Every category given is kept; `CocoDetection`
    leaves out Roboflow's unused placeholder before building the map (see `data.validate`).
    """

    def __init__(self, categories: Sequence[Mapping[str, Any]]) -> None:
        by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
        if len(by_id) != len(categories):
            raise ValueError("duplicate category ids in the categories list")
        if not by_id:
            raise ValueError("the categories list is empty")
        self.category_ids: list[int] = sorted(by_id)
        self.names: list[str] = [by_id[i] for i in self.category_ids]
        self._label_of = {cat_id: label for label, cat_id in enumerate(self.category_ids)}
        self._ids_table = torch.tensor(self.category_ids, dtype=torch.int64)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def to_label(self, category_id: int) -> int:
        try:
            return self._label_of[int(category_id)]
        except KeyError:
            raise KeyError(f"category id {category_id} is not declared; known ids: {self.category_ids}") from None

    def to_category_id(self, label: int) -> int:
        if not 0 <= int(label) < self.num_classes:
            raise IndexError(f"label {label} is out of range 0..{self.num_classes - 1}")
        return self.category_ids[int(label)]

    def labels_to_category_ids(self, labels: Tensor) -> Tensor:
        """Vectorized `to_category_id` for a tensor of labels on any device; returns int64."""
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise IndexError(f"labels must be in 0..{self.num_classes - 1}")
        return self._ids_table.to(labels.device)[labels.long()]

    def __len__(self) -> int:
        return self.num_classes

    def __repr__(self) -> str:
        return f"CategoryMap(num_classes={self.num_classes}, category_ids={self.category_ids})"


@dataclass(frozen=True)
class _ImageAnnotations:
    """Validated ground truth of one image, in the json image frame."""

    boxes_xyxy: np.ndarray  # (M, 4) float32, clipped, width and height >= 1
    labels: np.ndarray  # (M,) int64 contiguous
    iscrowd: np.ndarray  # (M,) bool


class CocoDetection(Dataset):
    """COCO json + image folder -> (image (3,H,W) float in [0,1], Target).

    Annotations are parsed and validated once here, so bad boxes are counted once and items are cheap.
    Boxes are assumed to be in the frame of the upright (EXIF-applied) image, like the json's width/height.
    Crowd boxes are kept and flagged (`iscrowd=True`); the matcher must never make them positives.

    Invalid records (see `data.validate.PROBLEMS`) raise a `DatasetError` listing all of them with
    `on_invalid="error"`; with `"skip"` they are left out (a bad image file takes its annotations
    along) and a summary is logged. `self.coco` holds the cleaned copy, which the evaluator uses.

    `decode_size=(min_size, max_size)`: the largest resize the transforms do. Images are then read by
    `decode_for_input` (a JPEG at 1/2, 1/4 or 1/8 where that still covers the resize), or, with
    `cache` "ram" or "disk", from an `ImageCache` at that size; the boxes are mapped into the frame
    read and the transforms are told the original size, from which their resize computes its output.
    Without it every image is decoded in full. `Target.orig_size` is always the original (H, W).
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotations_file: str | Path,
        transforms: TransformFn | None = None,
        keep_empty: bool = True,
        on_invalid: str = "error",
        decode_size: tuple[int, int] | None = None,
        cache: str = "none",
        cache_dir: str | Path | None = None,
    ) -> None:
        if on_invalid not in ("error", "skip"):
            raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
        if cache not in MODES or (cache != "none" and decode_size is None):
            raise ValueError(f"cache must be one of {MODES} (ram and disk need a decode_size), got {cache!r}")
        if cache == "disk" and cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir")
        self.images_dir = Path(images_dir)
        self.annotations_file = Path(annotations_file)
        self.transforms = transforms
        self.decode_size = None if decode_size is None else (int(decode_size[0]), int(decode_size[1]))
        self.report, self.coco = self._load_valid(on_invalid)
        self.category_map = CategoryMap(self.coco.dataset["categories"])

        ids: list[int] = []
        annotations: list[_ImageAnnotations] = []
        num_dropped = num_empty = num_crowd = 0
        for image_id in sorted(self.coco.imgs):
            parsed, dropped = self._parse_image(image_id)
            num_dropped += dropped
            has_positive = bool((~parsed.iscrowd).any())
            if not has_positive and not keep_empty:
                continue
            num_empty += int(len(parsed.labels) == 0)
            num_crowd += int(parsed.iscrowd.sum())
            ids.append(image_id)
            annotations.append(parsed)
        self.ids: list[int] = ids
        self._annotations = annotations
        self.num_dropped_boxes = num_dropped
        self.cache: ImageCache | None = None
        if cache != "none":
            assert self.decode_size is not None
            frames = [
                CachedImage(self.image_path(i), self.orig_size(i), frame_size(self.orig_size(i), *self.decode_size))
                for i in range(len(ids))
            ]
            folder = None if cache_dir is None else Path(cache_dir)
            self.cache = ImageCache(cache, frames, *self.decode_size, folder, self.annotations_file.name)

        if num_dropped:
            logger.warning(
                "%s: dropped %d boxes with width or height < 1 px after clipping to the image",
                self.annotations_file.name,
                num_dropped,
            )
        logger.info(
            "%s: %d images (%d without boxes, keep_empty=%s), %d crowd boxes, %d categories",
            self.annotations_file.name,
            len(ids),
            num_empty,
            keep_empty,
            num_crowd,
            self.category_map.num_classes,
        )

    def _load_valid(self, on_invalid: str) -> tuple[ValidationReport, COCO]:
        """Read and validate the json, stop or leave out the bad records, and index the cleaned copy."""
        source = self.annotations_file
        dataset = load_coco_json(source)
        start = time.perf_counter()
        report = validate_coco(dataset, self.images_dir, check_images=True)
        logger.info(
            "%s: checked %d images and %d annotations in %.1f s",
            source.name, report.num_images, report.num_annotations, time.perf_counter() - start,
        )
        if not report.ok and on_invalid == "error":
            raise InvalidRecordsError(report.error_message(source))
        result = clean_coco(dataset, report)
        if not report.ok:
            logger.warning(skip_message(source, report, result))
        if report.note_counts:
            logger.warning(report.notes_message(source))
        if not result.dataset["images"]:
            raise DatasetError(
                f"{source}: no image left after data.on_invalid=skip ({report.kind_counts()}){report.cause()}; "
                "fix the records"
            )
        if not result.dataset["categories"]:
            raise DatasetError(f"{source}: no valid category left ({report.kind_counts()}); fix the categories")
        coco = COCO()
        coco.dataset = result.dataset
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return report, coco

    def _parse_image(self, image_id: int) -> tuple[_ImageAnnotations, int]:
        """COCO annotations of one image -> clipped xyxy boxes and labels; returns them and the count dropped."""
        info = self.coco.imgs[image_id]
        width, height = float(info["width"]), float(info["height"])
        anns = self.coco.imgToAnns.get(image_id, [])
        if not anns:
            empty = _ImageAnnotations(
                np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool)
            )
            return empty, 0
        bbox_xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes_xyxy = np.concatenate([bbox_xywh[:, :2], bbox_xywh[:, :2] + bbox_xywh[:, 2:]], axis=1)
        boxes_xyxy[:, 0::2] = boxes_xyxy[:, 0::2].clip(0.0, width)
        boxes_xyxy[:, 1::2] = boxes_xyxy[:, 1::2].clip(0.0, height)
        keep = (boxes_xyxy[:, 2] - boxes_xyxy[:, 0] >= 1.0) & (boxes_xyxy[:, 3] - boxes_xyxy[:, 1] >= 1.0)
        labels = np.array([self.category_map.to_label(a["category_id"]) for a in anns], dtype=np.int64)
        iscrowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        parsed = _ImageAnnotations(boxes_xyxy[keep].astype(np.float32), labels[keep], iscrowd[keep])
        return parsed, int((~keep).sum())

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.images_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def orig_size(self, index: int) -> tuple[int, int]:
        """(H, W) of item `index` from the json, which validation checked against the upright file."""
        info = self.coco.imgs[self.ids[index]]
        return int(info["height"]), int(info["width"])

    def fill_cache(self) -> None:
        """Decode every image into the cache now (a loader calls this in the main process, before its workers start)."""
        if self.cache is not None:
            self.cache.fill()

    def read_image(self, index: int) -> np.ndarray:
        """uint8 (h, w, 3) of item `index`: the cache's frame, the reduced decode, or the full image (no decode_size)."""
        path = self.image_path(index)
        try:
            if self.cache is not None:
                return self.cache.get(index)
            if self.decode_size is not None:
                return decode_for_input(path, self.orig_size(index), *self.decode_size)
            return load_image(path)
        except OSError as exc:  # damage past the header, which start-up validation cannot see
            raise DatasetError(
                f"{path}: cannot decode image {self.ids[index]} ({exc}); replace the file or remove the image"
            ) from None

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image = self.read_image(index)
        orig_hw = self.orig_size(index)
        ann = self._annotations[index]
        boxes_xyxy = ann.boxes_xyxy
        if image.shape[:2] != orig_hw:  # json pixels -> the pixels of the frame read
            scale = np.array([image.shape[1] / orig_hw[1], image.shape[0] / orig_hw[0]] * 2, dtype=np.float32)
            boxes_xyxy = boxes_xyxy * scale
        transform = self.transforms if self.transforms is not None else to_tensors
        image_t, boxes_xyxy, labels, iscrowd = transform(image, boxes_xyxy, ann.labels, ann.iscrowd, orig_hw)
        target = Target(
            boxes_xyxy=boxes_xyxy,
            labels=labels,
            iscrowd=iscrowd,
            image_id=int(self.ids[index]),
            orig_size=orig_hw,
        )
        return image_t, target

    def summary(self) -> dict[str, Any]:
        """Image and box counts of the loaded split, with names and dataset category ids (for the model card)."""
        coco = self.coco
        per_class: Counter[int] = Counter()
        crowd = empty = 0
        for image_id in self.ids:
            anns = coco.imgToAnns.get(image_id, [])
            boxes = [a for a in anns if not a.get("iscrowd", 0)]
            crowd += len(anns) - len(boxes)
            empty += not boxes
            per_class.update(int(a["category_id"]) for a in boxes)
        cmap = self.category_map
        return {
            "annotations": str(self.annotations_file),
            "images": len(self.ids),
            "empty_images": empty,
            "boxes": sum(per_class.values()),
            "crowd_boxes": crowd,
            "dropped_boxes": int(self.num_dropped_boxes),
            "per_class": [{"id": i, "name": n, "boxes": per_class[i]} for i, n in zip(cmap.category_ids, cmap.names)],
        }

    def image_labels(self) -> list[np.ndarray]:
        """Contiguous labels of each item's non-crowd boxes (no image is opened), for repeat factors."""
        return [ann.labels[~ann.iscrowd] for ann in self._annotations]

    def class_box_counts(self) -> list[int]:
        """Non-crowd boxes per contiguous label (after dropping degenerate boxes): the n_c of class-balanced alpha."""
        counts = np.zeros(self.category_map.num_classes, dtype=np.int64)
        for labels in self.image_labels():
            np.add.at(counts, labels, 1)
        return counts.tolist()

    def aspect_ratios(self) -> list[float]:
        """Width / height of every item, from the json (no image is opened), for aspect-ratio grouping."""
        return [self.coco.imgs[i]["width"] / self.coco.imgs[i]["height"] for i in self.ids]

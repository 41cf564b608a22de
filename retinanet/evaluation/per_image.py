"""Ground truth and detections grouped per image, in xyxy pixels, for the report's per-image analyses.

The confusion matrix, the error types and the worst images all look at one image at a time; they
share this grouping and these IoU functions. Inputs are the COCO ground truth and COCO result
records (`bbox_xywh`, dataset category ids); the category ids stay as they are.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO

MAX_DETS = 100  # COCO's maxDets: the detections per image that AP counts


@dataclass(frozen=True)
class ImageBoxes:
    """One image's ground truth and its detections (highest score first, at most MAX_DETS)."""

    image_id: int
    gt_boxes_xyxy: np.ndarray  # (G, 4) float64
    gt_category_ids: np.ndarray  # (G,) int64
    gt_crowd: np.ndarray  # (G,) bool
    det_boxes_xyxy: np.ndarray  # (D, 4) float64
    det_category_ids: np.ndarray  # (D,) int64
    det_scores: np.ndarray  # (D,) float64, descending

    def keep_detections(self, keep: np.ndarray) -> ImageBoxes:
        """The same image with only the detections where `keep` is true (order kept)."""
        return ImageBoxes(
            self.image_id, self.gt_boxes_xyxy, self.gt_category_ids, self.gt_crowd,
            self.det_boxes_xyxy[keep], self.det_category_ids[keep], self.det_scores[keep],
        )


def xywh_to_xyxy(bbox_xywh: Iterable[Iterable[float]]) -> np.ndarray:
    boxes = np.asarray(list(bbox_xywh), dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _intersection(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    wh = np.minimum(a_xyxy[:, None, 2:], b_xyxy[None, :, 2:]) - np.maximum(a_xyxy[:, None, :2], b_xyxy[None, :, :2])
    return wh.clip(min=0).prod(axis=2)  # (A, B)


def _area(boxes_xyxy: np.ndarray) -> np.ndarray:
    return (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]).clip(min=0).prod(axis=1)


def box_iou(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """(A, 4) and (B, 4) boxes -> (A, B) intersection over union (0 where the union is empty)."""
    inter = _intersection(a_xyxy, b_xyxy)
    union = _area(a_xyxy)[:, None] + _area(b_xyxy)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_ioa(dets_xyxy: np.ndarray, regions_xyxy: np.ndarray) -> np.ndarray:
    """(D, B) intersection over the detection's own area: pycocotools' IoU with a crowd box."""
    inter = _intersection(dets_xyxy, regions_xyxy)
    area = _area(dets_xyxy)[:, None]
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


def group_by_image(coco_gt: COCO, records: Iterable[Mapping[str, Any]], max_dets: int = MAX_DETS) -> list[ImageBoxes]:
    """Every ground-truth image (in id order) with its boxes and its top `max_dets` detections."""
    dets_of: dict[int, list[Mapping[str, Any]]] = {}
    for record in records:
        dets_of.setdefault(int(record["image_id"]), []).append(record)
    unknown = set(dets_of) - set(coco_gt.imgs)
    if unknown:
        raise ValueError(f"detections refer to image ids not in the ground truth: {sorted(unknown)[:10]}")
    images = []
    for image_id in sorted(coco_gt.imgs):
        anns = coco_gt.imgToAnns.get(image_id, [])
        dets = dets_of.get(image_id, [])
        scores = np.asarray([d["score"] for d in dets], dtype=np.float64)
        order = np.argsort(-scores, kind="mergesort")[:max_dets]  # pycocotools' order: ties keep file order
        images.append(ImageBoxes(
            image_id=int(image_id),
            gt_boxes_xyxy=xywh_to_xyxy(a["bbox"] for a in anns),
            gt_category_ids=np.asarray([a["category_id"] for a in anns], dtype=np.int64),
            gt_crowd=np.asarray([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
            det_boxes_xyxy=xywh_to_xyxy(dets[i]["bbox"] for i in order),
            det_category_ids=np.asarray([dets[i]["category_id"] for i in order], dtype=np.int64),
            det_scores=scores[order],
        ))
    return images


def above_thresholds(image: ImageBoxes, thresholds: Mapping[int, float]) -> ImageBoxes:
    """Keep the detections whose score reaches their category's threshold (category id -> threshold)."""
    limits = np.asarray([thresholds[int(c)] for c in image.det_category_ids], dtype=np.float64)
    return image.keep_detections(image.det_scores >= limits)

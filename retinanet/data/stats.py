"""What a COCO detection file holds: boxes per class, box sizes and shapes, boxes per image, rare classes.

These take the (validated) dataset dict as json.load gives it. Crowd boxes are counted apart: they
are ignore regions, not objects to find. Sizes are in the original image's pixels, measured after
clipping to the image, as training sees the boxes before its resize; COCO's buckets are small < 32^2
<= medium < 96^2 <= large (area in pixels), and evaluation's APs / APm / APl use them on these original
pixels (anchor_coverage has the sizes after the resize).
"""
from __future__ import annotations

import json
import math
import textwrap
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retinanet.data.validate import DatasetError
from retinanet.fileio import write_text_atomic

COCO_SMALL, COCO_LARGE = 32**2, 96**2
SIZE_BUCKETS = ("small", "medium", "large")
SIZE_METRICS = {"small": "APs", "medium": "APm", "large": "APl"}
# Fewer training boxes than this: the class is learned from few examples and a few boxes decide its AP.
RARE_BOXES = 10
# Histogram edges on sqrt(box area) in pixels.
SIDE_EDGES = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class ClassCount:
    id: int
    name: str
    boxes: int  # non-crowd boxes
    crowd: int  # crowd boxes
    images: int  # images with at least one box (crowd or not) of the class


def class_counts(dataset: Mapping[str, Any]) -> list[ClassCount]:
    """Every declared category in id order with its box, crowd-box and image counts."""
    boxes: Counter[int] = Counter()
    crowd: Counter[int] = Counter()
    images_of: dict[int, set[int]] = {}
    for ann in dataset.get("annotations", []):
        category_id = int(ann["category_id"])
        (crowd if ann.get("iscrowd") else boxes)[category_id] += 1
        images_of.setdefault(category_id, set()).add(ann["image_id"])
    return [
        ClassCount(int(c["id"]), str(c.get("name", c["id"])), boxes[int(c["id"])], crowd[int(c["id"])],
                   len(images_of.get(int(c["id"]), ())))
        for c in sorted(dataset.get("categories", []), key=lambda c: int(c["id"]))
    ]


def clipped_area(bbox_xywh: list[float], width: float, height: float) -> float:
    """Area of a COCO [x, y, w, h] box after clipping to the image, as training sees it."""
    x1, y1 = min(max(bbox_xywh[0], 0.0), width), min(max(bbox_xywh[1], 0.0), height)
    x2 = min(max(bbox_xywh[0] + bbox_xywh[2], 0.0), width)
    y2 = min(max(bbox_xywh[1] + bbox_xywh[3], 0.0), height)
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def coco_size(area: float) -> str:
    """COCO's size bucket of a box area in pixels."""
    return "small" if area < COCO_SMALL else "medium" if area < COCO_LARGE else "large"


def side_bucket(area: float) -> str:
    side = math.sqrt(area)
    for low, high in zip((0, *SIDE_EDGES), SIDE_EDGES):
        if side < high:
            return f"<{high}" if low == 0 else f"{low}-{high}"
    return f">={SIDE_EDGES[-1]}"


def size_counts(dataset: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """Non-crowd boxes per sqrt(area) bucket (SIDE_EDGES) and per COCO size, after clipping."""
    images = {img["id"]: img for img in dataset.get("images", [])}
    sides = {side_bucket(a): 0 for a in (1.0, *(e**2 for e in SIDE_EDGES))}
    coco = {size: 0 for size in SIZE_BUCKETS}
    for ann in dataset.get("annotations", []):
        if ann.get("iscrowd"):
            continue
        img = images[ann["image_id"]]
        area = clipped_area(ann["bbox"], img["width"], img["height"])
        sides[side_bucket(area)] += 1
        coco[coco_size(area)] += 1
    return sides, coco


def empty_size_note(coco_sizes: Mapping[str, int]) -> str | None:
    """Why evaluation prints "-" for APs, APm or APl on a split with these (original-pixel) size counts."""
    empty = [size for size in SIZE_BUCKETS if not coco_sizes[size]]
    if not empty or len(empty) == len(SIZE_BUCKETS):
        return None
    metrics = ", ".join(SIZE_METRICS[size] for size in empty)
    return (f"no {' or '.join(empty)} boxes in original pixels: evaluated on this split, {metrics} show \"-\" "
            "(no box of that size to find: undefined, not 0)")


@dataclass(frozen=True)
class RareClass:
    id: int
    name: str
    boxes: dict[str, int]  # split -> non-crowd boxes, the training split first


def rare_classes(counts: Mapping[str, list[ClassCount]]) -> list[RareClass]:
    """The classes of the first (training) split with fewer than RARE_BOXES boxes there or none in another split;
    the fewest training boxes first, then the fewest boxes in all."""
    splits = list(counts)
    by_split = {split: {c.id: c.boxes for c in counts[split]} for split in splits}
    rare = []
    for c in counts[splits[0]]:
        boxes = {split: by_split[split].get(c.id, 0) for split in splits}
        if c.boxes < RARE_BOXES or any(boxes[split] == 0 for split in splits[1:]):
            rare.append(RareClass(c.id, c.name, boxes))
    return sorted(rare, key=lambda c: (c.boxes[splits[0]], sum(c.boxes.values()), c.name))


def format_rare_classes(rare: list[RareClass], total: int) -> list[str]:
    """The warning: each rare class with its boxes per split, then what that does to its AP."""
    if not rare:
        return []
    splits = list(rare[0].boxes)
    train, others = splits[0], splits[1:]
    if others:
        head = f"fewer than {RARE_BOXES} boxes in {train} or no box in {' or '.join(others)}"
    else:
        head = f"fewer than {RARE_BOXES} boxes"
    lines = [f"warning: {len(rare)} of {total} classes have {head}:"]
    unused = [c.name for c in rare if not any(c.boxes.values())]
    for c in rare:
        if c.name in unused:
            continue
        counts = ", ".join(f"{c.boxes[split]} in {split}" for split in splits) if others else f"{c.boxes[train]} boxes"
        lines.append(f"  {c.name:<24} {counts}")
    if unused:  # declared but never annotated (a subset of a larger label set): one line, not one row each
        lines += textwrap.wrap(f"no box at all ({len(unused)}, never learned nor evaluated): {', '.join(unused)}",
                               width=110, initial_indent="  ", subsequent_indent="    ")
    lines.append(f"  for AP: a class learned from fewer than {RARE_BOXES} boxes is found poorly, and its per-class AP "
                 "is noisy (a few boxes decide it)")
    if others:
        lines.append('  a class with no box in a split has no AP there: "-" in the per-class table, an empty row in '
                     "report.html and in the operating point (it takes the overall threshold)")
    lines.append("  fix: add boxes of these classes, or merge each into a similar class, before comparing their AP "
                 "(training-side remedies: docs/rare_classes.md)")
    return lines


@dataclass(frozen=True)
class BoxShapes:
    """Per non-crowd box (after clipping): sqrt(area) and width / height; boxes per image."""

    sides: np.ndarray  # (B,) float
    aspect_ratios: np.ndarray  # (B,) float, width / height
    boxes_per_image: np.ndarray  # (I,) int, non-crowd boxes of every image


def box_shapes(dataset: Mapping[str, Any]) -> BoxShapes:
    images = {img["id"]: img for img in dataset.get("images", [])}
    per_image: Counter[int] = Counter()
    sides, ratios = [], []
    for ann in dataset.get("annotations", []):
        if ann.get("iscrowd"):
            continue
        img = images[ann["image_id"]]
        per_image[ann["image_id"]] += 1
        sides.append(math.sqrt(clipped_area(ann["bbox"], img["width"], img["height"])))
        w, h = float(ann["bbox"][2]), float(ann["bbox"][3])
        ratios.append(w / h if h > 0 else math.nan)
    return BoxShapes(np.asarray(sides), np.asarray(ratios), np.asarray([per_image[i] for i in images], dtype=np.int64))


def plot_histograms(dataset: Mapping[str, Any], path: Path) -> Path:
    """One PNG: boxes per class, box sizes (COCO's limits marked), aspect ratios, boxes per image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = class_counts(dataset)
    shapes = box_shapes(dataset)
    figure = Figure(figsize=(12, 8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2)
    names = [c.name for c in counts]
    axes[0, 0].bar(range(len(counts)), [c.boxes for c in counts], color="tab:blue")
    axes[0, 0].set_xticks(range(len(counts)), names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center", fontsize=8)
    axes[0, 0].set(title="boxes per class (crowd left out)", ylabel="boxes")
    if shapes.sides.size:
        axes[0, 1].hist(shapes.sides, bins=50, color="tab:orange")
        for limit in (32, 96):
            axes[0, 1].axvline(limit, color="black", linestyle="--", linewidth=1)
        ratios = shapes.aspect_ratios[np.isfinite(shapes.aspect_ratios) & (shapes.aspect_ratios > 0)]
        axes[1, 0].hist(np.log2(ratios), bins=50, color="tab:green")
    axes[0, 1].set(title="box size: sqrt(area) (dashed: COCO limits 32, 96)", xlabel="px")
    axes[1, 0].set(title="aspect ratio: log2(width / height)", xlabel="log2(w / h)")
    if shapes.boxes_per_image.size:
        top = int(shapes.boxes_per_image.max())
        axes[1, 1].hist(shapes.boxes_per_image, bins=np.arange(top + 2) - 0.5, color="tab:purple")
    axes[1, 1].set(title="boxes per image", xlabel="boxes", ylabel="images")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return Path(path)


def write_check_json(path: Path, figures: Mapping[str, Any]) -> None:
    """The dataset check's --json file (written here and read by `read_check_json`)."""
    write_text_atomic(Path(path), json.dumps(figures, indent=2))


def read_check_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the dataset check file ({exc}); rerun scripts/check_dataset.py --json") from None

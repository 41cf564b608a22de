"""Confusion matrix at one IoU and per-class score thresholds, with a background row and column.

Rows are the ground truth, columns the prediction, both in category order, plus "background" last:
- counts[i, j]: ground-truth boxes of class i found by a detection of class j (i == j: correct);
- counts[i, K]: ground truth of class i that no detection found (missed);
- counts[K, j]: detections of class j that match no ground truth (false positives, duplicates
  included); counts[K, K] is always 0.
Each class's row therefore sums to its non-crowd ground-truth count.

Matching in each image, detections highest score first (COCO's greedy rule, best IoU >= `iou`):
1. each detection takes the unmatched ground truth of its own class with the highest IoU;
2. a detection still unmatched that lies in a crowd box of its own class (intersection over the
   detection's area >= `iou`) is ignored, as COCO ignores it;
3. each detection still unmatched takes the unmatched ground truth of another class with the
   highest IoU: a confusion;
4. what is left over is background (unmatched detections) or missed (unmatched ground truth).
Correct matches go first so that a confusion never takes a box a correct detection would find.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinanet.fileio import RunFileError, write_text_atomic
from retinanet.evaluation.per_image import ImageBoxes, above_thresholds, box_ioa, box_iou
from retinanet.evaluation.plotting import figure_to_array, new_figure, save_figure

FILE_NAME = "confusion_matrix.json"
FIGURE_NAME = "confusion_matrix.png"
BACKGROUND = "background"


@dataclass(frozen=True)
class ConfusionMatrix:
    classes: list[str]  # the K class names, then "background"
    counts: np.ndarray  # (K + 1, K + 1) int64: rows ground truth, columns prediction

    def row_normalized(self) -> np.ndarray:
        """Each row divided by its sum (0 for an empty row): the share of a class's boxes in each column."""
        totals = self.counts.sum(axis=1, keepdims=True)
        return np.divide(self.counts, totals, out=np.zeros(self.counts.shape), where=totals > 0)


def _greedy(iou: np.ndarray, allowed: np.ndarray, det_free: np.ndarray, gt_free: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """COCO's greedy matching: detections in order take the free allowed box with the highest IoU >= min_iou."""
    pairs = []
    for d in np.flatnonzero(det_free):
        candidates = np.where(allowed[d] & gt_free & (iou[d] >= min_iou), iou[d], -1.0)
        if candidates.size and candidates.max() >= 0:
            g = int(np.argmax(candidates))
            gt_free[g] = False
            det_free[d] = False
            pairs.append((int(d), g))
    return pairs


def image_confusion(image: ImageBoxes, index_of: Mapping[int, int], iou: float) -> np.ndarray:
    """(K + 1, K + 1) counts of one image whose detections are already thresholded."""
    k = len(index_of)
    counts = np.zeros((k + 1, k + 1), dtype=np.int64)
    real = ~image.gt_crowd
    gt_boxes, gt_cats = image.gt_boxes_xyxy[real], image.gt_category_ids[real]
    ious = box_iou(image.det_boxes_xyxy, gt_boxes)  # (D, G)
    same = image.det_category_ids[:, None] == gt_cats[None, :]  # (D, G)
    det_free = np.ones(len(image.det_scores), dtype=bool)
    gt_free = np.ones(len(gt_cats), dtype=bool)
    for d, g in _greedy(ious, same, det_free, gt_free, iou):
        counts[index_of[int(gt_cats[g])], index_of[int(image.det_category_ids[d])]] += 1
    if image.gt_crowd.any():
        crowd_ioa = box_ioa(image.det_boxes_xyxy, image.gt_boxes_xyxy[image.gt_crowd])  # (D, C)
        crowd_same = image.det_category_ids[:, None] == image.gt_category_ids[image.gt_crowd][None, :]
        det_free &= ~((crowd_ioa >= iou) & crowd_same).any(axis=1)
    for d, g in _greedy(ious, ~same, det_free, gt_free, iou):
        counts[index_of[int(gt_cats[g])], index_of[int(image.det_category_ids[d])]] += 1
    for d in np.flatnonzero(det_free):
        counts[k, index_of[int(image.det_category_ids[d])]] += 1
    for g in np.flatnonzero(gt_free):
        counts[index_of[int(gt_cats[g])], k] += 1
    return counts


def confusion_matrix(
    images: Sequence[ImageBoxes],
    category_ids: Sequence[int],
    names: Sequence[str],
    thresholds: Mapping[int, float],
    iou: float = 0.5,
) -> ConfusionMatrix:
    """The matrix over all images; `thresholds` maps category id -> the lowest score kept."""
    index_of = {int(c): i for i, c in enumerate(category_ids)}
    counts = np.zeros((len(index_of) + 1,) * 2, dtype=np.int64)
    for image in images:
        counts += image_confusion(above_thresholds(image, thresholds), index_of, iou)
    return ConfusionMatrix([*names, BACKGROUND], counts)


def save_confusion(matrix: ConfusionMatrix, out_dir: Path) -> list[Path]:
    """confusion_matrix.json ({"classes", "counts"}) and confusion_matrix.png in `out_dir`."""
    out_dir = Path(out_dir)
    write_text_atomic(out_dir / FILE_NAME, json.dumps({"classes": matrix.classes, "counts": matrix.counts.tolist()}))
    save_figure(_draw(matrix, dpi=100), out_dir / FIGURE_NAME)
    return [out_dir / FILE_NAME, out_dir / FIGURE_NAME]


def load_confusion(path: Path) -> ConfusionMatrix:
    try:
        raw = json.loads(Path(path).read_text())
        counts = np.asarray(raw["counts"], dtype=np.int64)
        classes = [str(c) for c in raw["classes"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RunFileError(f"{path}: not a confusion matrix file ({exc}); rerun evaluate.py") from None
    if counts.shape != (len(classes), len(classes)):
        raise RunFileError(f"{path}: counts are {counts.shape} for {len(classes)} classes; rerun evaluate.py")
    return ConfusionMatrix(classes, counts)


def _draw(matrix: ConfusionMatrix, dpi: int):
    """Counts (left) and row-normalized shares (right), ground truth down, prediction across."""
    n = len(matrix.classes)
    side = min(12.0, 1.6 + 0.45 * n)
    figure = new_figure(2 * side + 1.0, side + 0.6, dpi=dpi)
    normalized = matrix.row_normalized()
    for column, (values, title) in enumerate(((matrix.counts, "counts"), (normalized, "row-normalized"))):
        axes = figure.add_subplot(1, 2, column + 1)
        axes.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0)
        if n <= 30:
            for i in range(n):
                for j in range(n):
                    text = f"{values[i, j]:d}" if column == 0 else f"{values[i, j]:.2f}"
                    axes.text(j, i, text, ha="center", va="center", fontsize=8,
                              color="white" if normalized[i, j] > 0.5 else "black")
        label_size = 8 if n <= 30 else 5  # COCO's 81 rows still fit
        axes.set_xticks(range(n), matrix.classes, rotation=90 if n > 30 else 45, ha="right" if n <= 30 else "center",
                        fontsize=label_size)
        axes.set_yticks(range(n), matrix.classes, fontsize=label_size)
        axes.set_xlabel("prediction")
        axes.set_ylabel("ground truth")
        axes.set_title(f"confusion matrix ({title})", fontsize=10)
    figure.tight_layout()
    return figure


def confusion_figure(matrix: ConfusionMatrix) -> np.ndarray:
    """The figure as (H, W, 3) uint8, for TensorBoard (`add_image(..., dataformats="HWC")`)."""
    return figure_to_array(_draw(matrix, dpi=72))

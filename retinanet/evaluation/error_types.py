"""What AP is lost to: TIDE's six error types (Bolya et al., ECCV 2020), at IoU 0.5.

Re-implemented from the paper and the `tidecv` reference code rather than depending on `tidecv`, which
pulls in opencv-python (clashing with opencv-python-headless), pandas and seaborn.

Per image, detections highest score first each take the free ground truth of their class with the
highest IoU >= 0.5 (true positive). A detection left over that lies in a crowd box of its class
(intersection over its own area > 0.5) is ignored. Every other detection is a false positive of the
first type that fits, with IoU_same (best IoU with ground truth of its class, taken or not) and
IoU_any (best IoU with any ground truth):
- localization: 0.1 <= IoU_same <= 0.5;
- classification: IoU >= 0.5 with ground truth of another class;
- duplicate: IoU >= 0.5 with ground truth of its class that a higher-scoring detection already took;
- background: IoU_any <= 0.1 (also every detection of an image without ground truth);
- both: anything else (wrong class and poorly placed);
- missed: ground truth no detection took and no localization or classification error points at.

The cost of a type is the AP gained by fixing only that type (TIDE's "main errors"):
localization and classification errors become true positives (of the ground truth's class), at most
one per ground truth, the highest-scoring, and only for ground truth nothing took (the others are
removed); duplicate, background and both errors are removed; missed ground truth is taken out of the
count. AP is COCO's 101-point interpolated AP, averaged over the classes with ground truth or
detections; dAP is in AP points (0-100), never below 0 (as TIDE).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retinanet.fileio import RunFileError, write_text_atomic
from retinanet.evaluation.per_image import ImageBoxes, box_ioa, box_iou
from retinanet.evaluation.plotting import new_figure, save_figure

FILE_NAME = "errors.json"
FIGURE_NAME = "errors.png"
POS_IOU = 0.5
BG_IOU = 0.1
TRUE_POSITIVE = "true_positive"
IGNORED = "ignored"
CLASSIFICATION, LOCALIZATION, BOTH, DUPLICATE, BACKGROUND, MISSED = (
    "classification", "localization", "both", "duplicate", "background", "missed",
)
ERROR_TYPES: tuple[str, ...] = (CLASSIFICATION, LOCALIZATION, BOTH, DUPLICATE, BACKGROUND, MISSED)


@dataclass(frozen=True)
class ImageErrors:
    """The outcome of every detection of one image and the ground truth it missed."""

    image_id: int
    outcomes: list[str]  # per detection (image order): TRUE_POSITIVE, IGNORED or an error type
    targets: list[int]  # per detection: index into the image's ground truth it refers to, -1 for none
    fixable: list[bool]  # per detection: a localization/classification error whose fix adds a true positive
    missed: list[int] = field(default_factory=list)  # indices into the image's ground truth

    def counts(self) -> dict[str, int]:
        """Detections per outcome (true positives and each false-positive type) and missed boxes."""
        counts = {name: self.outcomes.count(name) for name in (TRUE_POSITIVE, *ERROR_TYPES[:-1])}
        counts[MISSED] = len(self.missed)
        return counts


def classify_image(image: ImageBoxes, pos_iou: float = POS_IOU, bg_iou: float = BG_IOU) -> ImageErrors:
    """TIDE's outcome of each detection of one image (see the module doc)."""
    real = np.flatnonzero(~image.gt_crowd)  # ground-truth indices that count
    gt_cats = image.gt_category_ids[real]
    num_dets = len(image.det_scores)
    iou = box_iou(image.det_boxes_xyxy, image.gt_boxes_xyxy[real])  # (D, G)
    same = image.det_category_ids[:, None] == gt_cats[None, :]  # (D, G)
    iou_same = iou * same
    taken = np.zeros(len(real), dtype=bool)
    outcomes = [""] * num_dets
    targets = [-1] * num_dets
    free_iou = iou_same.copy()
    for d in range(num_dets):
        if len(real) and free_iou[d].max() >= pos_iou:
            g = int(np.argmax(free_iou[d]))
            outcomes[d], targets[d] = TRUE_POSITIVE, int(real[g])
            taken[g] = True
            free_iou[:, g] = 0.0
    crowd = np.flatnonzero(image.gt_crowd)
    if crowd.size:
        ioa = box_ioa(image.det_boxes_xyxy, image.gt_boxes_xyxy[crowd])  # (D, C)
        in_crowd = ((ioa > pos_iou) & (image.det_category_ids[:, None] == image.gt_category_ids[crowd][None, :])).any(1)
        for d in np.flatnonzero(in_crowd):
            outcomes[d] = outcomes[d] or IGNORED

    best_score: dict[int, int] = {}  # ground truth -> the highest-scoring loc/cls error pointing at it
    for d in range(num_dets):
        if outcomes[d]:
            continue
        if len(real) == 0:
            outcomes[d] = BACKGROUND
            continue
        other = iou[d] * ~same[d]
        taken_same = iou_same[d] * taken
        if bg_iou <= iou_same[d].max() <= pos_iou:
            outcomes[d], g = LOCALIZATION, int(np.argmax(iou_same[d]))
        elif other.max() >= pos_iou:
            outcomes[d], g = CLASSIFICATION, int(np.argmax(other))
        elif taken_same.max() >= pos_iou:
            outcomes[d], g = DUPLICATE, int(np.argmax(taken_same))
        elif iou[d].max() <= bg_iou:
            outcomes[d], g = BACKGROUND, -1
        else:
            outcomes[d], g = BOTH, -1
        if g >= 0:
            targets[d] = int(real[g])
            if outcomes[d] in (LOCALIZATION, CLASSIFICATION) and not taken[g]:
                best_score.setdefault(g, d)  # detections come highest score first
    fixable = [False] * num_dets
    for d in best_score.values():
        fixable[d] = True
    missed = [int(real[g]) for g in range(len(real)) if not taken[g] and g not in best_score]
    return ImageErrors(image.image_id, outcomes, targets, fixable, missed)


def average_precision(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> float:
    """COCO's 101-point interpolated AP in [0, 1]; 0 without ground truth (TIDE's convention)."""
    if num_gt <= 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    tp = np.cumsum(np.asarray(is_tp, dtype=bool)[order])
    if tp.size == 0:
        return 0.0
    precision = tp / np.arange(1, tp.size + 1)
    recall = tp / num_gt
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope: no dips
    index = np.searchsorted(recall, np.linspace(0.0, 1.0, 101), side="left")
    return float(np.where(index < tp.size, precision[np.minimum(index, tp.size - 1)], 0.0).mean())


def _class_points(
    images: Sequence[ImageBoxes], errors: Sequence[ImageErrors], fix: str | None
) -> tuple[dict[int, list[tuple[float, bool]]], dict[int, int]]:
    """Per category id: (score, is_tp) of every counted detection, and the ground-truth count, with `fix` applied."""
    points: dict[int, list[tuple[float, bool]]] = {}
    num_gt: dict[int, int] = {}
    for image, result in zip(images, errors):
        for g in np.flatnonzero(~image.gt_crowd):
            category = int(image.gt_category_ids[g])
            num_gt[category] = num_gt.get(category, 0) + 1
        if fix == MISSED:
            for g in result.missed:
                num_gt[int(image.gt_category_ids[g])] -= 1
        for d, outcome in enumerate(result.outcomes):
            score, category = float(image.det_scores[d]), int(image.det_category_ids[d])
            if outcome == IGNORED:
                continue
            if outcome != fix or outcome == TRUE_POSITIVE:
                points.setdefault(category, []).append((score, outcome == TRUE_POSITIVE))
            elif result.fixable[d]:  # a fixed localization or classification error
                target_category = int(image.gt_category_ids[result.targets[d]])
                points.setdefault(target_category, []).append((score, True))
    return points, num_gt


def mean_ap(images: Sequence[ImageBoxes], errors: Sequence[ImageErrors], fix: str | None = None) -> float:
    """AP at IoU 0.5 in [0, 1] averaged over classes with ground truth or detections, `fix` fixed."""
    points, num_gt = _class_points(images, errors, fix)
    aps = []
    for category in sorted(set(points) | {c for c, n in num_gt.items() if n > 0}):
        pts = points.get(category, [])
        aps.append(average_precision(np.array([s for s, _ in pts]), np.array([t for _, t in pts], bool),
                                     num_gt.get(category, 0)))
    return float(np.mean(aps)) if aps else float("nan")


def error_costs(images: Sequence[ImageBoxes], errors: Sequence[ImageErrors]) -> dict[str, float]:
    """{error type: dAP in AP points} for the six types, each fixed alone."""
    base = mean_ap(images, errors)
    if np.isnan(base):
        return {name: 0.0 for name in ERROR_TYPES}
    return {name: max(100.0 * (mean_ap(images, errors, name) - base), 0.0) for name in ERROR_TYPES}


def save_errors(costs: Mapping[str, float], out_dir: Path) -> list[Path]:
    """errors.json ({type: dAP} for the six types) and errors.png (a bar per type) in `out_dir`."""
    out_dir = Path(out_dir)
    write_text_atomic(out_dir / FILE_NAME, json.dumps({name: round(float(costs[name]), 4) for name in ERROR_TYPES}, indent=2))
    figure = new_figure(6.0, 3.2)
    axes = figure.add_subplot(1, 1, 1)
    values = [costs[name] for name in ERROR_TYPES]
    bars = axes.bar(ERROR_TYPES, values, color=[OUTCOME_COLORS[name] for name in ERROR_TYPES])
    axes.bar_label(bars, fmt="%.1f", fontsize=8)
    axes.set_ylabel("AP50 gained if fixed (points)")
    axes.set_title("TIDE error types: what each costs", fontsize=10)
    axes.tick_params(axis="x", labelsize=8)
    axes.set_ylim(0, max(1.0, max(values) * 1.2))
    figure.tight_layout()
    save_figure(figure, out_dir / FIGURE_NAME)
    return [out_dir / FILE_NAME, out_dir / FIGURE_NAME]


def load_errors(path: Path) -> dict[str, float]:
    try:
        raw = json.loads(Path(path).read_text())
        return {name: float(raw[name]) for name in ERROR_TYPES}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RunFileError(f"{path}: not an errors file ({exc}); rerun evaluate.py") from None


# Colours of each outcome in the figures and the worst-image drawings.
OUTCOME_COLORS: dict[str, str] = {
    TRUE_POSITIVE: "#14c83c",
    CLASSIFICATION: "#a020f0",
    LOCALIZATION: "#ffc800",
    BOTH: "#8c5a28",
    DUPLICATE: "#00c8ff",
    BACKGROUND: "#e61919",
    MISSED: "#ff7800",
}

"""Precision-recall curves and precision / recall / F1 against the score threshold, at IoU 0.5.

The input is what COCO counts at IoU 0.5 (`CocoEvaluator.matches`: every counted detection's score
and TP flag, and the non-crowd ground-truth count per class), so these curves agree with AP50.
"Pooled" puts every class's detections into one list, as the overall operating point does.

- PR curve: COCO's interpolated precision (the best precision at recall >= r) at r = 0, 0.01, ..., 1;
  its mean is AP50.
- Threshold curves: keeping the detections with score >= t, for t = 0, 0.01, ..., 1: precision
  (undefined where nothing is kept: nan, null in JSON), recall and F1 = 2PR / (P + R).
- Max F1: the exact best threshold over the detections' own scores (`operating_point.find_threshold`
  without a target), which the grid only approximates.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from retinanet.fileio import RunFileError, write_text_atomic
from retinanet.evaluation.evaluator import ClassMatches
from retinanet.evaluation.operating_point import find_threshold
from retinanet.evaluation.plotting import figure_to_array, new_figure, save_figure

FILE_NAME = "curves.json"
PR_FIGURE = "pr_curves.png"
F1_FIGURE = "f1_curves.png"
GRID = np.round(np.linspace(0.0, 1.0, 101), 2)  # recall points of the PR curve and score thresholds of the others
POOLED = "all classes"
MAX_LEGEND = 20  # more classes than this: per-class curves without a legend (their numbers are in curves.json)


def pooled(matches: Mapping[int, ClassMatches]) -> ClassMatches:
    """Every class's detections in one list, against every class's ground truth."""
    values = list(matches.values())
    return ClassMatches(
        np.concatenate([m.scores for m in values] or [np.zeros(0)]),
        np.concatenate([m.is_tp for m in values] or [np.zeros(0, bool)]),
        sum(m.num_gt for m in values),
    )


def pr_curve(m: ClassMatches) -> np.ndarray:
    """Interpolated precision at the 101 recall points; 0 past the highest recall (COCO's rule)."""
    if m.num_gt == 0 or m.scores.size == 0:
        return np.zeros(GRID.size)
    order = np.argsort(-m.scores, kind="mergesort")
    tp = np.cumsum(m.is_tp[order])
    precision = np.maximum.accumulate((tp / np.arange(1, tp.size + 1))[::-1])[::-1]
    index = np.searchsorted(tp / m.num_gt, GRID, side="left")
    return np.where(index < tp.size, precision[np.minimum(index, tp.size - 1)], 0.0)


def threshold_curves(m: ClassMatches) -> dict[str, np.ndarray]:
    """Precision, recall and F1 of the detections with score >= t for every t on the grid."""
    ascending = np.sort(m.scores)
    tp_scores = np.sort(m.scores[m.is_tp])
    kept = ascending.size - np.searchsorted(ascending, GRID, side="left")  # (T,) detections with score >= t
    tp = tp_scores.size - np.searchsorted(tp_scores, GRID, side="left")
    precision = np.divide(tp, kept, out=np.full(GRID.size, np.nan), where=kept > 0)
    recall = tp / m.num_gt if m.num_gt else np.zeros(GRID.size)
    f1 = np.divide(2 * tp, kept + m.num_gt, out=np.zeros(GRID.size), where=(kept + m.num_gt) > 0)
    return {"threshold": GRID.copy(), "precision": precision, "recall": recall, "f1": f1}


def _entry(m: ClassMatches) -> dict[str, Any]:
    best = find_threshold(m.scores, m.is_tp, m.num_gt)
    return {
        "num_gt": m.num_gt,
        "ap50": float(pr_curve(m).mean()) if m.num_gt else None,
        "pr": {"recall": GRID.tolist(), "precision": pr_curve(m).tolist()},
        "by_threshold": {k: [None if np.isnan(x) else float(x) for x in v] for k, v in threshold_curves(m).items()},
        "max_f1": None if best is None else {
            "threshold": best.threshold, "precision": best.precision, "recall": best.recall, "f1": best.f1,
        },
    }


def curves_data(matches: Mapping[int, ClassMatches], names: Mapping[int, str]) -> dict[str, Any]:
    """The curves.json layout: {"iou": 0.5, "pooled": entry, "per_class": {name: entry}}."""
    return {
        "iou": 0.5,
        "pooled": _entry(pooled(matches)),
        "per_class": {names[c]: {"id": int(c), **_entry(m)} for c, m in matches.items()},
    }


def save_curves(data: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """curves.json, pr_curves.png and f1_curves.png in `out_dir`."""
    out_dir = Path(out_dir)
    write_text_atomic(out_dir / FILE_NAME, json.dumps(data))
    save_figure(_pr_figure(data), out_dir / PR_FIGURE)
    save_figure(_threshold_figure(data, per_class=True), out_dir / F1_FIGURE)
    return [out_dir / FILE_NAME, out_dir / PR_FIGURE, out_dir / F1_FIGURE]


def load_curves(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data["pooled"]["pr"], dict) or not isinstance(data["per_class"], dict):
            raise TypeError("pooled.pr and per_class must be objects")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RunFileError(f"{path}: not a curves file ({exc}); rerun evaluate.py") from None
    return data


def _label(name: str, entry: Mapping[str, Any], measure: str = "AP50") -> str:
    ap = entry.get("ap50")
    return f"{name} ({measure} {100 * ap:.1f}, {entry['num_gt']} gt)" if ap is not None else f"{name} (no gt)"


def _legend(axes: Any, data: Mapping[str, Any]) -> None:
    """A legend right of the axes, off the curves: of every curve, or with more than MAX_LEGEND classes
    drawn only of the pooled one (the rest would fill the figure)."""
    entries = list(zip(*axes.get_legend_handles_labels()))
    if sum(1 for entry in data["per_class"].values() if entry["num_gt"]) > MAX_LEGEND:
        entries = [(handle, label) for handle, label in entries if label.startswith(POOLED)]
    if entries:
        axes.legend(*zip(*entries), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                    frameon=False)


def _pr_figure(data: Mapping[str, Any]):
    figure = new_figure(8.5, 5.0)
    axes = figure.add_subplot(1, 1, 1)
    for name, entry in data["per_class"].items():
        if entry["num_gt"]:
            axes.plot(entry["pr"]["recall"], entry["pr"]["precision"], linewidth=1.2, label=_label(name, entry))
    pooled_entry = data["pooled"]
    axes.plot(pooled_entry["pr"]["recall"], pooled_entry["pr"]["precision"], color="black", linewidth=2.5,
              label=_label(POOLED + " pooled", pooled_entry, "area"))
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    axes.set_title("precision-recall at IoU 0.5", fontsize=10)
    axes.grid(True, alpha=0.3)
    _legend(axes, data)
    figure.tight_layout()
    return figure


def _threshold_figure(data: Mapping[str, Any], per_class: bool, dpi: int = 100):
    """Pooled P/R/F1 against the threshold (left); with `per_class`, each class's F1 (right)."""
    figure = new_figure(12.0 if per_class else 5.5, 4.8, dpi=dpi)
    axes = figure.add_subplot(1, 2 if per_class else 1, 1)
    entry = data["pooled"]
    curves = entry["by_threshold"]
    for key, color in (("precision", "tab:blue"), ("recall", "tab:orange"), ("f1", "black")):
        values = [np.nan if v is None else v for v in curves[key]]
        axes.plot(curves["threshold"], values, color=color, label=key, linewidth=2 if key == "f1" else 1.2)
    best = entry["max_f1"]
    if best is not None:
        axes.axvline(best["threshold"], color="tab:red", linestyle="--", linewidth=1)
        axes.plot([best["threshold"]], [best["f1"]], "o", color="tab:red",
                  label=f"max F1 {best['f1']:.3f} at {best['threshold']:.3f}")
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold")
    axes.set_title(f"{POOLED} pooled: precision, recall, F1 (IoU 0.5)", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)  # below the axes
    if per_class:
        axes = figure.add_subplot(1, 2, 2)
        for name, class_entry in data["per_class"].items():
            if not class_entry["num_gt"]:
                continue
            line, = axes.plot(class_entry["by_threshold"]["threshold"], class_entry["by_threshold"]["f1"],
                              linewidth=1.2, label=name)
            if class_entry["max_f1"] is not None:
                axes.plot([class_entry["max_f1"]["threshold"]], [class_entry["max_f1"]["f1"]], "o",
                          color=line.get_color())
        axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel="F1")
        axes.set_title("F1 per class (dots: each class's max)", fontsize=10)
        axes.grid(True, alpha=0.3)
        _legend(axes, data)
    figure.tight_layout()
    return figure


def f1_figure(matches: Mapping[int, ClassMatches], names: Mapping[int, str]) -> np.ndarray:
    """Pooled precision, recall and F1 against the threshold as (H, W, 3) uint8, for TensorBoard."""
    return figure_to_array(_threshold_figure(curves_data(matches, names), per_class=False, dpi=72))

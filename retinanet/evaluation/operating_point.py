"""Operating point: the score threshold that meets a precision or recall target on a labelled set.

The input is what COCO counts at IoU 0.5 (`CocoEvaluator.matches`): every detection's score and
whether it is a true positive, plus the number of non-crowd ground-truth boxes. A threshold t
keeps every detection with score >= t, so tied scores are kept or dropped together and the
candidates are the distinct scores. Rules, chosen so the result is the most useful point:

- precision target P: the highest recall whose precision is >= P; among thresholds with that
  recall, the highest one (a lower one only adds false positives);
- recall target R: the highest threshold whose recall is >= R (the fewest detections);
- no target: the threshold with the highest F1 (the highest threshold on a tie).

An unreachable target is reported (`reached=False`) with the closest point: the highest
precision (then the highest recall) for a precision target, the highest recall for a recall
target. Without detections or without ground truth the point is undefined (`None`).

Scores are compared after rounding to COCO results' 5 decimals (`detections_to_coco`), so a
threshold found on evaluation records keeps the same detections when applied to raw scores.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from retinanet.fileio import RunFileError
from retinanet.fileio import write_text_atomic
from retinanet.evaluation.evaluator import ClassMatches

FILE_NAME = "operating_point.json"
IOU = 0.5
SCORE_DECIMALS = 5  # COCO result records round scores to this (detections_to_coco)


@dataclass(frozen=True)
class OperatingPoint:
    """One score threshold and what it gives on the evaluation set."""

    threshold: float
    precision: float
    recall: float
    f1: float
    reached: bool


@dataclass(frozen=True)
class ClassPoint:
    """A class's operating point, keyed by name in reports and carrying the dataset category id."""

    id: int
    point: OperatingPoint | None  # None: no detections or no ground truth


@dataclass(frozen=True)
class OperatingPointReport:
    """The search overall (all classes pooled) and per class, with the target that drove it."""

    kind: Literal["precision", "recall", "max_f1"]
    value: float | None
    overall: OperatingPoint | None
    per_class: dict[str, ClassPoint]
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint, iteration, split

    def to_dict(self) -> dict[str, Any]:
        """The operating_point.json layout; undefined points are written with null numbers."""
        return {
            "target": {"kind": self.kind, "value": self.value},
            "iou": IOU,
            "overall": _point_dict(self.overall),
            "per_class": {name: {"id": c.id, **_point_dict(c.point)} for name, c in self.per_class.items()},
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> OperatingPointReport:
        return cls(
            kind=raw["target"]["kind"],
            value=raw["target"]["value"],
            overall=_point_from(raw["overall"]),
            per_class={name: ClassPoint(int(e["id"]), _point_from(e)) for name, e in raw["per_class"].items()},
            source=dict(raw.get("source") or {}),
        )

    def describe_target(self) -> str:
        if self.kind == "max_f1":
            return "max F1"
        return f"{self.kind} >= {self.value:g}"


def _point_dict(point: OperatingPoint | None) -> dict[str, Any]:
    if point is None:
        return {"threshold": None, "precision": None, "recall": None, "f1": None, "reached": False}
    return asdict(point)


def _point_from(raw: Mapping[str, Any]) -> OperatingPoint | None:
    if raw.get("threshold") is None:
        return None
    return OperatingPoint(float(raw["threshold"]), float(raw["precision"]), float(raw["recall"]),
                          float(raw["f1"]), bool(raw["reached"]))


def find_threshold(
    scores: Sequence[float] | np.ndarray,
    is_tp: Sequence[bool] | np.ndarray,
    num_gt: int,
    target_precision: float | None = None,
    target_recall: float | None = None,
) -> OperatingPoint | None:
    """The operating point for one target (see the module doc); None without detections or ground truth."""
    if target_precision is not None and target_recall is not None:
        raise ValueError("give target_precision or target_recall, not both")
    for target in (target_precision, target_recall):
        if target is not None and not 0.0 < target <= 1.0:
            raise ValueError(f"targets must be in (0, 1], got {target}")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    is_tp = np.asarray(is_tp, dtype=bool).reshape(-1)
    if scores.shape != is_tp.shape:
        raise ValueError(f"{scores.size} scores but {is_tp.size} TP flags")
    if scores.size == 0 or num_gt <= 0:
        return None

    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    tp_cum = np.cumsum(is_tp[order])
    # One candidate per distinct score: the cumulative counts at the end of each tie group.
    group_end = np.append(np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), scores.size - 1)
    thresholds = sorted_scores[group_end]  # descending
    tp = tp_cum[group_end]
    kept = group_end + 1
    precision = tp / kept
    recall = tp / num_gt
    f1 = 2 * tp / (kept + num_gt)

    reached = True
    if target_precision is not None:
        ok = precision >= target_precision
        if not ok.any():
            reached = False
            ok = precision == precision.max()
        # First index = highest threshold among the best-recall candidates that qualify.
        index = int(np.flatnonzero(ok & (recall == recall[ok].max()))[0])
    elif target_recall is not None:
        ok = recall >= target_recall
        if not ok.any():
            reached = False
            ok = recall == recall.max()
        index = int(np.flatnonzero(ok)[0])
    else:
        index = int(np.argmax(f1))
    return OperatingPoint(
        threshold=float(thresholds[index]),
        precision=float(precision[index]),
        recall=float(recall[index]),
        f1=float(f1[index]),
        reached=reached,
    )


def search(
    matches: Mapping[int, ClassMatches],
    names: Mapping[int, str],
    target_precision: float | None = None,
    target_recall: float | None = None,
    source: Mapping[str, Any] | None = None,
) -> OperatingPointReport:
    """Search overall (every class pooled into one list) and for each class alone.

    `names` maps category id -> report name (the keys of metrics' per_class).
    """
    kwargs = {"target_precision": target_precision, "target_recall": target_recall}
    pooled_scores = np.concatenate([m.scores for m in matches.values()] or [np.zeros(0)])
    pooled_tp = np.concatenate([m.is_tp for m in matches.values()] or [np.zeros(0, bool)])
    overall = find_threshold(pooled_scores, pooled_tp, sum(m.num_gt for m in matches.values()), **kwargs)
    per_class = {
        names[category_id]: ClassPoint(category_id, find_threshold(m.scores, m.is_tp, m.num_gt, **kwargs))
        for category_id, m in matches.items()
    }
    if target_precision is not None:
        kind, value = "precision", float(target_precision)
    elif target_recall is not None:
        kind, value = "recall", float(target_recall)
    else:
        kind, value = "max_f1", None
    return OperatingPointReport(kind, value, overall, per_class, dict(source or {}))


def _cell(value: float | None, fmt: str) -> str:
    """`value` in `fmt` (width.precision f), or '-' right-aligned to the same width."""
    return format("-", f">{fmt.split('.')[0]}") if value is None else format(value, fmt)


def format_operating_point_table(report: OperatingPointReport) -> str:
    """Plain-text table: class, id, threshold, precision, recall, F1, and '!' where the target is missed."""
    rows = [("overall", "", report.overall)] + [(n, str(c.id), c.point) for n, c in report.per_class.items()]
    width = max(len("class"), *(len(name) for name, _, _ in rows))
    lines = [f"operating point at IoU {IOU} ({report.describe_target()})",
             f"{'class':<{width}}  {'id':>4}  threshold  precision  recall     F1"]
    for name, cid, p in rows:
        missed = "" if p is None or p.reached else "  (target not reached)"
        undefined = "  (undefined: no detections or no ground truth)" if p is None else ""
        lines.append(
            f"{name:<{width}}  {cid:>4}  {_cell(p and p.threshold, '9.5f')}  {_cell(p and p.precision, '9.3f')}  "
            f"{_cell(p and p.recall, '6.3f')}  {_cell(p and p.f1, '5.3f')}{missed}{undefined}"
        )
    return "\n".join(lines)


def save_report(report: OperatingPointReport, *directories: Path) -> list[Path]:
    """Write operating_point.json into each directory (duplicates written once)."""
    written: list[Path] = []
    text = json.dumps(report.to_dict(), indent=2)
    for directory in dict.fromkeys(Path(d).resolve() for d in directories):
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / FILE_NAME, text)
        written.append(directory / FILE_NAME)
    return written


def load_report(run_dir: Path) -> OperatingPointReport | None:
    """The operating point stored in a run folder, or None when there is none."""
    path = Path(run_dir) / FILE_NAME
    if not path.is_file():
        return None
    try:
        return OperatingPointReport.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RunFileError(
            f"{path}: not a valid operating point file ({exc}); delete it or rerun evaluate.py --target-precision P"
        ) from None


def thresholds_for(report: OperatingPointReport, category_ids: Sequence[int]) -> tuple[list[float | None], str]:
    """One threshold per contiguous label: the class's own, else the overall one; and which was used.

    A class whose point is undefined (no detections or ground truth at evaluation) takes the
    overall threshold; with no overall point either, the entry is None.
    """
    by_id = {c.id: c.point for c in report.per_class.values()}
    overall = report.overall.threshold if report.overall is not None else None
    if any(by_id.get(i) is not None for i in category_ids):
        values = [by_id[i].threshold if by_id.get(i) is not None else overall for i in category_ids]
        return values, "per class"
    return [overall] * len(category_ids), "overall"


def keep_mask(scores: Tensor, labels: Tensor, thresholds: Sequence[float]) -> Tensor:
    """Detections whose score, rounded as in COCO results, is >= their class's threshold."""
    rounded = torch.tensor([round(s, SCORE_DECIMALS) for s in scores.tolist()], dtype=torch.float64)
    limits = torch.tensor(list(thresholds), dtype=torch.float64)[labels.cpu().long()]
    return (rounded >= limits).to(scores.device)

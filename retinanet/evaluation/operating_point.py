"""Operating point: the score threshold that meets a precision or recall target on a labelled set.

The input is what COCO counts at IoU 0.5 (`CocoEvaluator.matches`): every detection's score and
whether it is a true positive, plus the number of non-crowd ground-truth boxes. A threshold t
keeps every detection with score >= t, so tied scores are kept or dropped together and the
candidates are the distinct scores. Rules, chosen so the result is the most useful point:

- precision target P: the highest recall whose precision is >= P; among thresholds with that
  recall, the highest one (a lower one only adds false positives);
- recall target R: the highest threshold whose recall is >= R (the fewest detections);
- no target: the threshold with the highest F1 (the highest threshold on a tie);
- cost C (and cost_fp, default 1): the threshold with the lowest C x missed + cost_fp x false
  positives (missed = ground truth - true positives), the highest threshold on a tie. Keeping
  nothing is a candidate too (cost C x ground truth): its threshold lies just above the highest
  score, and its precision is taken as 1 (sklearn's convention at zero recall).

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
    cost: float | None = None  # cost targets only: C x missed + cost_fp x false positives there


@dataclass(frozen=True)
class ClassPoint:
    """A class's operating point, keyed by name in reports and carrying the dataset category id."""

    id: int
    point: OperatingPoint | None  # None: no detections or no ground truth


@dataclass(frozen=True)
class OperatingPointReport:
    """The search overall (all classes pooled) and per class, with the target that drove it."""

    kind: Literal["precision", "recall", "max_f1", "cost"]
    value: float | None  # the target; for a cost target, C (the cost of a missed box)
    overall: OperatingPoint | None
    per_class: dict[str, ClassPoint]
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint, iteration, split
    cost_fp: float | None = None  # cost targets only: the cost of a false positive

    def to_dict(self) -> dict[str, Any]:
        """The operating_point.json layout; undefined points are written with null numbers."""
        target: dict[str, Any] = {"kind": self.kind, "value": self.value}
        if self.kind == "cost":
            target["cost_fp"] = self.cost_fp
        return {
            "target": target,
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
            cost_fp=raw["target"].get("cost_fp"),
        )

    def describe_target(self) -> str:
        if self.kind == "max_f1":
            return "max F1"
        if self.kind == "cost":
            return f"least cost {self.value:g} x missed + {self.cost_fp:g} x false positives"
        return f"{self.kind} >= {self.value:g}"


def _point_dict(point: OperatingPoint | None) -> dict[str, Any]:
    if point is None:
        return {"threshold": None, "precision": None, "recall": None, "f1": None, "reached": False}
    out = asdict(point)
    if point.cost is None:
        del out["cost"]
    return out


def _point_from(raw: Mapping[str, Any]) -> OperatingPoint | None:
    if raw.get("threshold") is None:
        return None
    cost = raw.get("cost")
    return OperatingPoint(float(raw["threshold"]), float(raw["precision"]), float(raw["recall"]),
                          float(raw["f1"]), bool(raw["reached"]), None if cost is None else float(cost))


def find_threshold(
    scores: Sequence[float] | np.ndarray,
    is_tp: Sequence[bool] | np.ndarray,
    num_gt: int,
    target_precision: float | None = None,
    target_recall: float | None = None,
    cost_fn: float | None = None,
    cost_fp: float = 1.0,
) -> OperatingPoint | None:
    """The operating point for one target (see the module doc); None without detections or ground truth."""
    if sum(t is not None for t in (target_precision, target_recall, cost_fn)) > 1:
        raise ValueError("give one of target_precision, target_recall and cost_fn, not both")
    for target in (target_precision, target_recall):
        if target is not None and not 0.0 < target <= 1.0:
            raise ValueError(f"targets must be in (0, 1], got {target}")
    if cost_fn is not None and not (cost_fn > 0 and cost_fp > 0):
        raise ValueError(f"costs must be > 0, got cost_fn={cost_fn}, cost_fp={cost_fp}")
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
    if cost_fn is not None:
        return _least_cost(thresholds, tp, kept, num_gt, cost_fn, cost_fp)

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


def _least_cost(
    thresholds: np.ndarray, tp: np.ndarray, kept: np.ndarray, num_gt: int, cost_fn: float, cost_fp: float
) -> OperatingPoint:
    """The cheapest candidate (the highest threshold on a tie), keeping nothing included (see the module doc)."""
    nothing = round(float(thresholds[0]) + 10.0**-SCORE_DECIMALS, SCORE_DECIMALS)  # just above the highest score
    thresholds = np.concatenate([[nothing], thresholds])
    tp = np.concatenate([[0], tp])
    kept = np.concatenate([[0], kept])
    cost = cost_fn * (num_gt - tp) + cost_fp * (kept - tp)
    index = int(np.argmin(cost))  # the first minimum: thresholds are descending
    precision = tp[index] / kept[index] if kept[index] else 1.0
    return OperatingPoint(
        threshold=float(thresholds[index]),
        precision=float(precision),
        recall=float(tp[index] / num_gt),
        f1=float(2 * tp[index] / (kept[index] + num_gt)),
        reached=True,
        cost=float(cost[index]),
    )


def search(
    matches: Mapping[int, ClassMatches],
    names: Mapping[int, str],
    target_precision: float | None = None,
    target_recall: float | None = None,
    source: Mapping[str, Any] | None = None,
    cost_fn: float | None = None,
    cost_fp: float = 1.0,
) -> OperatingPointReport:
    """Search overall (every class pooled into one list) and for each class alone.

    `names` maps category id -> report name (the keys of metrics' per_class).
    """
    kwargs = {"target_precision": target_precision, "target_recall": target_recall, "cost_fn": cost_fn,
              "cost_fp": cost_fp}
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
    elif cost_fn is not None:
        kind, value = "cost", float(cost_fn)
        return OperatingPointReport(kind, value, overall, per_class, dict(source or {}), float(cost_fp))
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
    with_cost = report.kind == "cost"
    lines = [f"operating point at IoU {IOU} ({report.describe_target()})",
             f"{'class':<{width}}  {'id':>4}  threshold  precision  recall     F1" + ("       cost" if with_cost else "")]
    for name, cid, p in rows:
        missed = "" if p is None or p.reached else "  (target not reached)"
        undefined = "  (undefined: no detections or no ground truth)" if p is None else ""
        cost = f"  {_cell(p and p.cost, '9.1f')}" if with_cost else ""
        lines.append(
            f"{name:<{width}}  {cid:>4}  {_cell(p and p.threshold, '9.5f')}  {_cell(p and p.precision, '9.3f')}  "
            f"{_cell(p and p.recall, '6.3f')}  {_cell(p and p.f1, '5.3f')}{cost}{missed}{undefined}"
        )
    return "\n".join(lines)


def class_scalars(
    matches: Mapping[int, ClassMatches],
    metrics: Mapping[str, Any],
    train_box_counts: Mapping[int, int] | None = None,
) -> dict[str, float]:
    """Per-class recall and precision at each class's max-F1 threshold, and the rarest class's AP50.

    matches: `CocoEvaluator.matches(iou=IOU)` after `compute()`; metrics: what that `compute()`
    returned (its per_class AP50 and names). Keys are "recall/<name>" and "precision/<name>" for
    every class with val boxes, both or neither, so their TensorBoard curves have the same points: a
    class without detections has recall 0 and precision 0 (0/0 taken as 0, as scikit-learn's
    zero_division=0 does); a class without val boxes has neither (no threshold to find). "rare_AP50"
    is the AP50 of the rarest class among those with val boxes (AP50 is undefined without): the fewest
    `train_box_counts` (category id -> non-crowd training boxes, at least one), else the fewest val
    boxes; absent only when no class has both.
    """
    out: dict[str, float] = {}
    names = {int(entry["id"]): name for name, entry in metrics["per_class"].items()}
    for category_id, m in matches.items():
        if m.num_gt == 0:
            continue
        point = find_threshold(m.scores, m.is_tp, m.num_gt)
        out[f"recall/{names[category_id]}"] = 0.0 if point is None else point.recall
        out[f"precision/{names[category_id]}"] = 0.0 if point is None else point.precision
    counts = dict(train_box_counts) if train_box_counts else {i: m.num_gt for i, m in matches.items()}
    present = sorted((n, i) for i, n in counts.items() if n > 0 and i in names and i in matches and matches[i].num_gt)
    if present:
        ap50 = metrics["per_class"][names[present[0][1]]].get("AP50")
        if ap50 is not None:
            out["rare_AP50"] = float(ap50)
    return out


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

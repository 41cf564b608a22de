"""COCO box evaluation through pycocotools' public API.

Inside the code detections carry contiguous labels 0..K-1 and `boxes_xyxy`; COCO result
records carry the dataset's own category ids and `bbox` as [x, y, w, h]. The conversion
happens once, in `detections_to_coco`.

Undefined values: pycocotools writes -1 where a quantity has no ground truth (a category
with no annotations, an area range with no boxes). `compute` reports those as `nan` for
the 12 summary numbers (they stay floats) and as `None` for per-class AP (JSON-safe, and
the logger skips them).

Backends: pycocotools (the reference) or faster-coco-eval (`backend="faster_coco_eval"`, its
pycocotools-compatible COCO / COCOeval_faster with C++ evaluate and accumulate: the same 12 numbers,
several times faster on large sets).
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from retinanet.config import ConfigError
from retinanet.structures import Detections

log = logging.getLogger("retinanet.evaluator")

STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)


def detections_to_coco(
    image_id: int,
    det: Detections,
    label_to_category_id: Callable[[Tensor], Tensor] | Sequence[int],
    max_dets: int | None = None,
) -> list[dict[str, Any]]:
    """Detections of one image -> COCO result records with dataset category ids.

    `max_dets` keeps only the highest-scoring detections: pycocotools caps at 100 per
    image *and category*, so published numbers cap at 100 per image before evaluating.
    """
    scores = det.scores.detach().float().cpu()
    boxes_xyxy = det.boxes_xyxy.detach().float().cpu().reshape(-1, 4)
    labels = det.labels.detach().cpu().long()
    if max_dets is not None and scores.numel() > max_dets:
        keep = scores.topk(max_dets).indices
        scores, boxes_xyxy, labels = scores[keep], boxes_xyxy[keep], labels[keep]
    if callable(label_to_category_id):
        category_ids = torch.as_tensor(label_to_category_id(labels)).long()
    else:
        category_ids = torch.as_tensor(list(label_to_category_id), dtype=torch.long)[labels]
    bbox_xywh = torch.cat([boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]], dim=1)
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_id),
            "bbox": [round(v, 2) for v in box],
            "score": round(score, 5),
        }
        for box, score, category_id in zip(bbox_xywh.tolist(), scores.tolist(), category_ids.tolist())
    ]


@dataclass(frozen=True)
class ClassMatches:
    """One category's detections as COCO counts them at one IoU: score and TP flag each, plus gt count."""

    scores: np.ndarray  # (D,) float64
    is_tp: np.ndarray  # (D,) bool
    num_gt: int  # ground-truth boxes that are not crowd / ignored


def _prepare_ground_truth(coco_gt: COCO) -> COCO:
    """Return a COCO whose annotations pycocotools evaluates correctly.

    - pycocotools stores the matched annotation id per detection and reads 0 as
      "unmatched", so a ground-truth id 0 turns its true positive into a false positive:
      renumber all annotation ids 1..n.
    - Crowd boxes are ignore regions only if `iscrowd` and `area` are present; area
      ranges also need `area`. Missing ones are filled (`area` = bbox w*h).
    The caller's dataset is never modified; a copy is made only when something is fixed.
    """
    anns = coco_gt.dataset.get("annotations", [])
    has_zero_id = any(a.get("id") == 0 for a in anns)
    needs_fields = any("area" not in a or "iscrowd" not in a for a in anns)
    if not (has_zero_id or needs_fields):
        return coco_gt
    fixed = []
    for index, ann in enumerate(anns):
        ann = dict(ann)
        if has_zero_id:
            ann["id"] = index + 1
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        ann.setdefault("iscrowd", 0)
        fixed.append(ann)
    if has_zero_id:
        log.info("ground truth has annotation id 0; evaluating a copy with ids renumbered 1..%d", len(fixed))
    dataset = dict(coco_gt.dataset)
    dataset["annotations"] = fixed
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _import_faster_coco_eval() -> Any:
    """The optional package, or a one-line ConfigError (the CLIs print it and exit 2)."""
    try:
        import faster_coco_eval
    except ImportError:
        raise ConfigError(
            "eval.backend=faster_coco_eval: the faster-coco-eval package is not installed; "
            "pip install faster-coco-eval, or set eval.backend=pycocotools"
        ) from None
    return faster_coco_eval


def category_names(coco_gt: COCO) -> dict[int, str]:
    """Category id -> the name reports use (metrics' per_class keys): "name", or "name (id)" when names repeat."""
    cats = coco_gt.loadCats(sorted(coco_gt.getCatIds()))
    names = [c["name"] for c in cats]
    return {int(c["id"]): c["name"] if names.count(c["name"]) == 1 else f"{c['name']} ({c['id']})" for c in cats}


def _undefined_to_nan(value: float) -> float:
    return float("nan") if value < 0 else float(value)


class CocoEvaluator:
    """Accumulates COCO result records, then runs COCOeval once per `compute`.

    By default every ground-truth image is evaluated (images without detections count as
    misses), which is what published numbers do. Passing `image_ids` to `update`
    restricts evaluation to the images seen, for runs on a subset of the dataset.
    `keep_matches` keeps the per-image matches of each compute for `matches()`; without it (training,
    which evaluates often and needs matches once) `matches()` recomputes them with pycocotools.
    """

    def __init__(
        self, coco_gt: COCO, iou_type: str = "bbox", backend: str = "pycocotools", keep_matches: bool = False
    ) -> None:
        if iou_type != "bbox":
            raise ValueError(f"only iou_type='bbox' is supported, got {iou_type!r}")
        if backend not in ("pycocotools", "faster_coco_eval"):
            raise ValueError(f"backend must be pycocotools or faster_coco_eval, got {backend!r}")
        self.iou_type = iou_type
        self.backend = backend
        self.keep_matches = keep_matches
        self.coco_gt = _prepare_ground_truth(coco_gt)
        self._fast = _import_faster_coco_eval() if backend == "faster_coco_eval" else None
        # The ground truth in the backend's own COCO class (faster-coco-eval indexes it its own way).
        self._backend_gt = self._fast.COCO(self.coco_gt.dataset) if self._fast is not None else self.coco_gt
        self._known_image_ids = set(self.coco_gt.getImgIds())
        self._known_category_ids = set(self.coco_gt.getCatIds())
        self.summary_text = ""
        self.last_precision: np.ndarray | None = None  # (T, R, K, A, M), -1 where undefined
        self.last_recall: np.ndarray | None = None  # (T, K, A, M), -1 where undefined
        self._params: Any = None
        self._eval_imgs: list[dict[str, Any] | None] | None = None  # COCOeval.evalImgs of the last compute, for matches()
        self._computed_records: list[dict[str, Any]] = []
        self.reset()

    def reset(self) -> None:
        """Forget all results (the last computed metrics stay readable)."""
        self._results: list[dict[str, Any]] = []
        self._seen_image_ids: set[int] = set()
        self._restrict_to_seen = False
        self._warned_unknown_categories = False

    def update(self, results: list[dict[str, Any]], image_ids: Iterable[int] | None = None) -> None:
        """Add COCO result records; `image_ids` marks images as evaluated even with no records."""
        unknown_images = {r["image_id"] for r in results} - self._known_image_ids
        if unknown_images:
            raise ValueError(f"results refer to image ids not in the ground truth: {sorted(unknown_images)[:10]}")
        unknown_categories = {r["category_id"] for r in results} - self._known_category_ids
        if unknown_categories and not self._warned_unknown_categories:
            log.warning(
                "results use category ids not in the ground truth %s; were labels mapped back to dataset ids?",
                sorted(unknown_categories)[:10],
            )
            self._warned_unknown_categories = True
        self._results.extend(results)
        if image_ids is not None:
            self._restrict_to_seen = True
            self._seen_image_ids.update(int(i) for i in image_ids)

    def _evaluated_image_ids(self) -> list[int]:
        return sorted(self._seen_image_ids | {int(r["image_id"]) for r in self._results})

    @staticmethod
    def _load_results(coco_gt: Any, records: list[dict[str, Any]]) -> Any:
        """Records as a COCO object of coco_gt's class; with no records, an empty one (loadRes fails on [])."""
        if records:
            # loadRes writes id/area/segmentation into the records it gets: hand it copies.
            return coco_gt.loadRes([dict(r) for r in records])
        coco_dt = type(coco_gt)()
        coco_dt.dataset = {
            "images": list(coco_gt.dataset.get("images", [])),
            "categories": list(coco_gt.dataset.get("categories", [])),
            "annotations": [],
        }
        coco_dt.createIndex()
        return coco_dt

    def compute(self) -> dict[str, Any]:
        """Run evaluate/accumulate/summarize once; return the 12 stats and per-class AP."""
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            self._computed_records = list(self._results)
            coco_dt = self._load_results(self._backend_gt, self._computed_records)
            if self._fast is None:
                coco_eval = COCOeval(self.coco_gt, coco_dt, self.iou_type)
            else:
                coco_eval = self._fast.COCOeval_faster(self._backend_gt, coco_dt, self.iou_type, print_function=print)
            if self._restrict_to_seen:
                coco_eval.params.imgIds = self._evaluated_image_ids()
            coco_eval.evaluate()
            coco_eval.accumulate()
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            coco_eval.summarize()
        self.summary_text = summary.getvalue()
        self._params = coco_eval.params
        # faster-coco-eval keeps its per-image matches in C++: matches() recomputes them on demand.
        self._eval_imgs = coco_eval.evalImgs if self._fast is None and self.keep_matches else None
        self.last_precision = np.asarray(coco_eval.eval["precision"])
        self.last_recall = np.asarray(coco_eval.eval["recall"])

        metrics: dict[str, Any] = {
            name: _undefined_to_nan(value) for name, value in zip(STAT_NAMES, coco_eval.stats)
        }
        metrics["per_class"] = self._per_class(self.last_precision)
        return metrics

    def _per_class(self, precision: np.ndarray) -> dict[str, dict[str, Any]]:
        """AP@[.5:.95] and AP50 per category (area all, 100 dets); None without ground truth."""
        per_class: dict[str, dict[str, Any]] = {}
        area_index = self._params.areaRngLbl.index("all")
        det_index = len(self._params.maxDets) - 1
        cats = self.coco_gt.loadCats(self._params.catIds)
        names = category_names(self.coco_gt)
        for k, cat in enumerate(cats):
            p = precision[:, :, k, area_index, det_index]  # (T, R)
            valid = p[p > -1]
            p50 = p[0][p[0] > -1]
            name = names[int(cat["id"])]
            per_class[name] = {
                "id": int(cat["id"]),
                "AP": float(valid.mean()) if valid.size else None,
                "AP50": float(p50.mean()) if p50.size else None,
            }
        return per_class

    def evaluated(self) -> tuple[list[dict[str, Any]], list[int]]:
        """The last `compute`'s result records and the image ids it evaluated (for the score distribution)."""
        if self._params is None:
            raise RuntimeError("call compute() before evaluated()")
        return list(self._computed_records), [int(i) for i in self._params.imgIds]

    @property
    def records(self) -> list[dict[str, Any]]:
        """The COCO result records of the last `compute` (for the report's per-image analyses)."""
        return list(self._computed_records)

    def class_stats(self) -> dict[int, dict[str, float | None]]:
        """Per category id: AP, AP50, AP75 and AR100 (area all) of the last `compute`; None without ground truth."""
        if self.last_precision is None or self.last_recall is None or self._params is None:
            raise RuntimeError("call compute() before class_stats()")
        p = self._params
        a, m = p.areaRngLbl.index("all"), len(p.maxDets) - 1
        t50, t75 = (int(np.flatnonzero(np.isclose(p.iouThrs, v))[0]) for v in (0.5, 0.75))

        def mean(values: np.ndarray) -> float | None:
            valid = values[values > -1]
            return float(valid.mean()) if valid.size else None

        return {
            int(category_id): {
                "AP": mean(self.last_precision[:, :, k, a, m]),
                "AP50": mean(self.last_precision[t50, :, k, a, m]),
                "AP75": mean(self.last_precision[t75, :, k, a, m]),
                "AR100": mean(self.last_recall[:, k, a, m]),
            }
            for k, category_id in enumerate(p.catIds)
        }

    def matches(self, iou: float = 0.5, area: str = "all", max_dets: int = 100) -> dict[int, ClassMatches]:
        """Per category id: every counted detection's score and TP flag, and the non-ignored gt count.

        Read from the last `compute`'s COCOeval.evalImgs, so these are exactly the detections
        COCO's precision at `iou` counts: the top `max_dets` per image and category, without
        those matched to crowd (or out-of-area) ground truth.
        """
        if self._params is None:
            raise RuntimeError("call compute() before matches()")
        if self._eval_imgs is None:
            self._eval_imgs = self._pycocotools_eval_imgs()
        p = self._params
        t = np.flatnonzero(np.isclose(p.iouThrs, iou))
        if t.size == 0:
            raise ValueError(f"iou {iou} is not one of {p.iouThrs.tolist()}")
        a, num_areas, num_images = p.areaRngLbl.index(area), len(p.areaRng), len(p.imgIds)
        out: dict[int, ClassMatches] = {}
        for k, category_id in enumerate(p.catIds):
            start = (k * num_areas + a) * num_images  # evalImgs is laid out [category][area][image]
            entries = [e for e in self._eval_imgs[start:start + num_images] if e is not None]
            scores, is_tp, num_gt = [np.zeros(0)], [np.zeros(0, bool)], 0
            for e in entries:
                counted = ~np.asarray(e["dtIgnore"][t[0], :max_dets], dtype=bool)
                scores.append(np.asarray(e["dtScores"][:max_dets], dtype=np.float64)[counted])
                is_tp.append(np.asarray(e["dtMatches"][t[0], :max_dets])[counted] > 0)
                num_gt += int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            out[int(category_id)] = ClassMatches(np.concatenate(scores), np.concatenate(is_tp), num_gt)
        return out

    def _pycocotools_eval_imgs(self) -> list[dict[str, Any] | None]:
        """pycocotools' per-image matches for the last compute's records and images (same layout)."""
        with contextlib.redirect_stdout(io.StringIO()):
            coco_eval = COCOeval(self.coco_gt, self._load_results(self.coco_gt, self._computed_records), self.iou_type)
            coco_eval.params.imgIds = [int(i) for i in self._params.imgIds]
            coco_eval.evaluate()
        return coco_eval.evalImgs

    def pr_curve(
        self, iou: float = 0.5, category_id: int | None = None, area: str = "all", max_dets: int = 100
    ) -> tuple[np.ndarray, np.ndarray]:
        """Interpolated precision at COCO's 101 recall points from the last `compute`.

        With `category_id=None` the curve is the mean over categories that have ground
        truth. Precision is nan where it is undefined (no ground truth).
        """
        if self.last_precision is None or self._params is None:
            raise RuntimeError("call compute() before pr_curve()")
        p = self._params
        t = np.flatnonzero(np.isclose(p.iouThrs, iou))
        if t.size == 0:
            raise ValueError(f"iou {iou} is not one of {p.iouThrs.tolist()}")
        a = p.areaRngLbl.index(area)
        m = list(p.maxDets).index(max_dets)
        precision = self.last_precision[t[0], :, :, a, m]  # (R, K)
        if category_id is not None:
            curve = precision[:, list(p.catIds).index(category_id)]
        else:
            has_gt = (precision > -1).any(axis=0)  # (K,)
            curve = precision[:, has_gt].mean(axis=1) if has_gt.any() else np.full(precision.shape[0], -1.0)
        curve = np.where(curve > -1, curve, np.nan)
        return np.asarray(p.recThrs, dtype=np.float64).copy(), curve.astype(np.float64)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "    -"
    return f"{100 * value:5.1f}"


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """Plain-text table of the 12 COCO numbers (in %) and per-class AP, '-' when undefined."""
    lines = ["COCO bbox (%)", "  ".join(f"{name:>5}" for name in STAT_NAMES)]
    lines.append("  ".join(_fmt(metrics.get(name)) for name in STAT_NAMES))
    per_class = metrics.get("per_class") or {}
    if per_class:
        width = max(len("category"), *(len(name) for name in per_class))
        lines += ["", f"{'category':<{width}}  {'id':>4}     AP   AP50"]
        for name, entry in per_class.items():
            lines.append(f"{name:<{width}}  {entry['id']:>4}  {_fmt(entry.get('AP'))}  {_fmt(entry.get('AP50'))}")
    return "\n".join(lines)

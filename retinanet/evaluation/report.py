"""The evaluation report: report.html and the files it shows, written beside metrics.json.

report.html is one self-contained page (every figure embedded, the worst images as smaller JPEG
thumbnails of the drawings beside it; the PNG, JPEG and JSON files beside it hold the same figures
and numbers), every AP, precision and recall in percent: the COCO table, the per-class table (AP, AP50, AP75, AR100,
ground-truth count, and precision / recall at the operating point), the precision-recall and
F1 curves (`curves`), the confusion matrix (`confusion`), what each TIDE error type costs
(`error_types`) and the worst images drawn (`worst_images`).

Everything starts from what the evaluator kept of its last `compute`: the COCO ground truth, the
result records (dataset category ids) and COCO's matches at IoU 0.5.
"""
from __future__ import annotations

import base64
import html
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retinanet.fileio import write_text_atomic
from retinanet.evaluation import confusion, curves, error_types, worst_images
from retinanet.evaluation.evaluator import STAT_NAMES, ClassMatches, CocoEvaluator, category_names
from retinanet.evaluation.operating_point import IOU, OperatingPointReport, search, thresholds_for
from retinanet.evaluation.per_image import above_thresholds, group_by_image

log = logging.getLogger("retinanet")

FILE_NAME = "report.html"
NUM_WORST = 12


@dataclass(frozen=True)
class Thresholds:
    """The score threshold of every category id at the operating point, and where it came from."""

    per_class: dict[int, float]  # math.inf: keep nothing (no point was found for the class)
    source: str


def thresholds_from(report: OperatingPointReport, category_ids: Sequence[int], source: str) -> Thresholds:
    """Each class's threshold in an operating point (its own, else the overall one)."""
    values, kind = thresholds_for(report, category_ids)
    per_class = {int(c): math.inf if v is None else float(v) for c, v in zip(category_ids, values)}
    return Thresholds(per_class, f"{source} ({report.describe_target()}, {kind})")


def fixed_thresholds(value: float, category_ids: Sequence[int]) -> Thresholds:
    return Thresholds({int(c): float(value) for c in category_ids}, f"--score-thresh {value:g} (every class)")


def max_f1_thresholds(matches: Mapping[int, ClassMatches], names: Mapping[int, str]) -> Thresholds:
    """Without an operating point: each class's max-F1 threshold on this evaluation."""
    return thresholds_from(search(matches, names), list(matches), "max F1 on this set, no operating_point.json")


def training_figures(evaluator: CocoEvaluator, thresholds: Thresholds | None = None) -> dict[str, np.ndarray]:
    """TensorBoard images after an evaluation: {"eval/confusion_matrix", "eval/f1_curve"} as (H, W, 3) uint8.

    Call after `evaluator.compute()`. Without `thresholds` the confusion matrix uses each class's
    max-F1 threshold on this evaluation.
    """
    names = category_names(evaluator.coco_gt)
    matches = evaluator.matches(iou=IOU)
    thresholds = thresholds or max_f1_thresholds(matches, names)
    images = group_by_image(evaluator.coco_gt, evaluator.records)
    matrix = confusion.confusion_matrix(images, list(names), list(names.values()), thresholds.per_class, IOU)
    return {"eval/confusion_matrix": confusion.confusion_figure(matrix), "eval/f1_curve": curves.f1_figure(matches, names)}


def _at_threshold(m: ClassMatches, threshold: float) -> tuple[float | None, float | None]:
    """(precision, recall) of the class's detections with score >= threshold."""
    kept = m.scores >= threshold
    tp = int(m.is_tp[kept].sum())
    precision = tp / int(kept.sum()) if kept.any() else None
    recall = tp / m.num_gt if m.num_gt else None
    return precision, recall


def write_report(
    out_dir: Path,
    evaluator: CocoEvaluator,
    metrics: Mapping[str, Any],
    thresholds: Thresholds,
    images_dir: Path | None = None,
    num_worst: int = NUM_WORST,
    title: str = "evaluation report",
) -> list[Path]:
    """Write report.html and its figures and numbers into `out_dir`; returns the files written.

    `metrics` is `evaluator.compute()`'s result; `images_dir` holds the ground truth's file_names
    (without it the worst images are listed but not drawn).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    coco_gt = evaluator.coco_gt
    names = category_names(coco_gt)
    category_ids = list(names)
    matches = evaluator.matches(iou=IOU)
    images = group_by_image(coco_gt, evaluator.records)
    written: list[Path] = []

    curve_data = curves.curves_data(matches, names)
    written += curves.save_curves(curve_data, out_dir)
    matrix = confusion.confusion_matrix(images, category_ids, list(names.values()), thresholds.per_class, IOU)
    written += confusion.save_confusion(matrix, out_dir)
    errors_all = [error_types.classify_image(image) for image in images]
    costs = error_types.error_costs(images, errors_all)
    written += error_types.save_errors(costs, out_dir)

    kept_images = [above_thresholds(image, thresholds.per_class) for image in images]
    errors_kept = [error_types.classify_image(image) for image in kept_images]
    file_names = {int(i): str(coco_gt.imgs[i].get("file_name", "")) for i in coco_gt.imgs}
    summaries = worst_images.summarize_images(images, errors_all, errors_kept, file_names)
    ranked = worst_images.rank_worst(summaries)
    drawings = _draw_worst(ranked[:num_worst], kept_images, errors_kept, names, images_dir)
    written += worst_images.save_worst_images(summaries, drawings, out_dir)

    totals = {name: sum(s.counts[name] for s in summaries) for name in (error_types.TRUE_POSITIVE, *error_types.ERROR_TYPES)}
    page = _html(title, metrics, evaluator, matches, names, thresholds, curve_data, matrix, costs, totals,
                 ranked, drawings, out_dir, error_types.mean_ap(images, errors_all))
    write_text_atomic(out_dir / FILE_NAME, page)
    written.append(out_dir / FILE_NAME)
    return written


def _draw_worst(
    ranked: Sequence[worst_images.ImageSummary],
    kept_images: Sequence[Any],
    errors_kept: Sequence[error_types.ImageErrors],
    names: Mapping[int, str],
    images_dir: Path | None,
) -> dict[int, np.ndarray]:
    if images_dir is None:
        return {}
    index = {image.image_id: i for i, image in enumerate(kept_images)}
    drawings = {}
    for summary in ranked:
        path = Path(images_dir) / summary.file_name
        try:
            pixels, scale = worst_images.read_image(path, worst_images.MAX_DRAWN_SIDE)
        except OSError as exc:
            log.warning("report: cannot read %s (%s); image %d is listed but not drawn", path, exc, summary.image_id)
            continue
        i = index[summary.image_id]
        drawings[summary.image_id] = worst_images.draw_outcomes(pixels, kept_images[i], errors_kept[i], names, scale)
    return drawings


# ----------------------------------------------------------------------------- HTML

STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1200px;
       color: #222; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.name, th.name { text-align: left; }
tr.low td { background: #fff1f0; }
img.figure { max-width: 100%; border: 1px solid #eee; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.card { width: 280px; font-size: 12px; } .card img { width: 280px; border: 1px solid #ccc; }
.swatch { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; vertical-align: middle;
          border: 1px solid #888; }
.note { color: #555; font-size: 13px; }
"""


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _thumbnail(drawing: np.ndarray) -> str:
    """A worst image's embedded copy: a smaller JPEG than the file beside the page, which its card links to."""
    return _data_uri(worst_images.jpeg_bytes(drawing, worst_images.THUMBNAIL_SIDE), "image/jpeg")


def _figure(out_dir: Path, name: str, alt: str) -> str:
    uri = _data_uri((out_dir / name).read_bytes())
    return f'<a href="{name}"><img class="figure" alt="{html.escape(alt)}" src="{uri}"></a>'


def _html(
    title: str,
    metrics: Mapping[str, Any],
    evaluator: CocoEvaluator,
    matches: Mapping[int, ClassMatches],
    names: Mapping[int, str],
    thresholds: Thresholds,
    curve_data: Mapping[str, Any],
    matrix: confusion.ConfusionMatrix,
    costs: Mapping[str, float],
    totals: Mapping[str, int],
    ranked: Sequence[worst_images.ImageSummary],
    drawings: Mapping[int, np.ndarray],
    out_dir: Path,
    tide_ap50: float,
) -> str:
    esc = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    num_images, num_dets = len(evaluator.coco_gt.imgs), len(evaluator.records)
    parts.append(f"<p class='note'>{num_images} images, {num_dets} detections. Operating point: "
                 f"{esc(thresholds.source)}. Files beside this page: metrics.json, curves.json, "
                 f"confusion_matrix.json, errors.json, worst_images.json, the PNG figures and the drawings in "
                 f"{worst_images.FOLDER}/.</p>")

    parts.append("<h2>COCO box AP (%)</h2><table><tr>" + "".join(f"<th>{n}</th>" for n in STAT_NAMES) + "</tr><tr>")
    parts.append("".join(f"<td>{_pct(metrics.get(n))}</td>" for n in STAT_NAMES) + "</tr></table>")

    stats = evaluator.class_stats()
    ap50s = [stats[c]["AP50"] for c in names if stats[c]["AP50"] is not None]
    lowest = min(ap50s) if ap50s else None
    parts.append("<h2>Per class</h2><table><tr><th class='name'>class</th><th>id</th><th>gt boxes</th><th>AP</th>"
                 "<th>AP50</th><th>AP75</th><th>AR100</th><th>threshold</th><th>precision</th><th>recall</th></tr>")
    for category_id, name in names.items():
        s = stats[category_id]
        threshold = thresholds.per_class[category_id]
        precision, recall = _at_threshold(matches[category_id], threshold)
        low = " class='low'" if lowest is not None and s["AP50"] == lowest and len(ap50s) > 1 else ""
        parts.append(
            f"<tr{low}><td class='name'>{esc(name)}</td><td>{category_id}</td><td>{matches[category_id].num_gt}</td>"
            f"<td>{_pct(s['AP'])}</td><td>{_pct(s['AP50'])}</td><td>{_pct(s['AP75'])}</td><td>{_pct(s['AR100'])}</td>"
            f"<td>{'-' if math.isinf(threshold) else f'{threshold:.3f}'}</td><td>{_pct(precision)}</td>"
            f"<td>{_pct(recall)}</td></tr>")
    parts.append("</table><p class='note'>AP, AP75, AR100: IoU 0.50:0.95 / 0.75, up to 100 detections per image. "
                 "Precision and recall (%) at IoU 0.5 for the detections at or above the class's threshold. "
                 "The class with the lowest AP50 is shaded.</p>")

    best = curve_data["pooled"]["max_f1"]
    best_text = "" if best is None else (f"Pooled max F1 {_pct(best['f1'])} % at score {best['threshold']:.3f} "
                                          f"(precision {_pct(best['precision'])} %, recall {_pct(best['recall'])} %). ")
    pooled_area = curve_data["pooled"]["ap50"]
    best_text += ("The pooled curve ranks every class's detections in one list; its area "
                  f"({_pct(pooled_area)}) is not COCO's AP50 ({_pct(metrics.get('AP50'))}), the mean of the class curves.")
    parts.append(f"<h2>Curves at IoU 0.5</h2><p class='note'>{esc(best_text)}</p>")
    parts.append(_figure(out_dir, curves.PR_FIGURE, "precision-recall curves"))
    parts.append(_figure(out_dir, curves.F1_FIGURE, "precision, recall and F1 against the score threshold"))

    parts.append("<h2>Confusion matrix (IoU 0.5, operating point)</h2><p class='note'>Rows: ground truth; columns: "
                 "prediction. The background row holds detections that match no ground truth (false positives, "
                 "duplicates); the background column holds ground truth no detection found. Each box is counted once, "
                 "so a wrong-class detection on a box another detection found lands in the background row (TIDE below "
                 "calls it a classification error). Crowd boxes are left out, as in COCO.</p>")
    parts.append(_figure(out_dir, confusion.FIGURE_NAME, "confusion matrix"))

    parts.append(f"<h2>Error types (TIDE)</h2><p class='note'>AP50 with TIDE's matching: {100 * tide_ap50:.1f}. "
                 "dAP: AP50 points gained if only that type were fixed (all detections). Count: detections "
                 "(missed: ground-truth boxes) of that type at the operating point.</p>")
    parts.append("<table><tr><th class='name'>type</th><th>dAP</th><th>count at operating point</th></tr>")
    parts.append(f"<tr><td class='name'>{_swatch(error_types.TRUE_POSITIVE)}true positive</td><td>-</td>"
                 f"<td>{totals[error_types.TRUE_POSITIVE]}</td></tr>")
    for name in error_types.ERROR_TYPES:
        parts.append(f"<tr><td class='name'>{_swatch(name)}{name}</td><td>{costs[name]:.2f}</td><td>{totals[name]}</td></tr>")
    parts.append("</table>")
    parts.append(_figure(out_dir, error_types.FIGURE_NAME, "what each error type costs"))

    parts.append(f"<h2>Worst images</h2><p class='note'>Most errors at the operating point first, then the lowest "
                 f"image AP50. Ground truth in white (<span class='swatch' style='background:#fff'></span>found), "
                 f"missed ground truth in {_swatch(error_types.MISSED)}orange; detections coloured by outcome: "
                 + " ".join(_swatch(n) + n.replace("_", " ") for n in (error_types.TRUE_POSITIVE, *error_types.ERROR_TYPES[:-1]))
                 + f". Click an image for its drawing beside this page (long side up to "
                 f"{worst_images.MAX_DRAWN_SIDE} px).</p><div class='grid'>")
    for rank, summary in enumerate(ranked):
        if summary.image_id not in drawings:
            continue
        link = worst_images.drawing_name(rank, summary.image_id)
        counts = ", ".join(f"{n} {summary.counts[n]}" for n in error_types.ERROR_TYPES if summary.counts[n])
        parts.append(f"<div class='card'><a href='{link}'><img alt='image {summary.image_id}' "
                     f"src='{_thumbnail(drawings[summary.image_id])}'></a><br><b>#{rank + 1}</b> image {summary.image_id} "
                     f"({esc(summary.file_name)}): {summary.errors} errors ({esc(counts) or 'none'}), "
                     f"{summary.counts[error_types.TRUE_POSITIVE]} true positives, AP50 {_pct(summary.ap50)}</div>")
    parts.append("</div>")
    shown = ranked[:50]
    parts.append(f"<p class='note'>The {len(shown)} worst of {len(ranked)} images (all in worst_images.json):</p>")
    parts.append("<table><tr><th>rank</th><th>image id</th><th class='name'>file</th><th>errors</th><th>AP50</th>"
                 "<th>TP</th>" + "".join(f"<th>{n}</th>" for n in error_types.ERROR_TYPES) + "</tr>")
    for rank, s in enumerate(shown):
        parts.append(f"<tr><td>{rank + 1}</td><td>{s.image_id}</td><td class='name'>{esc(s.file_name)}</td>"
                     f"<td>{s.errors}</td><td>{_pct(s.ap50)}</td><td>{s.counts[error_types.TRUE_POSITIVE]}</td>"
                     + "".join(f"<td>{s.counts[n]}</td>" for n in error_types.ERROR_TYPES) + "</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def _swatch(outcome: str) -> str:
    return f"<span class='swatch' style='background:{error_types.OUTCOME_COLORS[outcome]}'></span>"

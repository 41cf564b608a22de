"""Do the anchors fit the boxes? The best anchor IoU of every ground-truth box, after the resize.

Each non-crowd box is resized as training resizes its image (`resized_size`, for each of the
configured `input.min_size` values: scale jitter draws them uniformly, so each counts once), and
its best IoU with any anchor of the padded input is compared with the matcher's thresholds:
- fg: best IoU >= fg_iou: the box gets positives from the IoU rule;
- low_quality_only: bg_iou <= best IoU < fg_iou: only the low-quality rule gives it a positive
  (its best anchors), and only with `model.matcher.allow_low_quality`;
- none: best IoU < bg_iou: even its best anchor looks like background.
Below TARGET it suggests anchors for the configured input size, and in any case the input size
that suits the configured anchors best (`suggest_input_size`): two ways to the same end.

The best IoU is exact without building the anchors: along each axis the overlap shrinks as the
centres move apart, so for every anchor shape the best anchor is the one centred on the grid point
nearest the box centre (anchors sit at i * stride, i = 0 .. padded size / stride - 1, as in
`modeling.anchors.AnchorGenerator`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from retinanet.config import Config
from retinanet.data.stats import coco_size
from retinanet.modeling.anchors import cell_anchors, sizes_per_level
from retinanet.modeling.preprocess import resized_size

STRIDES = (8, 16, 32, 64, 128)  # P3..P7
TARGET = 0.9  # warn when fewer boxes than this reach fg_iou
KINDS = ("fg", "low_quality_only", "none")
SUGGESTION_SAMPLE = 20000  # boxes used to rank candidate anchor settings
# Input short sides tried by suggest_input_size; another is suggested only if it puts INPUT_GAIN more boxes at fg_iou.
INPUT_SIZES = (128, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 800, 896, 1024, 1152, 1280)
INPUT_GAIN = 0.02
SCALE_OPTIONS: tuple[tuple[float, ...], ...] = (
    (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
    (1.0, 2 ** (1 / 4), 2 ** (1 / 2), 2 ** (3 / 4)),
    (2 ** (-1 / 2), 1.0, 2 ** (1 / 2)),
)


@dataclass(frozen=True)
class ResizedBoxes:
    """Every non-crowd box at every training scale: xyxy in resized pixels, the padded input size, the class."""

    boxes_xyxy: np.ndarray  # (B, 4)
    padded_hw: np.ndarray  # (B, 2)
    category_ids: np.ndarray  # (B,)


def resized_boxes(dataset: Mapping[str, Any], min_sizes: Sequence[int], max_size: int, size_divisible: int) -> ResizedBoxes:
    """Clip each box to its image, then scale it as the resize to each `min_sizes` value does."""
    images = {img["id"]: img for img in dataset.get("images", [])}
    boxes, padded, cats = [], [], []
    for ann in dataset.get("annotations", []):
        if ann.get("iscrowd"):
            continue
        img = images[ann["image_id"]]
        w, h = float(img["width"]), float(img["height"])
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        x1, y1, x2, y2 = min(max(x, 0), w), min(max(y, 0), h), min(max(x + bw, 0), w), min(max(y + bh, 0), h)
        if x2 - x1 < 1 or y2 - y1 < 1:  # the dataset drops these
            continue
        for min_size in min_sizes:
            out_h, out_w = resized_size(int(img["height"]), int(img["width"]), int(min_size), int(max_size))
            sx, sy = out_w / w, out_h / h
            boxes.append((x1 * sx, y1 * sy, x2 * sx, y2 * sy))
            padded.append((math.ceil(out_h / size_divisible) * size_divisible, math.ceil(out_w / size_divisible) * size_divisible))
            cats.append(int(ann["category_id"]))
    return ResizedBoxes(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(padded, dtype=np.int64).reshape(-1, 2),
                        np.asarray(cats, dtype=np.int64))


def best_anchor_iou(
    boxes_xyxy: np.ndarray, padded_hw: np.ndarray, sizes: Sequence[Sequence[float]], ratios: Sequence[float],
    strides: Sequence[int] = STRIDES,
) -> np.ndarray:
    """(B, 4) boxes, (B, 2) padded input sizes -> (B,) the highest IoU any anchor reaches with each box."""
    best = np.zeros(len(boxes_xyxy))
    centre = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2  # (B, 2) x, y
    wh = boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]  # (B, 2)
    area = wh.prod(axis=1)
    for level_sizes, stride in zip(sizes, strides):
        cells = cell_anchors(level_sizes, ratios).double().numpy()  # (A, 4) centred on 0
        anchor_wh = cells[:, 2:] - cells[:, :2]  # (A, 2)
        last = padded_hw[:, ::-1] // stride - 1  # (B, 2) last grid index along x, y
        grid = np.clip(np.round(centre / stride), 0, last) * stride  # (B, 2) nearest anchor centre
        offset = np.abs(centre - grid)[:, None, :]  # (B, 1, 2)
        # Overlap along an axis of two centred segments of lengths a and b at distance d.
        overlap = np.minimum(wh[:, None, :] / 2, offset + anchor_wh[None] / 2) - np.maximum(
            -wh[:, None, :] / 2, offset - anchor_wh[None] / 2)  # (B, A, 2)
        inter = overlap.clip(min=0).prod(axis=2)  # (B, A)
        iou = inter / (area[:, None] + anchor_wh.prod(axis=1)[None] - inter)
        best = np.maximum(best, iou.max(axis=1))
    return best


def classify(best_iou: np.ndarray, fg_iou: float, bg_iou: float) -> np.ndarray:
    """Index into KINDS per box."""
    return np.where(best_iou >= fg_iou, 0, np.where(best_iou >= bg_iou, 1, 2))


def _fractions(kinds: np.ndarray) -> dict[str, Any]:
    total = len(kinds)
    return {"boxes": total, **{k: (float((kinds == i).sum()) / total if total else None) for i, k in enumerate(KINDS)}}


@dataclass(frozen=True)
class Suggestion:
    sizes: list[float]
    scales: list[float]
    fg: float  # share of the sampled boxes that would reach fg_iou


@dataclass(frozen=True)
class InputSuggestion:
    min_size: int  # the suggested input.min_size (one value) and input.max_size in the configured proportion
    max_size: int
    fg: float  # share of the sampled boxes that reach fg_iou with the configured anchors at this size
    current_fg: float  # the same at the configured input sizes
    better: bool  # False: no size of INPUT_SIZES gains INPUT_GAIN over the configured one, which is kept
    median_side: float  # median sqrt(area) of the boxes after the configured resize, in pixels
    anchor_sides: tuple[float, float]  # the smallest and largest anchor's sqrt(area) (the ratio keeps the area)


@dataclass(frozen=True)
class Coverage:
    overall: dict[str, Any]  # {"boxes", "fg", "low_quality_only", "none"}
    per_size: dict[str, dict[str, Any]]  # COCO small / medium / large after the resize
    per_class: dict[int, dict[str, Any]]
    settings: dict[str, Any]
    suggestion: Suggestion | None = None
    input_size: InputSuggestion | None = None

    def to_dict(self, names: Mapping[int, str]) -> dict[str, Any]:
        """The --json layout: fractions of all non-crowd boxes (each counted once per training scale)."""
        return {
            **{k: self.overall[k] for k in KINDS},
            "boxes": self.overall["boxes"],
            "per_size": self.per_size,
            "per_class": {names.get(c, str(c)): {"id": c, **v} for c, v in self.per_class.items()},
            "settings": self.settings,
            "suggestion": None if self.suggestion is None else vars(self.suggestion),
            "input_size": None if self.input_size is None else dataclasses.asdict(self.input_size),
        }


def suggest_anchors(boxes: ResizedBoxes, cfg: Config, seed: int = 0) -> Suggestion:
    """The base size (sizes = s * 2^level) and octave scales that put the most boxes at fg_iou.

    Candidates: s = 4 * 2^(k/4) up to 128 px with the configured scales or one of SCALE_OPTIONS;
    ties go to fewer anchors, then to the size nearest the configured one.
    """
    index = np.arange(len(boxes.boxes_xyxy))
    if index.size > SUGGESTION_SAMPLE:
        index = np.random.default_rng(seed).choice(index, SUGGESTION_SAMPLE, replace=False)
    sample, padded = boxes.boxes_xyxy[index], boxes.padded_hw[index]
    anchors, fg_iou = cfg.model.anchors, cfg.model.matcher.fg_iou
    current = anchors.sizes[0]
    ranked = []
    for scales in dict.fromkeys((tuple(anchors.scales), *SCALE_OPTIONS)):
        for k in range(21):
            base = 4.0 * 2 ** (k / 4)
            sizes = [round(base * 2**level, 1) for level in range(len(STRIDES))]
            best = best_anchor_iou(sample, padded, sizes_per_level(sizes, scales), anchors.ratios)
            fg = float((best >= fg_iou).mean()) if best.size else 0.0
            ranked.append((-round(fg, 3), len(scales), abs(math.log(base / current)), sizes, list(scales), fg))
    _, _, _, sizes, scales, fg = min(ranked, key=lambda r: r[:3])
    return Suggestion(sizes, [round(s, 4) for s in scales], fg)


def _sample_annotations(dataset: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The dataset with at most SUGGESTION_SAMPLE of its non-crowd annotations, drawn with `seed`."""
    anns = [a for a in dataset.get("annotations", []) if not a.get("iscrowd")]
    if len(anns) > SUGGESTION_SAMPLE:
        keep = np.random.default_rng(seed).choice(len(anns), SUGGESTION_SAMPLE, replace=False)
        anns = [anns[i] for i in sorted(keep)]
    return {**dataset, "annotations": anns}


def suggest_input_size(dataset: Mapping[str, Any], cfg: Config, seed: int = 0) -> InputSuggestion | None:
    """The input short side of INPUT_SIZES whose resize puts the most boxes at fg_iou with the configured anchors.

    Sizes within 1 point of the best count as equal and the smallest of them wins (compute grows with
    the pixels); input.max_size keeps its configured proportion to the short side. None without boxes.
    """
    anchors, inp, fg_iou = cfg.model.anchors, cfg.input, cfg.model.matcher.fg_iou
    sample = _sample_annotations(dataset, seed)
    sizes = sizes_per_level(anchors.sizes, anchors.scales)

    def fg_share(min_sizes: Sequence[int], max_size: int) -> tuple[float, ResizedBoxes]:
        boxes = resized_boxes(sample, min_sizes, max_size, inp.size_divisible)
        best = best_anchor_iou(boxes.boxes_xyxy, boxes.padded_hw, sizes, anchors.ratios)
        return (float((best >= fg_iou).mean()) if best.size else 0.0), boxes

    current_fg, current = fg_share(inp.min_size, inp.max_size)
    if not len(current.boxes_xyxy):
        return None
    proportion = inp.max_size / max(inp.min_size)
    shares = {size: fg_share([size], round(size * proportion))[0] for size in INPUT_SIZES}
    top = max(shares.values())
    size = min(s for s, fg in shares.items() if fg >= top - 0.01)
    better = shares[size] >= current_fg + INPUT_GAIN
    if not better:
        size = max(inp.min_size)
    wh = current.boxes_xyxy[:, 2:] - current.boxes_xyxy[:, :2]  # (B, 2)
    return InputSuggestion(
        min_size=size, max_size=round(size * proportion) if better else inp.max_size,
        fg=shares[size] if better else current_fg, current_fg=current_fg, better=better,
        median_side=float(np.median(np.sqrt(wh.prod(axis=1)))),
        anchor_sides=(anchors.sizes[0] * min(anchors.scales), anchors.sizes[-1] * max(anchors.scales)),
    )


def anchor_coverage(dataset: Mapping[str, Any], cfg: Config) -> Coverage:
    """Coverage of a dataset's boxes by the anchors of `cfg` after its training resize."""
    anchors, matcher = cfg.model.anchors, cfg.model.matcher
    boxes = resized_boxes(dataset, cfg.input.min_size, cfg.input.max_size, cfg.input.size_divisible)
    best = best_anchor_iou(boxes.boxes_xyxy, boxes.padded_hw, sizes_per_level(anchors.sizes, anchors.scales), anchors.ratios)
    kinds = classify(best, matcher.fg_iou, matcher.bg_iou)
    areas = (boxes.boxes_xyxy[:, 2:] - boxes.boxes_xyxy[:, :2]).prod(axis=1)
    buckets = np.asarray([coco_size(a) for a in areas])
    settings = {
        "anchors": {"sizes": list(anchors.sizes), "scales": list(anchors.scales), "ratios": list(anchors.ratios)},
        "matcher": {"fg_iou": matcher.fg_iou, "bg_iou": matcher.bg_iou, "allow_low_quality": matcher.allow_low_quality},
        "input": {"min_size": list(cfg.input.min_size), "max_size": cfg.input.max_size},
    }
    overall = _fractions(kinds)
    coverage = Coverage(
        overall=overall,
        per_size={b: _fractions(kinds[buckets == b]) for b in ("small", "medium", "large")},
        per_class={int(c): _fractions(kinds[boxes.category_ids == c]) for c in sorted(set(boxes.category_ids.tolist()))},
        settings=settings,
    )
    if overall["boxes"] and overall["fg"] < TARGET:
        coverage = dataclasses.replace(coverage, suggestion=suggest_anchors(boxes, cfg))
    return dataclasses.replace(coverage, input_size=suggest_input_size(dataset, cfg))


def format_coverage(coverage: Coverage, names: Mapping[int, str]) -> list[str]:
    """The text table and, below TARGET, the warning with the suggested anchors."""
    s = coverage.settings
    lines = [
        f"anchor coverage (anchors sizes {s['anchors']['sizes']}, scales {[round(v, 3) for v in s['anchors']['scales']]}, "
        f"ratios {s['anchors']['ratios']}; matcher fg_iou {s['matcher']['fg_iou']}, bg_iou {s['matcher']['bg_iou']}; "
        f"after the resize to min_size {s['input']['min_size']}, max_size {s['input']['max_size']}):",
        f"  {'':<24} {'boxes':>7} {'fg':>7} {'low-q only':>11} {'none':>7}",
    ]

    def row(name: str, f: Mapping[str, Any]) -> str:
        cells = "".join(f" {'-' if f[k] is None else f'{100 * f[k]:.1f}%':>{w}}" for k, w in zip(KINDS, (7, 11, 7)))
        return f"  {name:<24} {f['boxes']:>7}{cells}"

    lines.append(row("all", coverage.overall))
    lines += [row(f"{bucket} (resized)", f) for bucket, f in coverage.per_size.items()]
    lines += [row(names.get(c, str(c)), f) for c, f in coverage.per_class.items()]
    fg_iou, bg_iou = s["matcher"]["fg_iou"], s["matcher"]["bg_iou"]
    lines.append(f"  fg: best anchor IoU >= {fg_iou}; low-q only: {bg_iou} <= best < {fg_iou} (a positive only through "
                 f"low-quality matches); none: best < {bg_iou}")
    lines.append("  small / medium / large (resized): COCO's buckets after the resize, the sizes the anchors see; "
                 "evaluation's APs / APm / APl bucket the original pixels (the box sizes above)")
    if coverage.overall["boxes"] and coverage.overall["fg"] < TARGET:
        lines.append(f"warning: only {100 * coverage.overall['fg']:.1f}% of the boxes reach fg_iou {fg_iou} "
                     f"with their best anchor (want >= {100 * TARGET:.0f}%)")
        sug = coverage.suggestion
        if sug is not None:
            sizes = ",".join(f"{v:g}" for v in sug.sizes)
            scales = ",".join(f"{v:g}" for v in sug.scales)
            lines.append(f"  suggested: --set model.anchors.sizes=[{sizes}] model.anchors.scales=[{scales}] "
                         f"reaches {100 * sug.fg:.1f}%")
    if coverage.input_size is not None:
        lines += format_input_size(coverage.input_size, s["input"]["min_size"], fg_iou)
    return lines


def format_input_size(sug: InputSuggestion, min_sizes: Sequence[int], fg_iou: float) -> list[str]:
    """The input-size line: the boxes' size after the resize against the anchors', and the size that fits them best."""
    low, high = sug.anchor_sides
    lines = [f"input size: after the resize to min_size {list(min_sizes)} the median box is {sug.median_side:.0f} px; "
             f"the anchors span {low:.0f}-{high:.0f} px"]
    if sug.better:
        cost = (sug.min_size / max(min_sizes)) ** 2
        lines.append(f"  suggested: --set input.min_size=[{sug.min_size}] input.max_size={sug.max_size} puts "
                     f"{100 * sug.fg:.1f}% of the boxes at fg_iou {fg_iou} with these anchors (now "
                     f"{100 * sug.current_fg:.1f}%), at {cost:.2g}x the pixels per image")
    else:
        lines.append(f"  it suits these anchors: no input size from {INPUT_SIZES[0]} to {INPUT_SIZES[-1]} px puts "
                     f"{100 * INPUT_GAIN:.0f} points more of the boxes at fg_iou {fg_iou} ({100 * sug.current_fg:.1f}% now)")
    return lines

"""Score drift: is the model scoring new images the way it scored the validation set?

The model card stores the val score distribution (`score_distribution`): the empirical quantiles
(0, 1, ..., 100 %) of every detection's score and of the number of detections per image, as the
evaluation kept them (score > model.postprocess.score_thresh, at most detections_per_img per image).
`scripts/predict.py` compares the same two quantities on the images it runs with a two-sample
Kolmogorov-Smirnov statistic D (the largest gap between the two empirical CDFs; numpy, no scipy).
The stored quantiles stand in for the val sample, which moves its CDF by at most 1/100.

Bound: a check warns when D > max(MIN_SHIFT, KS_C * sqrt((n + m) / (n * m))), n and m the two
sample sizes (val detections or images, and the new ones). The second term is the KS test's
critical value at the 1 % level (c(0.01) = sqrt(-ln(0.005) / 2) = 1.628), so a few images do not
raise an alarm by chance; MIN_SHIFT keeps large runs from warning over shifts too small to matter.

Minimum sample: below MIN_IMAGES new images nothing is judged. The detections of one image share its
scene, so a few images differ from any val set whatever the model does (4 photos of one export gave
D 0.365 against a bound of 0.1): the test counts detections as independent, and they are not.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

QUANTILES: tuple[float, ...] = tuple(i / 100 for i in range(101))
KS_C = math.sqrt(-math.log(0.01 / 2) / 2)  # 1.628: the two-sample KS critical coefficient at the 1 % level
MIN_SHIFT = 0.1  # the smallest D worth a warning, whatever the sample sizes
MIN_IMAGES = 50  # fewer new images than this are too few to judge (see the module doc)


def ks_statistic(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D = max over x of |F_a(x) - F_b(x)| (scipy.stats.ks_2samp's statistic)."""
    a = np.sort(np.asarray(a, dtype=np.float64).reshape(-1))
    b = np.sort(np.asarray(b, dtype=np.float64).reshape(-1))
    if a.size == 0 or b.size == 0:
        raise ValueError("both samples need at least one value")
    x = np.concatenate([a, b])  # the ECDFs only jump at sample values
    cdf_a = np.searchsorted(a, x, side="right") / a.size
    cdf_b = np.searchsorted(b, x, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def drift_bound(n: int, m: int) -> float:
    """The D above which a check warns (see the module doc)."""
    return max(MIN_SHIFT, KS_C * math.sqrt((n + m) / (n * m)))


def _quantiles(values: np.ndarray) -> list[float] | None:
    if values.size == 0:
        return None
    return [float(v) for v in np.quantile(values, QUANTILES, method="inverted_cdf")]


def score_distribution(records: Sequence[Mapping[str, Any]], image_ids: Sequence[int]) -> dict[str, Any]:
    """The stored reference from COCO result records over the evaluated images (those without records count 0)."""
    scores = np.array([float(r["score"]) for r in records], dtype=np.float64)
    per_image = Counter(int(r["image_id"]) for r in records)
    counts = np.array([per_image.get(int(i), 0) for i in image_ids], dtype=np.float64)
    return {
        "quantiles": list(QUANTILES),
        "num_detections": int(scores.size),
        "num_images": int(counts.size),
        "scores": _quantiles(scores),
        "detections_per_image": _quantiles(counts),
    }


@dataclass(frozen=True)
class DriftCheck:
    """One quantity compared with its val reference."""

    name: str  # "scores" or "detections per image"
    statistic: float  # KS D
    bound: float
    reference_size: int
    size: int
    reference_median: float
    median: float

    @property
    def drifted(self) -> bool:
        return self.statistic > self.bound


def check_drift(reference: Mapping[str, Any], scores: Sequence[float], detections_per_image: Sequence[int]) -> list[DriftCheck]:
    """Compare new detections' scores and per-image counts with the stored distribution; undefined ones are left out."""
    checks = []
    quantities = (
        ("scores", reference.get("scores"), int(reference.get("num_detections") or 0), scores),
        ("detections per image", reference.get("detections_per_image"), int(reference.get("num_images") or 0),
         detections_per_image),
    )
    for name, stored, reference_size, values in quantities:
        values = np.asarray(values, dtype=np.float64)
        if stored is None or reference_size == 0 or values.size == 0:
            continue
        checks.append(DriftCheck(
            name=name,
            statistic=ks_statistic(values, stored),
            bound=drift_bound(reference_size, int(values.size)),
            reference_size=reference_size,
            size=int(values.size),
            reference_median=float(stored[len(stored) // 2]),
            median=float(np.quantile(values, 0.5, method="inverted_cdf")),
        ))
    return checks


def format_drift(checks: Sequence[DriftCheck], num_images: int) -> str:
    """One line per check with its figures, 'warning: ...' and what to do first when any drifted; with fewer
    than MIN_IMAGES images, one line saying that the sample is too small to judge."""
    if not checks:
        return ""
    if num_images < MIN_IMAGES:
        return (f"score drift: not judged on {num_images} image{'s' if num_images != 1 else ''}: it needs at least "
                f"{MIN_IMAGES} new images (fewer, often from one scene, differ from the validation set by chance)")
    lines = [
        f"score drift vs val, {c.name}: KS D {c.statistic:.3f} (warns above {c.bound:.3f}); median {c.median:.4g} "
        f"here vs {c.reference_median:.4g} on val ({c.size} here, {c.reference_size} on val)"
        for c in checks
    ]
    drifted = [c.name for c in checks if c.drifted]
    if drifted:
        lines[:0] = [
            f"warning: the {' and '.join(drifted)} of these images differ from the validation set's (score drift): "
            "the stored thresholds may not give the stored precision and recall here.",
            "  what to do: look at the drawn images for what changed (camera, lighting, objects, classes); label "
            f"{MIN_IMAGES} or more of them and evaluate the checkpoint on them (docs/rare_classes.md, Score drift): "
            "if AP dropped, add such images to the training set and train again; if not, evaluate.py "
            "--target-precision P on them stores thresholds that hold there.",
        ]
    return "\n".join(lines)

"""eval.backend=faster_coco_eval gives pycocotools' numbers on the same files; a missing package is one line."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO

from retinanet.config import ConfigError, load_config
from retinanet.evaluation.evaluator import STAT_NAMES, CocoEvaluator
from tests.helpers import SHARED_TINY_COCO

requires_faster_coco_eval = pytest.mark.skipif(
    importlib.util.find_spec("faster_coco_eval") is None,
    reason="faster-coco-eval is not installed (optional extra fast-eval: pip install faster-coco-eval)",
)

# Both implement the same arithmetic in the same order (faster-coco-eval's C++ port of
# evaluateImg/accumulate); the 12 numbers agree exactly, the tolerance only absorbs summation order.
EXACT = 1e-12


def ground_truth_file(source: str, synthetic: Path, tmp_path: Path) -> Path:
    """tiny_coco val (real photos, 48 classes, crowd boxes) or the synthetic val set with a crowd box added."""
    if source == "tiny_coco":
        path = SHARED_TINY_COCO / "annotations" / "instances_val2017.json"
        if not path.is_file():
            pytest.skip(f"{path} not present")
        return path
    dataset = json.loads((synthetic / "annotations" / "instances_val.json").read_text())
    image = dataset["images"][0]
    dataset["annotations"].append(
        {
            "id": max(a["id"] for a in dataset["annotations"]) + 1,
            "image_id": image["id"],
            "category_id": dataset["categories"][0]["id"],
            "bbox": [0.0, 0.0, image["width"] / 2, image["height"] / 2],
            "area": image["width"] * image["height"] / 4,
            "iscrowd": 1,
        }
    )
    path = tmp_path / "instances_val_crowd.json"
    path.write_text(json.dumps(dataset))
    return path


def deterministic_results(coco: COCO, seed: int = 0) -> list[dict[str, Any]]:
    """Per ground-truth box a jittered copy (true positives at many IoUs, some with the wrong class), a
    detection inside every crowd box (ignored, not a false positive), and random false positives.
    Scores are rounded to 2 decimals, so ties occur and the two tie-breaking orders are compared too."""
    rng = np.random.default_rng(seed)
    category_ids = sorted(coco.getCatIds())
    records: list[dict[str, Any]] = []

    def add(image_id: int, category_id: int, bbox: list[float], score: float) -> None:
        records.append({"image_id": image_id, "category_id": int(category_id), "bbox": [round(float(v), 2) for v in bbox],
                        "score": round(float(score), 2)})

    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        width, height = info["width"], info["height"]
        for ann in coco.imgToAnns.get(image_id, []):
            x, y, w, h = ann["bbox"]
            if ann["iscrowd"]:
                add(image_id, ann["category_id"], [x + w / 4, y + h / 4, w / 3, h / 3], rng.uniform(0.2, 0.9))
                continue
            if rng.uniform() < 0.15:
                continue  # a miss
            jitter = rng.normal(0, 0.15, size=4) * [w, h, w, h]
            wrong_class = rng.uniform() < 0.1
            category_id = int(rng.choice(category_ids)) if wrong_class else ann["category_id"]
            add(image_id, category_id, [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])],
                rng.uniform(0.05, 1.0))
        for _ in range(int(rng.integers(0, 20))):
            w, h = rng.uniform(2, width / 2), rng.uniform(2, height / 2)
            add(image_id, rng.choice(category_ids), [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h],
                rng.uniform(0.01, 0.7))
    return records


def evaluate_both(gt_path: Path, records: list[dict[str, Any]], image_ids: list[int] | None = None) -> dict[str, Any]:
    coco = COCO(str(gt_path))
    out = {}
    for backend in ("pycocotools", "faster_coco_eval"):
        # pycocotools keeps its compute's matches, faster-coco-eval's are recomputed: both paths of matches().
        evaluator = CocoEvaluator(coco, backend=backend, keep_matches=backend == "pycocotools")
        evaluator.update(records, image_ids=image_ids)
        out[backend] = (evaluator, evaluator.compute())
    return out


@requires_faster_coco_eval
@pytest.mark.parametrize("source", ["tiny_coco", "synthetic"])
def test_same_twelve_numbers_per_class_and_pr_curve(source: str, synthetic: Path, tmp_path: Path) -> None:
    gt_path = ground_truth_file(source, synthetic, tmp_path)
    records = deterministic_results(COCO(str(gt_path)))
    results = evaluate_both(gt_path, records)
    (ref_eval, ref), (fast_eval, fast) = results["pycocotools"], results["faster_coco_eval"]
    assert 0.2 < ref["AP50"] < 0.95  # real true and false positives, not a degenerate set
    for name in STAT_NAMES:
        if np.isnan(ref[name]):
            assert np.isnan(fast[name]), name
        else:
            assert fast[name] == pytest.approx(ref[name], abs=EXACT, rel=0), name
    assert fast["per_class"].keys() == ref["per_class"].keys()
    for name, entry in ref["per_class"].items():
        for key in ("AP", "AP50"):
            assert (fast["per_class"][name][key] is None) == (entry[key] is None), (name, key)
            if entry[key] is not None:
                assert fast["per_class"][name][key] == pytest.approx(entry[key], abs=EXACT, rel=0), (name, key)
    np.testing.assert_allclose(fast_eval.last_precision, ref_eval.last_precision, atol=EXACT, rtol=0)
    np.testing.assert_allclose(fast_eval.pr_curve(0.5)[1], ref_eval.pr_curve(0.5)[1], atol=EXACT, rtol=0)


@requires_faster_coco_eval
def test_crowd_match_is_ignored_by_both(synthetic: Path, tmp_path: Path) -> None:
    """The detection inside the crowd box is neither a true nor a false positive in either backend."""
    gt_path = ground_truth_file("synthetic", synthetic, tmp_path)
    coco = COCO(str(gt_path))
    crowd = next(a for a in coco.dataset["annotations"] if a["iscrowd"])
    x, y, w, h = crowd["bbox"]
    inside = {"image_id": crowd["image_id"], "category_id": crowd["category_id"], "bbox": [x + w / 4, y + h / 4, w / 3, h / 3],
              "score": 0.99}
    without = deterministic_results(coco)
    with_crowd_match = [*without, inside]
    for backend in ("pycocotools", "faster_coco_eval"):
        a, b = CocoEvaluator(coco, backend=backend), CocoEvaluator(coco, backend=backend)
        a.update(without)
        b.update(with_crowd_match)
        assert a.compute()["AP"] == b.compute()["AP"], backend


@requires_faster_coco_eval
def test_subset_and_matches_agree(synthetic: Path, tmp_path: Path) -> None:
    """Evaluation restricted to the images seen, and the per-detection matches behind the operating point."""
    gt_path = ground_truth_file("synthetic", synthetic, tmp_path)
    coco = COCO(str(gt_path))
    image_ids = sorted(coco.getImgIds())[:5]
    records = [r for r in deterministic_results(coco) if r["image_id"] in image_ids]
    results = evaluate_both(gt_path, records, image_ids=image_ids)
    (ref_eval, ref), (fast_eval, fast) = results["pycocotools"], results["faster_coco_eval"]
    assert [fast[k] for k in STAT_NAMES] == pytest.approx([ref[k] for k in STAT_NAMES], abs=EXACT, nan_ok=True)
    ref_matches, fast_matches = ref_eval.matches(iou=0.5), fast_eval.matches(iou=0.5)
    assert ref_matches.keys() == fast_matches.keys()
    assert sum(m.is_tp.sum() for m in ref_matches.values()) > 0
    for category_id, m in ref_matches.items():
        np.testing.assert_array_equal(fast_matches[category_id].scores, m.scores)
        np.testing.assert_array_equal(fast_matches[category_id].is_tp, m.is_tp)
        assert fast_matches[category_id].num_gt == m.num_gt


def test_config_accepts_the_backend() -> None:
    assert load_config(None, ["eval.backend=faster_coco_eval"]).eval.backend == "faster_coco_eval"
    assert load_config(None).eval.backend == "pycocotools"
    with pytest.raises(ConfigError, match="eval.backend"):
        load_config(None, ["eval.backend=faster"])


def test_missing_package_is_a_one_line_config_error(monkeypatch: pytest.MonkeyPatch, synthetic: Path) -> None:
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import now raises ImportError
    coco = COCO(str(synthetic / "annotations" / "instances_val.json"))
    with pytest.raises(ConfigError) as info:
        CocoEvaluator(coco, backend="faster_coco_eval")
    message = str(info.value)
    assert "\n" not in message and "eval.backend" in message and "pip install faster-coco-eval" in message

"""Operating point search, its COCO input, evaluate.py --target-*, predict.py defaults and MODEL_CARD.md."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retinanet.cli import evaluate
from retinanet.cli import predict as predict_cli
from retinanet.fileio import RunFileError
from retinanet.cli.common import run_cli
from retinanet.evaluation import drift
from retinanet.evaluation.evaluator import ClassMatches, CocoEvaluator
from retinanet.evaluation.operating_point import (
    OperatingPoint,
    OperatingPointReport,
    find_threshold,
    format_operating_point_table,
    keep_mask,
    search,
)
from tests.helpers import REPO, make_coco, synthetic_overrides

DEMO = str(REPO / "configs" / "demo_cpu.yaml")

# Six detections, four ground-truth boxes. Keeping every score >= t gives:
#   t    TP FP  precision  recall  F1 = 2TP / (kept + 4)
#  0.9   1  0   1          1/4     2/5
#  0.8   2  0   1          2/4     4/6
#  0.7   2  1   2/3        2/4     4/7
#  0.6   3  1   3/4        3/4     6/8   <- max F1
#  0.5   3  2   3/5        3/4     6/9
#  0.4   3  3   1/2        3/4     6/10
SCORES = [0.5, 0.9, 0.6, 0.4, 0.8, 0.7]  # shuffled: the search must not depend on input order
IS_TP = [False, True, True, False, True, False]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"target_precision": 1.0}, OperatingPoint(0.8, 1.0, 0.5, 4 / 6, True)),
        ({"target_precision": 0.75}, OperatingPoint(0.6, 0.75, 0.75, 0.75, True)),
        # 0.5 and 0.4 also give recall 3/4 at precision >= 0.5, but only add false positives.
        ({"target_precision": 0.5}, OperatingPoint(0.6, 0.75, 0.75, 0.75, True)),
        ({"target_recall": 0.25}, OperatingPoint(0.9, 1.0, 0.25, 0.4, True)),
        ({"target_recall": 0.5}, OperatingPoint(0.8, 1.0, 0.5, 4 / 6, True)),
        ({"target_recall": 0.75}, OperatingPoint(0.6, 0.75, 0.75, 0.75, True)),
        # Recall never passes 3/4: the closest point is the highest threshold reaching 3/4.
        ({"target_recall": 1.0}, OperatingPoint(0.6, 0.75, 0.75, 0.75, False)),
        ({}, OperatingPoint(0.6, 0.75, 0.75, 0.75, True)),
    ],
)
def test_find_threshold_on_hand_made_pr_set(kwargs: dict[str, float], expected: OperatingPoint) -> None:
    assert find_threshold(SCORES, IS_TP, 4, **kwargs) == expected


# The same six detections (four gt) priced at C x missed + cost_fp x FP; keeping nothing costs 4C.
#  t      TP FP  C=1  C=5  C=0.5,cost_fp=3
#  none   0  0   4    20   2
#  0.9    1  0   3    15   1.5
#  0.8    2  0   2    10   1    <- C=1 (tied with 0.6: the higher threshold wins), C=0.5 with cost_fp=3
#  0.7    2  1   3    11   3.5
#  0.6    3  1   2    6    3.5  <- C=5
#  0.5    3  2   3    7    6.5
#  0.4    3  3   4    8    9.5
@pytest.mark.parametrize(
    ("cost_fn", "cost_fp", "expected"),
    [
        (1.0, 1.0, OperatingPoint(0.8, 1.0, 0.5, 4 / 6, True, 2.0)),
        (5.0, 1.0, OperatingPoint(0.6, 0.75, 0.75, 0.75, True, 6.0)),
        (0.5, 3.0, OperatingPoint(0.8, 1.0, 0.5, 4 / 6, True, 1.0)),
    ],
)
def test_cost_threshold_on_hand_made_pr_set(cost_fn: float, cost_fp: float, expected: OperatingPoint) -> None:
    assert find_threshold(SCORES, IS_TP, 4, cost_fn=cost_fn, cost_fp=cost_fp) == pytest.approx(expected)
    # A false positive first, priced 3, then a TP worth 1: keeping nothing (cost 2) beats 0.9 (5) and 0.8 (4),
    # with a threshold just above the highest score, which keeps no detection.
    assert find_threshold([0.9, 0.8], [False, True], 2, cost_fn=1.0, cost_fp=3.0) == pytest.approx(
        OperatingPoint(0.90001, 1.0, 0.0, 0.0, True, 2.0)
    )


def test_cost_report_round_trips_and_names_its_costs() -> None:
    matches = {1: ClassMatches(np.array(SCORES), np.array(IS_TP), 4)}
    report = search(matches, {1: "cat"}, cost_fn=5.0, cost_fp=1.0)
    raw = report.to_dict()
    assert raw["target"] == {"kind": "cost", "value": 5.0, "cost_fp": 1.0}
    assert raw["overall"]["cost"] == 6.0 and raw["per_class"]["cat"]["threshold"] == 0.6
    assert OperatingPointReport.from_dict(raw) == report
    table = format_operating_point_table(report)
    assert "(least cost 5 x missed + 1 x false positives)" in table and table.splitlines()[1].endswith("cost")
    assert re.search(r"^overall .* 0\.60000 .* 6\.0$", table, re.M)


def test_unreachable_precision_reports_the_max_precision_point() -> None:
    # FP 0.9, TP 0.8, TP 0.7, 2 gt: precision 0, 1/2, 2/3; 0.9 is never reached.
    point = find_threshold([0.9, 0.8, 0.7], [False, True, True], 2, target_precision=0.9)
    assert point == OperatingPoint(0.7, 2 / 3, 1.0, 0.8, False)


@pytest.mark.parametrize("tie_order", [[True, False], [False, True]])
def test_tied_scores_are_kept_or_dropped_together(tie_order: list[bool]) -> None:
    # TP 0.9, {TP, FP} at 0.8, TP 0.7, 3 gt. Threshold 0.8 keeps both tied detections:
    #   0.9: P 1, R 1/3;  0.8: P 2/3, R 2/3;  0.7: P 3/4, R 1 (F1 6/7).
    scores, is_tp = [0.9, 0.8, 0.8, 0.7], [True, *tie_order, True]
    assert find_threshold(scores, is_tp, 3, target_precision=1.0) == OperatingPoint(0.9, 1.0, 1 / 3, 0.5, True)
    assert find_threshold(scores, is_tp, 3, target_recall=0.6) == OperatingPoint(0.8, 2 / 3, 2 / 3, 4 / 6, True)
    assert find_threshold(scores, is_tp, 3) == OperatingPoint(0.7, 0.75, 1.0, 6 / 7, True)


def test_max_f1_tie_takes_the_higher_threshold_and_undefined_inputs_give_none() -> None:
    # TP 0.9 -> F1 2/(1+3) = 1/2; TP 0.9 + 3 FP + TP 0.5 -> F1 4/(5+3) = 1/2.
    point = find_threshold([0.9, 0.8, 0.7, 0.6, 0.5], [True, False, False, False, True], 3)
    assert point == OperatingPoint(0.9, 1.0, 1 / 3, 0.5, True)
    assert find_threshold([], [], 3) is None
    assert find_threshold([0.9], [False], 0, target_precision=0.5) is None
    with pytest.raises(ValueError, match="not both"):
        find_threshold(SCORES, IS_TP, 4, target_precision=0.5, target_recall=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        find_threshold(SCORES, IS_TP, 4, target_recall=0.0)


def test_keep_mask_compares_scores_rounded_like_coco_results() -> None:
    import torch

    # 0.299996 is written as 0.3 in COCO results, so a 0.3 threshold found there keeps it.
    scores = torch.tensor([0.299996, 0.29999, 0.5, 0.5])
    labels = torch.tensor([0, 0, 1, 0])
    assert keep_mask(scores, labels, [0.3, 0.6]).tolist() == [True, False, False, True]


# ----------------------------------------------------------------------------- COCO input

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "bird"}, {"id": 9, "name": "fish"}]


def handmade_gt(file_names: tuple[str, str] = ("a.png", "b.png")) -> dict[str, Any]:
    """Two 64x64 images: two cats and a crowd of cats in image 1, a dog in image 2; no bird, no fish."""
    anns = [
        (1, 1, [4, 4, 20, 20], 0),
        (1, 1, [34, 34, 20, 20], 0),
        (1, 1, [0, 40, 24, 24], 1),  # crowd: an ignore region, apart from both cats
        (2, 2, [10, 10, 30, 30], 0),
    ]
    return {
        "images": [{"id": i + 1, "file_name": name, "width": 64, "height": 64} for i, name in enumerate(file_names)],
        "categories": CATEGORIES,
        "annotations": [
            {"id": n + 1, "image_id": img, "category_id": cat, "bbox": [float(v) for v in box], "area": box[2] * box[3],
             "iscrowd": crowd}
            for n, (img, cat, box, crowd) in enumerate(anns)
        ],
    }


# (image, category, bbox, score): what COCO makes of each at IoU 0.5.
RESULTS = [
    (1, 1, [4, 4, 20, 20], 0.9),  # TP: first cat
    (1, 1, [5, 5, 20, 20], 0.8),  # FP: duplicate of the first cat (IoU 0.82), already matched
    (1, 1, [2, 44, 16, 16], 0.7),  # matched to the crowd region: not counted at all
    (2, 1, [40, 40, 10, 10], 0.6),  # FP: no cat in image 2
    (2, 2, [10, 10, 30, 30], 0.5),  # TP: the dog
    (1, 5, [40, 2, 10, 10], 0.4),  # FP of a class without ground truth
    (1, 1, [34, 34, 20, 20], 0.3),  # TP: second cat
]


def result_records() -> list[dict[str, Any]]:
    return [{"image_id": i, "category_id": c, "bbox": [float(v) for v in b], "score": s} for i, c, b, s in RESULTS]


def test_matches_from_cocoeval_exclude_crowd_and_count_duplicates_as_false_positives() -> None:
    evaluator = CocoEvaluator(make_coco(handmade_gt()))
    evaluator.update(result_records())
    evaluator.compute()
    matches = evaluator.matches(iou=0.5)
    assert sorted(matches) == [1, 2, 5, 9]
    as_pairs = {k: sorted(zip(m.scores.tolist(), m.is_tp.tolist()), reverse=True) for k, m in matches.items()}
    assert as_pairs == {
        1: [(0.9, True), (0.8, False), (0.6, False), (0.3, True)],
        2: [(0.5, True)],
        5: [(0.4, False)],
        9: [],
    }
    assert {k: m.num_gt for k, m in matches.items()} == {1: 2, 2: 1, 5: 0, 9: 0}

    # Pooled, 3 gt: 0.9 T, 0.8 F, 0.6 F, 0.5 T, 0.4 F, 0.3 T. Max F1 is 6/9 at 0.3.
    # cat alone, 2 gt: F1 2/3 at 0.9 (1 TP of 1) and at 0.3 (2 TP of 4): the higher threshold wins.
    names = {1: "cat", 2: "dog", 5: "bird", 9: "fish"}
    report = search(matches, names)
    assert report.overall == OperatingPoint(0.3, 0.5, 1.0, 6 / 9, True)
    assert report.per_class["cat"].point == OperatingPoint(0.9, 1.0, 0.5, 2 / 3, True)
    assert report.per_class["dog"].point == OperatingPoint(0.5, 1.0, 1.0, 1.0, True)
    assert report.per_class["bird"].id == 5 and report.per_class["bird"].point is None
    assert report.per_class["fish"].point is None


def evaluate_handmade(synthetic: Path, tmp_path: Path, *flags: str) -> dict[str, Any]:
    """evaluate.py --predictions on the hand-made records over two val images; the operating_point.json written."""
    val = json.loads((synthetic / "annotations" / "instances_val.json").read_text())
    gt = handmade_gt((val["images"][0]["file_name"], val["images"][1]["file_name"]))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(result_records()))
    sets = synthetic_overrides(synthetic) + [f"data.val.annotations={tmp_path / 'gt.json'}"]
    assert evaluate.main(["--config", DEMO, "--predictions", str(tmp_path / "results.json"), *flags, "--set", *sets]) == 0
    return json.loads((tmp_path / "results_eval_val" / "operating_point.json").read_text())  # named after file, split


def test_evaluate_predictions_with_target_precision_writes_expected_thresholds(synthetic: Path, tmp_path: Path) -> None:
    saved = evaluate_handmade(synthetic, tmp_path, "--target-precision", "0.6")
    assert saved["target"] == {"kind": "precision", "value": 0.6}
    # Pooled, precision >= 0.6 only at 0.9 (1 TP of 3 gt); cat alone likewise (1 of 2); dog at 0.5.
    assert saved["overall"] == {"threshold": 0.9, "precision": 1.0, "recall": pytest.approx(1 / 3), "f1": 0.5,
                                "reached": True}
    assert saved["per_class"]["cat"] == {"id": 1, "threshold": 0.9, "precision": 1.0, "recall": 0.5,
                                         "f1": pytest.approx(2 / 3), "reached": True}
    assert saved["per_class"]["dog"] == {"id": 2, "threshold": 0.5, "precision": 1.0, "recall": 1.0, "f1": 1.0,
                                         "reached": True}
    assert saved["per_class"]["bird"] == {"id": 5, "threshold": None, "precision": None, "recall": None, "f1": None,
                                          "reached": False}


def test_evaluate_predictions_with_cost_writes_the_cheapest_thresholds(synthetic: Path, tmp_path: Path) -> None:
    saved = evaluate_handmade(synthetic, tmp_path, "--cost-fn", "2", "--cost-fp", "1")
    assert saved["target"] == {"kind": "cost", "value": 2.0, "cost_fp": 1.0}
    # Pooled, counted at IoU 0.5 (crowd match left out), 3 gt: 0.9 TP, 0.8 FP, 0.6 FP, 0.5 TP, 0.4 FP, 0.3 TP.
    # Cost 2 x missed + FP: none 6, 0.9 -> 4, 0.8 -> 5, 0.6 -> 6, 0.5 -> 4, 0.4 -> 5, 0.3 -> 3 (all kept).
    assert saved["overall"] == {"threshold": 0.3, "precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3),
                                "reached": True, "cost": 3.0}
    # cat: 0.9 TP, 0.8 FP, 0.6 FP, 0.3 TP of 2 gt: none 4, 0.9 -> 2, 0.8 -> 3, 0.6 -> 4, 0.3 -> 2: 0.9 (higher).
    assert saved["per_class"]["cat"]["threshold"] == 0.9 and saved["per_class"]["cat"]["cost"] == 2.0
    # bird: one FP and no ground truth: undefined, as for the other targets.
    assert saved["per_class"]["bird"]["threshold"] is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cost-fn", "0"], "error: --cost-fn 0: must be a number > 0, e.g. --cost-fn 5"),
        (["--cost-fn", "5", "--cost-fp", "x"], "error: --cost-fp x: must be a number > 0, e.g. --cost-fp 5"),
        (["--target-precision", "1.5"], "error: --target-precision 1.5: must be a number in (0, 1], e.g. --target-precision 0.9"),
        (["--target-recall", "0"], "error: --target-recall 0: must be a number in (0, 1], e.g. --target-recall 0.9"),
        (["--target-recall", "high"], "error: --target-recall high: must be a number in (0, 1], e.g. --target-recall 0.9"),
    ],
)
def test_bad_target_is_a_one_line_error(flags: list[str], message: str, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["evaluate.py"])
    assert run_cli(lambda: evaluate.main(["--config", DEMO, "--predictions", "r.json", *flags])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [message]


# ----------------------------------------------------------------------------- run folder


def copy_run(trained_run: Path, dest: Path, with_operating_point: bool = True) -> Path:
    """The files evaluate.py and predict.py read, so tests never change the shared trained run."""
    (dest / "checkpoints").mkdir(parents=True)
    names = ["config.yaml", "model_card.json", "MODEL_CARD.md"]
    for name in names + (["operating_point.json"] if with_operating_point else []):
        shutil.copy(trained_run / name, dest / name)
    shutil.copy(trained_run / "checkpoints" / "best.pt", dest / "checkpoints" / "best.pt")
    return dest


def run_predict(checkpoint: Path, image: Path, out: Path, *flags: str) -> list[dict]:
    assert predict_cli.main(["--checkpoint", str(checkpoint), "--input", str(image),
                                        "--output-dir", str(out), *flags]) == 0
    return json.loads((out / "detections.json").read_text())


def predict_records(checkpoint: Path, image: Path, out: Path, capsys, *flags: str) -> tuple[str, list[dict]]:
    records = run_predict(checkpoint, image, out, *flags)
    return capsys.readouterr().out, records


@pytest.fixture(scope="module")
def val_image(synthetic: Path) -> Path:
    return synthetic / "val" / "000001.png"


@pytest.fixture(scope="module")
def unfiltered(trained_run: Path, val_image: Path, tmp_path_factory) -> list[dict]:
    """predict.py's detections of the trained run's best.pt on one val image, at --score-thresh 0."""
    return run_predict(trained_run / "checkpoints" / "best.pt", val_image, tmp_path_factory.mktemp("all"),
                       "--score-thresh", "0")


def test_train_writes_model_card_and_max_f1_operating_point(trained_run: Path, synthetic: Path) -> None:
    card = (trained_run / "MODEL_CARD.md").read_text()
    headings = [line for line in card.splitlines() if line.startswith("## ")]
    assert headings == ["## Data", "## Configuration", "## Loss", "## Operating point", "## COCO metrics (val)",
                        "## Score distribution (val)", "## Training"]
    for split, n_images in (("train", 16), ("val", 8)):
        gt = json.loads((synthetic / "annotations" / f"instances_{split}.json").read_text())
        assert len(gt["images"]) == n_images
        boxes = sum(1 for a in gt["annotations"] if not a["iscrowd"])
        empty = n_images - len({a["image_id"] for a in gt["annotations"]})
        assert re.search(rf"^\| {split} \| {n_images} \| {empty} \| {boxes} \| 0 \| 0 \|", card, re.M), split
    per_class = {c["id"]: 0 for c in gt["categories"]}
    for a in gt["annotations"]:
        per_class[a["category_id"]] += 1
    assert re.search(rf"^\| circle \| 1 \| \d+ \| {per_class[1]} \|$", card, re.M)
    assert re.search(rf"^\| ring \| 12 \| \d+ \| {per_class[12]} \|$", card, re.M)
    assert "| backbone | resnet18 (weights none, norm bn" in card
    assert "| iterations | 4 |" in card and "| optimizer | adamw, lr 0.004" in card
    assert "sigmoid focal loss (`loss.type: focal`), gamma 2, alpha 0.25." in card
    assert "- iterations: 4" in card and "- torch " in card and "device `cpu`" in card

    op = json.loads((trained_run / "operating_point.json").read_text())
    assert op["target"] == {"kind": "max_f1", "value": None}
    assert op["source"]["checkpoint"] == "checkpoints/last.pt" and op["source"]["iteration"] == 4
    assert set(op["per_class"]) == {"circle", "square", "triangle", "cross", "ring"}
    assert op["per_class"]["ring"]["id"] == 12
    assert f"Score threshold **{op['overall']['threshold']:.5g}** overall (max F1" in card
    lines = [json.loads(l) for l in (trained_run / "metrics.jsonl").read_text().splitlines()]
    last_eval = [l for l in lines if l["kind"] == "eval"][-1]
    assert last_eval["step"] == 4
    assert "`checkpoints/last.pt` at iteration 4" in card
    assert re.search(rf"^\s*{100 * last_eval['AP']:.1f}\s+{100 * last_eval['AP50']:.1f}\s", card, re.M)
    # The val score distribution is that of the final evaluation's records: 8 val images.
    distribution = json.loads((trained_run / "model_card.json").read_text())["score_distribution"]
    assert distribution["num_images"] == 8 and len(distribution["quantiles"]) == 101
    assert sum(1 for _ in distribution["detections_per_image"]) == 101
    assert f"{distribution['num_detections']} detections on 8 images" in card


def test_evaluate_target_precision_stores_operating_point_and_predict_uses_it(
    trained_run: Path, synthetic: Path, val_image: Path, unfiltered: list[dict], tmp_path: Path, capsys
) -> None:
    run = copy_run(trained_run, tmp_path / "run")
    checkpoint = run / "checkpoints" / "best.pt"
    code = evaluate.main(["--config", str(run / "config.yaml"), "--checkpoint", str(checkpoint),
                          "--output-dir", str(tmp_path / "eval"), "--target-precision", "0.5"])
    assert code == 0
    assert "threshold  precision  recall" in capsys.readouterr().out
    stored = json.loads((run / "operating_point.json").read_text())
    assert stored == json.loads((tmp_path / "eval" / "operating_point.json").read_text())
    assert stored["target"] == {"kind": "precision", "value": 0.5}
    assert stored["source"]["checkpoint"] == "checkpoints/best.pt"

    # Every defined per-class point agrees with the written detections: precision = TP / kept.
    detections = json.loads((tmp_path / "eval" / "detections.json").read_text())
    val = json.loads((synthetic / "annotations" / "instances_val.json").read_text())
    for name, entry in stored["per_class"].items():
        num_gt = sum(1 for a in val["annotations"] if a["category_id"] == entry["id"])
        kept = [d for d in detections if d["category_id"] == entry["id"] and d["score"] >= (entry["threshold"] or 0)]
        if entry["threshold"] is None:
            assert num_gt == 0 or not kept, name
            continue
        assert entry["precision"] == pytest.approx(entry["recall"] * num_gt / len(kept)), name
        assert entry["reached"] == (entry["precision"] >= 0.5), name

    card = (run / "MODEL_CARD.md").read_text()
    assert "Written by `evaluate.py`" in card and "(precision >= 0.5 at IoU 0.5" in card
    assert "`checkpoints/best.pt` at iteration" in card
    assert re.search(r"^\| train \| 16 \|", card, re.M)  # training facts kept from model_card.json

    # predict.py: the stored per-class thresholds by default, applied to the same detections as --score-thresh 0.
    out, records = predict_records(checkpoint, val_image, tmp_path / "pred", capsys)
    thresholds = {e["id"]: (e["threshold"] if e["threshold"] is not None else stored["overall"]["threshold"])
                  for e in stored["per_class"].values()}
    listed = ", ".join(f"{name} {thresholds[e['id']]:.5g}" for name, e in stored["per_class"].items())
    assert f"score thresholds from {run / 'operating_point.json'} (precision >= 0.5, per class): {listed}" in out
    assert records == [r for r in unfiltered if round(r["score"], 5) >= thresholds[r["category_id"]]]


def test_evaluate_cost_feeds_the_card_and_predict_watches_score_drift(
    trained_run: Path, synthetic: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    run = copy_run(trained_run, tmp_path / "run")
    checkpoint = run / "checkpoints" / "best.pt"
    assert evaluate.main(["--config", str(run / "config.yaml"), "--checkpoint", str(checkpoint),
                          "--output-dir", str(tmp_path / "eval"), "--cost-fn", "5"]) == 0
    stored = json.loads((run / "operating_point.json").read_text())
    assert stored["target"] == {"kind": "cost", "value": 5.0, "cost_fp": 1.0}
    card = (run / "MODEL_CARD.md").read_text()
    assert "(least cost 5 x missed + 1 x false positives at IoU 0.5" in card
    assert f"cost {stored['overall']['cost']:g}." in card
    facts = json.loads((run / "model_card.json").read_text())
    detections = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert facts["score_distribution"]["num_detections"] == len(detections)

    # predict.py on the 8 val images themselves: the cost thresholds; too few images to judge drift.
    out, _ = predict_records(checkpoint, synthetic / "val", tmp_path / "pred", capsys)
    assert f"score thresholds from {run / 'operating_point.json'} (least cost 5 x missed" in out
    assert f"score drift: not judged on 8 images: it needs at least {drift.MIN_IMAGES} new images" in out
    assert "KS D" not in out and "warning" not in out
    # Judged from 8 images on: the same scores as the card's.
    monkeypatch.setattr(drift, "MIN_IMAGES", 8)
    out, _ = predict_records(checkpoint, synthetic / "val", tmp_path / "pred", capsys)
    assert "score drift vs val, scores: KS D 0.0" in out and "warning" not in out
    # A card whose val scores were all lower: the same images now warn, with the figures and what to do.
    facts["score_distribution"]["scores"] = [s / 10 for s in facts["score_distribution"]["scores"]]
    (run / "model_card.json").write_text(json.dumps(facts))
    out, _ = predict_records(checkpoint, synthetic / "val", tmp_path / "pred", capsys)
    assert "warning: the scores of these images differ from the validation set's (score drift)" in out
    assert "  what to do: look at the drawn images for what changed" in out
    assert re.search(r"score drift vs val, scores: KS D (1\.000|0\.9\d\d) \(warns above 0\.\d+\)", out)


def test_predict_takes_each_class_threshold_and_the_overall_one_for_undefined_classes(
    trained_run: Path, val_image: Path, unfiltered: list[dict], tmp_path: Path, capsys
) -> None:
    run = copy_run(trained_run, tmp_path / "run", with_operating_point=False)
    checkpoint = run / "checkpoints" / "best.pt"
    # The 4-iteration model scores its detections ~1.0, so thresholds above 1 are what drop a class here.
    assert {1, 3, 7} <= {r["category_id"] for r in unfiltered}

    def point(threshold: float | None) -> dict[str, Any]:
        return {"threshold": threshold, "precision": 0.5, "recall": 0.5, "f1": 0.5, "reached": True}

    stored = {
        "target": {"kind": "recall", "value": 0.5}, "iou": 0.5, "overall": point(1.5), "source": {},
        "per_class": {"circle": {"id": 1, **point(0.0)}, "square": {"id": 3, **point(None)},
                      "triangle": {"id": 7, **point(2.0)}, "cross": {"id": 10, **point(0.0)},
                      "ring": {"id": 12, **point(0.0)}},
    }
    (run / "operating_point.json").write_text(json.dumps(stored))
    out, records = predict_records(checkpoint, val_image, tmp_path / "pred", capsys)
    assert (f"score thresholds from {run / 'operating_point.json'} (recall >= 0.5, per class): "
            "circle 0, square 1.5, triangle 2, cross 0, ring 0") in out
    assert records == [r for r in unfiltered if r["category_id"] in {1, 10, 12}]


def test_predict_without_operating_point_uses_the_default_and_says_so(
    trained_run: Path, val_image: Path, unfiltered: list[dict], tmp_path: Path, capsys
) -> None:
    run = copy_run(trained_run, tmp_path / "run", with_operating_point=False)
    checkpoint = run / "checkpoints" / "best.pt"
    out, records = predict_records(checkpoint, val_image, tmp_path / "pred", capsys)
    assert f"no operating_point.json in {run}; using the default score threshold 0.3 for every class" in out
    assert records == [r for r in unfiltered if round(r["score"], 5) >= 0.3]
    (run / "operating_point.json").write_text("{}")
    out, _ = predict_records(checkpoint, val_image, tmp_path / "pred2", capsys, "--score-thresh", "0.7")
    assert "score threshold 0.7 for every class (--score-thresh)" in out  # the override never reads the file
    with pytest.raises(RunFileError, match="operating_point.json: not a valid operating point file"):
        run_predict(checkpoint, val_image, tmp_path / "pred3")

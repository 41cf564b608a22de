"""CocoEvaluator and detections_to_coco against hand-computed COCO numbers."""
from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from retinanet.evaluation.evaluator import STAT_NAMES, CocoEvaluator, detections_to_coco, format_metrics_table
from retinanet.structures import Detections
from tests.helpers import make_coco

TINY_COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny_coco"

# Gapped category ids; "fish" (15) has no annotations at all.
CATEGORIES = [
    {"id": 3, "name": "cat"},
    {"id": 7, "name": "dog"},
    {"id": 12, "name": "bird"},
    {"id": 15, "name": "fish"},
]
CATEGORY_IDS = [c["id"] for c in CATEGORIES]

# pycocotools computes precision as tp / (tp + fp + eps) with eps = np.spacing(1), so a
# category whose only detection is a true positive scores 1 - 2e-16, not 1.0. The tolerance
# is far below the smallest real change (one recall point of one class is 1/101/K).
PERFECT = pytest.approx(1.0, abs=1e-12)


def handmade_dataset(first_ann_id: int = 1) -> dict[str, Any]:
    """Two images, small/medium/large boxes, one crowd box; no `area` field (evaluator fills it)."""
    boxes = [  # (image_id, category_id, bbox_xywh, iscrowd)
        (1, 3, [10.0, 10.0, 20.0, 20.0], 0),  # small: 400 px^2
        (1, 7, [50.0, 40.0, 60.0, 50.0], 0),  # medium: 3000
        (1, 12, [30.0, 100.0, 150.0, 90.0], 0),  # large: 13500
        (2, 3, [0.0, 0.0, 120.0, 110.0], 0),
        (2, 3, [150.0, 150.0, 25.0, 30.0], 0),
        (2, 7, [200.0, 20.0, 70.0, 70.0], 0),
        (2, 7, [10.0, 180.0, 100.0, 100.0], 1),  # crowd: an ignore region
    ]
    return {
        "images": [
            {"id": 1, "width": 200, "height": 200, "file_name": "1.jpg"},
            {"id": 2, "width": 300, "height": 300, "file_name": "2.jpg"},
        ],
        "categories": copy.deepcopy(CATEGORIES),
        "annotations": [
            {"id": first_ann_id + i, "image_id": img, "category_id": cat, "bbox": bbox, "iscrowd": crowd}
            for i, (img, cat, bbox, crowd) in enumerate(boxes)
        ],
    }


def ground_truth_as_detections(dataset: dict[str, Any]) -> dict[int, Detections]:
    """Non-crowd ground truth of each image as contiguous-label detections with score 1."""
    per_image: dict[int, Detections] = {}
    for image in dataset["images"]:
        anns = [a for a in dataset["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        boxes_xyxy = torch.tensor(
            [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32
        ).reshape(-1, 4)
        labels = torch.tensor([CATEGORY_IDS.index(a["category_id"]) for a in anns], dtype=torch.long)
        per_image[image["id"]] = Detections(boxes_xyxy, torch.ones(len(anns)), labels)
    return per_image


def evaluate_records(dataset: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    evaluator = CocoEvaluator(make_coco(dataset))
    evaluator.update(records)
    return evaluator.compute()


def test_ground_truth_as_predictions_is_perfect_with_gapped_ids_and_crowd() -> None:
    dataset = handmade_dataset()
    records = []
    for image_id, det in ground_truth_as_detections(dataset).items():
        records += detections_to_coco(image_id, det, CATEGORY_IDS)
    # A detection on the crowd region must be ignored, not counted as a false positive.
    records.append({"image_id": 2, "category_id": 7, "bbox": [10.0, 180.0, 100.0, 100.0], "score": 0.5})

    evaluator = CocoEvaluator(make_coco(dataset))
    evaluator.update(records)
    metrics = evaluator.compute()

    for name in STAT_NAMES:
        if name != "AR1":
            assert metrics[name] == PERFECT, (name, metrics[name])
    # AR1 keeps one detection per image and category: "cat" recalls 2 of its 3 boxes
    # (image 2 has two), "dog" and "bird" all of theirs -> (2/3 + 1 + 1) / 3 = 8/9.
    assert metrics["AR1"] == pytest.approx(8 / 9, abs=1e-9)
    assert metrics["per_class"]["cat"] == {"id": 3, "AP": PERFECT, "AP50": PERFECT}
    assert metrics["per_class"]["dog"]["AP"] == PERFECT
    assert metrics["per_class"]["fish"] == {"id": 15, "AP": None, "AP50": None}
    assert "Average Precision" in evaluator.summary_text
    assert evaluator.last_precision is not None and evaluator.last_precision.shape == (10, 101, 4, 4, 3)
    recall, precision = evaluator.pr_curve(iou=0.5)
    assert recall.shape == precision.shape == (101,)
    np.testing.assert_allclose(precision, np.ones(101), rtol=0, atol=1e-12)
    assert np.isnan(evaluator.pr_curve(category_id=15)[1]).all()


def test_ground_truth_as_predictions_on_tiny_coco() -> None:
    ann_file = TINY_COCO / "annotations" / "instances_val2017.json"
    if not ann_file.is_file():
        pytest.skip(f"tiny_coco annotations not found at {ann_file}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(ann_file))
    records = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in coco_gt.dataset["annotations"]
        if not a["iscrowd"]
    ]
    evaluator = CocoEvaluator(coco_gt)
    evaluator.update(records)
    metrics = evaluator.compute()
    assert metrics["AP"] == PERFECT
    assert metrics["AP50"] == PERFECT
    used = {a["category_id"] for a in coco_gt.dataset["annotations"] if not a["iscrowd"]}
    for entry in metrics["per_class"].values():
        assert (entry["AP"] == PERFECT) if entry["id"] in used else (entry["AP"] is None)


def one_image_two_gt() -> dict[str, Any]:
    return {
        "images": [{"id": 5, "width": 400, "height": 400}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 1, "bbox": [10.0, 10.0, 100.0, 100.0], "area": 1e4, "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 1, "bbox": [200.0, 200.0, 100.0, 100.0], "area": 1e4, "iscrowd": 0},
        ],
    }


@pytest.mark.parametrize(
    ("tp_score", "fp_score", "expected"),
    [
        # Ranked TP, FP: recall [.5, .5], precision [1, .5]; the interpolated envelope is
        # [1, .5]. COCO samples it at recall 0, .01, ..., 1: the 51 points r <= .5 get 1.0,
        # the 50 points r > .5 are beyond the reached recall and get 0. AP = 51 / 101.
        (0.9, 0.8, 51 / 101),
        # Ranked FP, TP: recall [0, .5], precision [0, .5]; envelope [.5, .5], so the 51
        # points r <= .5 get 0.5 and the rest 0. AP = 25.5 / 101.
        (0.8, 0.9, 25.5 / 101),
    ],
)
def test_exact_ap_with_one_miss_and_one_false_positive(tp_score: float, fp_score: float, expected: float) -> None:
    records = [
        {"image_id": 5, "category_id": 1, "bbox": [10.0, 10.0, 100.0, 100.0], "score": tp_score},
        {"image_id": 5, "category_id": 1, "bbox": [320.0, 20.0, 50.0, 50.0], "score": fp_score},  # IoU 0 with both
    ]
    evaluator = CocoEvaluator(make_coco(one_image_two_gt()))
    evaluator.update(records)
    metrics = evaluator.compute()
    # The matched box has IoU 1, so every IoU threshold gives the same AP.
    assert metrics["AP50"] == pytest.approx(expected, abs=1e-6)
    assert metrics["AP75"] == pytest.approx(expected, abs=1e-6)
    assert metrics["AP"] == pytest.approx(expected, abs=1e-6)
    assert metrics["AR100"] == pytest.approx(0.5, abs=1e-6)
    _, precision = evaluator.pr_curve(iou=0.5)
    top = 1.0 if tp_score > fp_score else 0.5
    np.testing.assert_allclose(precision, [top] * 51 + [0.0] * 50)


def test_shifted_box_matches_at_iou_50_but_not_75() -> None:
    # Shifting a 100x100 box by 31 px: IoU = 69*100 / (2*100*100 - 69*100) = 69/131 = 0.527.
    dataset = one_image_two_gt()
    dataset["annotations"] = dataset["annotations"][:1]
    records = [{"image_id": 5, "category_id": 1, "bbox": [41.0, 10.0, 100.0, 100.0], "score": 0.7}]
    metrics = evaluate_records(dataset, records)
    assert metrics["AP50"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["AP75"] == pytest.approx(0.0, abs=1e-6)
    # Matched only at the IoU threshold 0.50, one of ten: AP@[.5:.95] = 1/10.
    assert metrics["AP"] == pytest.approx(0.1, abs=1e-6)


def test_labels_not_mapped_back_to_category_ids_score_zero() -> None:
    dataset = handmade_dataset()
    detections = ground_truth_as_detections(dataset)
    contiguous_as_ids = [i for i in range(len(CATEGORY_IDS))]  # the bug: labels 0..K-1 used as ids
    wrong = [r for image_id, det in detections.items() for r in detections_to_coco(image_id, det, contiguous_as_ids)]
    right = [r for image_id, det in detections.items() for r in detections_to_coco(image_id, det, CATEGORY_IDS)]
    assert evaluate_records(dataset, wrong)["AP"] == 0.0
    assert evaluate_records(dataset, right)["AP"] == PERFECT


def test_annotation_id_zero_is_renumbered_in_a_copy() -> None:
    dataset = handmade_dataset(first_ann_id=0)
    coco_gt = make_coco(dataset)
    records = []
    for image_id, det in ground_truth_as_detections(dataset).items():
        records += detections_to_coco(image_id, det, CATEGORY_IDS)
    evaluator = CocoEvaluator(coco_gt)
    evaluator.update(records)
    metrics = evaluator.compute()
    assert metrics["AP"] == PERFECT
    assert metrics["AP50"] == PERFECT
    assert coco_gt.dataset["annotations"][0]["id"] == 0
    assert "area" not in coco_gt.dataset["annotations"][0]


@pytest.mark.parametrize("call_update", [False, True])
def test_empty_results_give_zeros(call_update: bool) -> None:
    evaluator = CocoEvaluator(make_coco(handmade_dataset()))
    if call_update:
        evaluator.update([])
    metrics = evaluator.compute()
    for name in STAT_NAMES:
        assert metrics[name] == 0.0, name
    assert metrics["per_class"]["cat"]["AP"] == 0.0
    assert metrics["per_class"]["fish"]["AP"] is None
    _, precision = evaluator.pr_curve()
    np.testing.assert_array_equal(precision, np.zeros(101))


def test_reset_and_restriction_to_updated_images() -> None:
    dataset = handmade_dataset()
    det = ground_truth_as_detections(dataset)[1]
    evaluator = CocoEvaluator(make_coco(dataset))
    evaluator.update(detections_to_coco(1, det, CATEGORY_IDS))
    assert evaluator.compute()["AP"] < 1.0  # image 2 counts as all misses
    evaluator.reset()
    evaluator.update(detections_to_coco(1, det, CATEGORY_IDS), image_ids=[1])
    assert evaluator.compute()["AP"] == PERFECT
    with pytest.raises(ValueError, match="image ids"):
        evaluator.update([{"image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}])


def test_detections_to_coco_converts_boxes_and_maps_labels() -> None:
    det = Detections(
        boxes_xyxy=torch.tensor([[10.0, 20.0, 30.0, 60.0], [1.234, 2.0, 5.6789, 4.5]]),
        scores=torch.tensor([0.25, 0.987654]),
        labels=torch.tensor([1, 2]),
    )
    records = detections_to_coco(42, det, [3, 7, 12])
    assert records[0] == {"image_id": 42, "category_id": 7, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.25}
    assert records[1]["category_id"] == 12
    assert records[1]["bbox"] == pytest.approx([1.23, 2.0, 4.44, 2.5], abs=1e-9)
    assert records[1]["score"] == 0.98765
    assert all(type(v) is float for r in records for v in r["bbox"] + [r["score"]])
    assert all(type(r["category_id"]) is int and type(r["image_id"]) is int for r in records)

    lookup = torch.tensor([3, 7, 12])
    assert detections_to_coco(42, det, lambda labels: lookup[labels]) == records
    top = detections_to_coco(42, det, [3, 7, 12], max_dets=1)
    assert [r["category_id"] for r in top] == [12]
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert detections_to_coco(1, empty, [3]) == []


def test_format_metrics_table_lists_stats_and_classes() -> None:
    metrics = {name: 0.5 for name in STAT_NAMES}
    metrics["APs"] = math.nan
    metrics["per_class"] = {"cat": {"id": 3, "AP": 0.25, "AP50": 0.5}, "fish": {"id": 15, "AP": None, "AP50": None}}
    table = format_metrics_table(metrics)
    assert "AR100" in table and " 50.0" in table
    assert "cat" in table and " 25.0" in table
    fish_line = next(line for line in table.splitlines() if line.startswith("fish"))
    assert fish_line.split()[-2:] == ["-", "-"]

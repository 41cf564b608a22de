"""RunLogger output (metrics.jsonl and TensorBoard events), file logging and box drawing."""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from retinanet.evaluation.evaluator import STAT_NAMES, ClassMatches
from retinanet.engine.logger import RunLogger, setup_file_logging
from retinanet.evaluation.operating_point import class_scalars
from retinanet.evaluation.visualize import GREEN, RED, draw_comparison, draw_detections
from tests.helpers import REPO


def eval_metrics() -> dict:
    metrics: dict = {name: 0.1 * i for i, name in enumerate(STAT_NAMES)}
    metrics["APs"] = math.nan  # no small objects
    metrics["per_class"] = {"cat": {"id": 3, "AP": 0.5, "AP50": 0.7}, "fish": {"id": 15, "AP": None, "AP50": None}}
    return metrics


def test_run_logger_writes_jsonl_and_tensorboard(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path)
    logger.log_scalars(10, {"loss": 1.5, "lr": 0.01}, kind="train")
    logger.log_scalars(20, {"loss": 1.25, "lr": 0.01}, kind="train")
    logger.log_eval(20, eval_metrics())
    recall = np.linspace(0.0, 1.0, 101)
    logger.log_pr_curve(20, "pr/iou50", recall, 1.0 - recall)
    logger.log_images(20, "val_images", [np.zeros((32, 48, 3), np.uint8), np.full((40, 40, 3), 255, np.uint8)])
    logger.log_hparams({"lr": 0.01, "model": {"depth": 50, "sizes": [32, 64]}}, {"eval/AP": 0.3})
    logger.close()
    logger.close()

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(line["kind"], line["step"]) for line in lines] == [
        ("train", 10), ("train", 20), ("eval", 20), ("pr_curve", 20), ("images", 20), ("hparams", None)
    ]
    assert lines[0]["loss"] == 1.5 and lines[1]["loss"] == 1.25
    assert lines[2]["AP"] == 0.0 and lines[2]["APs"] is None
    assert lines[2]["per_class"] == {"cat": 0.5, "fish": None}
    assert len(lines[3]["precision"]) == 101
    assert lines[5]["hparams"]["model.depth"] == 50

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    scalar_tags = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/lr", "eval_per_class/cat"} | {f"eval/{n}" for n in STAT_NAMES if n != "APs"}
    assert expected <= scalar_tags
    assert "eval/APs" not in scalar_tags and "eval_per_class/fish" not in scalar_tags
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(10, 1.5), (20, 1.25)]
    assert events.Scalars("eval_per_class/cat")[0].value == 0.5
    assert {"pr/iou50", "val_images/0", "val_images/1"} <= set(events.Tags()["images"])
    assert events.Images("val_images/1")[0].width == 40


def test_disabled_logger_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "rank1"
    logger = RunLogger(out, enabled=False)
    logger.log_scalars(1, {"loss": 1.0})
    logger.log_eval(1, eval_metrics())
    logger.log_images(1, "x", [np.zeros((4, 4, 3), np.uint8)])
    logger.log_hparams({"lr": 0.1}, {"AP": 0.0})
    logger.close()
    assert not out.exists()


def test_setup_file_logging_writes_to_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "train.log"
    setup_file_logging(path)
    setup_file_logging(path)
    logger = logging.getLogger("retinanet")
    try:
        logging.getLogger("retinanet.engine").info("epoch %d done", 3)
        for handler in logger.handlers:
            handler.flush()
        lines = path.read_text().splitlines()
        assert len(lines) == 1 and lines[0].endswith("INFO epoch 3 done")
    finally:
        for handler in [h for h in logger.handlers if getattr(h, "baseFilename", None) == str(path.resolve())]:
            logger.removeHandler(handler)
            handler.close()


def test_draw_comparison_colors_gt_green_and_predictions_red() -> None:
    image = np.zeros((100, 120, 3), np.uint8)
    out = draw_comparison(
        image,
        pred_boxes_xyxy=np.array([[60.0, 50.0, 110.0, 90.0]]),
        pred_labels=["dog"],
        pred_scores=[0.87],
        gt_boxes_xyxy=np.array([[5.0, 40.0, 40.0, 80.0]]),
        gt_labels=["cat"],
    )
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not image.any()  # input untouched
    assert tuple(out[60, 5]) == GREEN  # left edge of the GT box
    assert tuple(out[70, 110]) == RED  # right edge of the prediction
    faint = draw_detections(image, [[60.0, 50.0, 110.0, 90.0]], ["dog"], [0.2], min_score=0.5)
    assert not faint.any()


def documented_tags() -> set[str]:
    """The scalar tags docs/run_folder.md lists under "TensorBoard tags" (`<name>` kept as written)."""
    section = (REPO / "docs" / "run_folder.md").read_text().split("## TensorBoard tags", 1)[1].split("\n## ", 1)[0]
    return {tag for tag in re.findall(r"`((?:train|eval|eval_per_class|eval_classes)/[^`]+)`", section)}


def test_tensorboard_tags_are_the_documented_ones_and_absent_only_where_undefined(tmp_path: Path) -> None:
    """What a training evaluation logs on a set without small boxes, where the rarest training class has no
    val boxes and one class is not detected at the first evaluation: every tag is documented, the absent ones
    are those docs/run_folder.md says, and precision and recall have the same points."""
    metrics = eval_metrics()
    metrics["ARs"] = math.nan  # no small boxes: APs (eval_metrics) and ARs undefined
    metrics["per_class"]["dog"] = {"id": 7, "AP": 0.0, "AP50": 0.0}
    metrics.update(loss=1.0, loss_cls=0.6, loss_box=0.4)  # training's evaluations compute the val loss
    train_boxes = {3: 40, 7: 9, 15: 1}  # fish, the rarest in training, has no val boxes
    logger = RunLogger(tmp_path)
    for step, dog_scores in ((10, []), (20, [0.6])):  # dog: no detection, then a false positive
        matches = {3: ClassMatches(np.array([0.9, 0.4]), np.array([True, False]), 2),
                   7: ClassMatches(np.array(dog_scores), np.zeros(len(dog_scores), bool), 3),
                   15: ClassMatches(np.zeros(0), np.zeros(0, bool), 0)}
        logger.log_eval(step, metrics)
        logger.log_scalars(step, class_scalars(matches, metrics, train_boxes), prefix="eval_classes", kind="eval_classes")
    logger.close()

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    written = set(events.Tags()["scalars"])
    names = {"cat", "dog", "fish"}
    documented = {tag.replace("<name>", name) for tag in documented_tags() for name in names}
    assert written <= documented, f"logged but not in docs/run_folder.md: {sorted(written - documented)}"
    images = {"eval/pr_curve_iou50", "eval/confusion_matrix/0", "eval/f1_curve/0"}
    eval_tags = {t for t in documented if t.startswith("eval") and t not in images and "<i>" not in t}
    # Absent, as the docs say: the small-box numbers, and fish (no val boxes) everywhere.
    assert eval_tags - written == {"eval/APs", "eval/ARs", "eval_per_class/fish", "eval_classes/recall/fish",
                                   "eval_classes/precision/fish"}
    for name in ("cat", "dog"):
        assert [e.step for e in events.Scalars(f"eval_classes/precision/{name}")] == [10, 20]
        assert [e.step for e in events.Scalars(f"eval_classes/recall/{name}")] == [10, 20]
    assert [e.value for e in events.Scalars("eval_classes/precision/dog")] == [0.0, 0.0]
    assert [e.value for e in events.Scalars("eval_classes/rare_AP50")] == [0.0, 0.0]  # dog: rarest with val boxes

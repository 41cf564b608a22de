"""The evaluation report: confusion matrix, TIDE error types, curves, worst images, report.html.

Every expected number below is worked out by hand in the comments next to it.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from retinanet.evaluation import confusion, curves, error_types, worst_images
from retinanet.evaluation.evaluator import ClassMatches, CocoEvaluator
from retinanet.evaluation.per_image import group_by_image
from retinanet.evaluation.report import Thresholds, fixed_thresholds, training_figures, write_report
from retinanet.evaluation.training_summary import plot_training_summary, series
from tests.helpers import make_coco


def coco_of(anns: list[tuple], categories: list[tuple[int, str]], num_images: int = 1):
    """anns: (image_id, category_id, [x, y, w, h], iscrowd) -> a pycocotools COCO of 200x200 images."""
    return make_coco({
        "images": [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.png"} for i in range(1, num_images + 1)],
        "categories": [{"id": c, "name": n} for c, n in categories],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd}
            for k, (i, c, b, crowd) in enumerate(anns)
        ],
    })


def det(image_id: int, category_id: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


# ----------------------------------------------------------------------------- confusion matrix

CAT, DOG = 1, 3
TWO_CLASSES = [(CAT, "cat"), (DOG, "dog")]
CONFUSION_GT = [
    (1, CAT, [0, 0, 10, 10], 0),  # A: found by d1
    (1, DOG, [20, 20, 10, 10], 0),  # B: taken by a cat detection (d3)
    (1, CAT, [40, 40, 10, 10], 0),  # C: its only detection is below the threshold: missed
    (1, CAT, [60, 0, 30, 30], 1),  # a crowd region
]
CONFUSION_DETS = [
    det(1, CAT, [0, 0, 10, 10], 0.9),  # d1: correct
    det(1, CAT, [1, 0, 10, 10], 0.8),  # d2: a duplicate of d1 (IoU 90/110): background row
    det(1, CAT, [20, 20, 10, 10], 0.7),  # d3: a cat on the dog: confusion
    det(1, CAT, [65, 5, 10, 10], 0.6),  # d4: inside the cat crowd box: ignored, as COCO does
    det(1, DOG, [100, 100, 10, 10], 0.95),  # d5: on nothing: background row
    det(1, CAT, [40, 40, 10, 10], 0.3),  # d6: below the 0.5 threshold
]


def test_confusion_matrix_two_classes_crowd_and_duplicate() -> None:
    images = group_by_image(coco_of(CONFUSION_GT, TWO_CLASSES), CONFUSION_DETS)
    matrix = confusion.confusion_matrix(images, [CAT, DOG], ["cat", "dog"], {CAT: 0.5, DOG: 0.5})
    assert matrix.classes == ["cat", "dog", "background"]
    assert matrix.counts.tolist() == [
        [1, 0, 1],  # cat: A found, C missed (2 non-crowd cat boxes)
        [1, 0, 0],  # dog: B detected as a cat
        [1, 1, 0],  # background: d2 (duplicate cat), d5 (dog on nothing)
    ]
    # Per-class thresholds: a dog threshold above d5's score drops d5 only.
    matrix = confusion.confusion_matrix(images, [CAT, DOG], ["cat", "dog"], {CAT: 0.5, DOG: 0.96})
    assert matrix.counts[2].tolist() == [1, 0, 0]
    # Lowering the cat threshold to 0.3 lets d6 find C.
    matrix = confusion.confusion_matrix(images, [CAT, DOG], ["cat", "dog"], {CAT: 0.3, DOG: 0.5})
    assert matrix.counts[0].tolist() == [2, 0, 0]


def test_confusion_matrix_one_class_and_file(tmp_path: Path) -> None:
    gt = [(1, 5, [0, 0, 10, 10], 0), (1, 5, [50, 50, 20, 20], 0), (2, 5, [0, 0, 40, 40], 0)]
    dets = [det(1, 5, [0, 0, 10, 10], 0.9), det(2, 5, [100, 100, 30, 30], 0.8), det(2, 5, [0, 0, 10, 40], 0.7)]
    images = group_by_image(coco_of(gt, [(5, "ring")], num_images=2), dets)
    matrix = confusion.confusion_matrix(images, [5], ["ring"], {5: 0.5})
    # Image 1: one found, one missed. Image 2: a false positive, and a box of IoU 400/1600 < 0.5: both
    # detections are background, the ground truth is missed.
    assert matrix.counts.tolist() == [[1, 2], [2, 0]]
    np.testing.assert_allclose(matrix.row_normalized(), [[1 / 3, 2 / 3], [1.0, 0.0]])
    confusion.save_confusion(matrix, tmp_path)
    assert json.loads((tmp_path / "confusion_matrix.json").read_text()) == {
        "classes": ["ring", "background"], "counts": [[1, 2], [2, 0]],
    }
    assert confusion.load_confusion(tmp_path / "confusion_matrix.json").counts.tolist() == [[1, 2], [2, 0]]
    image = confusion.confusion_figure(matrix)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0


# ----------------------------------------------------------------------------- TIDE error types

# Template: G1 [0,0,10,10] and G2 [20,0,10,10] of class 1, found by T1 (0.9) and T2 (0.8); the error
# detection E scores 0.85, between them. As a false positive: points T F T over 2 boxes, precision
# 1, 1/2, 2/3 -> envelope 1, 2/3, 2/3 at recall 1/2, 1/2, 1: AP = (51 * 1 + 50 * 2/3) / 101.
AP_TFT = (51 + 50 * 2 / 3) / 101
TEMPLATE_GT = [(1, 1, [0, 0, 10, 10], 0), (1, 1, [20, 0, 10, 10], 0)]
TEMPLATE_DETS = [det(1, 1, [0, 0, 10, 10], 0.9), det(1, 1, [20, 0, 10, 10], 0.8)]


def tide(gt: list[tuple], dets: list[dict], categories=((1, "a"), (2, "b"))):
    images = group_by_image(coco_of(gt, list(categories)), dets)
    results = [error_types.classify_image(image) for image in images]
    return results, error_types.error_costs(images, results), error_types.mean_ap(images, results)


def only(costs: dict[str, float], name: str, value: float) -> None:
    assert costs[name] == pytest.approx(value, abs=1e-9)
    assert all(v == 0.0 for k, v in costs.items() if k != name), costs


def test_error_type_duplicate_alone() -> None:
    # E overlaps G1 (IoU 90/110) after T1 took it: a duplicate; removing it gives AP 1.
    results, costs, ap = tide(TEMPLATE_GT, TEMPLATE_DETS + [det(1, 1, [1, 0, 10, 10], 0.85)])
    assert results[0].outcomes == ["true_positive", "duplicate", "true_positive"]
    assert ap == pytest.approx(AP_TFT)
    only(costs, "duplicate", 100 * (1 - AP_TFT))  # 16.50


def test_error_type_background_alone() -> None:
    results, costs, _ = tide(TEMPLATE_GT, TEMPLATE_DETS + [det(1, 1, [50, 50, 10, 10], 0.85)])
    assert results[0].outcomes == ["true_positive", "background", "true_positive"]
    only(costs, "background", 100 * (1 - AP_TFT))


def test_error_type_localization_alone() -> None:
    # A third box G3 whose only detection has IoU 50/150 = 1/3: localization, and fixing it finds G3.
    # Base: T F T over 3 boxes: precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3 -> (34 + 33 * 2/3) / 101 = 56/101.
    gt = TEMPLATE_GT + [(1, 1, [40, 0, 10, 10], 0)]
    results, costs, ap = tide(gt, TEMPLATE_DETS + [det(1, 1, [45, 0, 10, 10], 0.85)])
    assert results[0].outcomes == ["true_positive", "localization", "true_positive"]
    assert results[0].missed == []  # G3 is reachable through the fix, so it is not "missed"
    assert ap == pytest.approx(56 / 101)
    only(costs, "localization", 100 * (1 - 56 / 101))  # 44.55


def test_error_type_classification_alone() -> None:
    # G3 is class 2 and E, a class-1 box exactly on it, is a classification error. Base: class 1 is
    # T F T (AP_TFT), class 2 has one box and no detection (AP 0). Fixed: both classes AP 1.
    gt = TEMPLATE_GT + [(1, 2, [40, 0, 10, 10], 0)]
    results, costs, ap = tide(gt, TEMPLATE_DETS + [det(1, 1, [40, 0, 10, 10], 0.85)])
    assert results[0].outcomes == ["true_positive", "classification", "true_positive"]
    assert ap == pytest.approx(AP_TFT / 2)
    only(costs, "classification", 100 * (1 - AP_TFT / 2))  # 58.25


def test_error_type_both_alone() -> None:
    # E is class 2 with IoU 1/3 with G2 (class 1): wrong class and poorly placed. Class 1 is T T (AP 1);
    # class 2 holds only the false positive, with no box (AP 0): mean 1/2. Removing E leaves class 1 alone.
    results, costs, ap = tide(TEMPLATE_GT, TEMPLATE_DETS + [det(1, 2, [25, 0, 10, 10], 0.85)])
    assert results[0].outcomes == ["true_positive", "both", "true_positive"]
    assert ap == pytest.approx(0.5)
    only(costs, "both", 50.0)


def test_error_type_missed_alone() -> None:
    # Only T1: G2 is missed. AP = 51/101 (recall 1/2 at precision 1); without G2 in the count, 1.
    results, costs, ap = tide(TEMPLATE_GT, TEMPLATE_DETS[:1])
    assert results[0].missed == [1]
    assert ap == pytest.approx(51 / 101)
    only(costs, "missed", 100 * (1 - 51 / 101))


def test_error_types_crowd_and_file(tmp_path: Path) -> None:
    gt = TEMPLATE_GT + [(1, 1, [100, 100, 50, 50], 1)]
    results, costs, _ = tide(gt, TEMPLATE_DETS + [det(1, 1, [110, 110, 10, 10], 0.95)])
    assert results[0].outcomes == ["ignored", "true_positive", "true_positive"]  # in the crowd box: not an error
    assert costs == {name: 0.0 for name in error_types.ERROR_TYPES}
    error_types.save_errors({**costs, "missed": 12.5}, tmp_path)
    raw = json.loads((tmp_path / "errors.json").read_text())
    assert list(raw) == list(error_types.ERROR_TYPES) and raw["missed"] == 12.5
    assert error_types.load_errors(tmp_path / "errors.json")["missed"] == 12.5


def test_average_precision_is_coco_ap50() -> None:
    """TIDE's AP on a hand-made set equals pycocotools' AP50 for the same set."""
    gt = TEMPLATE_GT + [(1, 1, [40, 0, 10, 10], 0)]
    dets = TEMPLATE_DETS + [det(1, 1, [45, 0, 10, 10], 0.85)]
    evaluator = CocoEvaluator(coco_of(gt, [(1, "a")]))
    evaluator.update(dets)
    metrics = evaluator.compute()
    _, _, ap = tide(gt, dets, categories=((1, "a"),))
    assert ap == pytest.approx(metrics["AP50"])


# ----------------------------------------------------------------------------- curves

# Scores 0.9 0.8 0.7 0.6 with TP F T F over 4 boxes. Keeping score >= t:
#   t in (0.8, 0.9]: 1 kept, 1 TP: P 1,   R 1/4, F1 2/5
#   t in (0.7, 0.8]: 2 kept, 1 TP: P 1/2, R 1/4, F1 2/6
#   t in (0.6, 0.7]: 3 kept, 2 TP: P 2/3, R 1/2, F1 4/7  <- max, at 0.7
#   t <= 0.6:        4 kept, 2 TP: P 1/2, R 1/2, F1 4/8
MATCHES = ClassMatches(np.array([0.6, 0.9, 0.7, 0.8]), np.array([False, True, True, False]), 4)


def test_threshold_curves_and_max_f1() -> None:
    c = curves.threshold_curves(MATCHES)
    at = {round(t, 2): i for i, t in enumerate(c["threshold"])}
    assert c["f1"][at[0.85]] == pytest.approx(2 / 5) and c["precision"][at[0.85]] == 1.0
    assert c["f1"][at[0.75]] == pytest.approx(2 / 6)
    assert c["f1"][at[0.7]] == pytest.approx(4 / 7) and c["precision"][at[0.7]] == pytest.approx(2 / 3)
    assert c["f1"][at[0.65]] == pytest.approx(4 / 7) and c["recall"][at[0.65]] == 0.5
    assert c["f1"][at[0.5]] == pytest.approx(4 / 8)
    assert c["f1"][at[0.95]] == 0.0 and np.isnan(c["precision"][at[0.95]])  # nothing kept: precision undefined
    assert max(c["f1"]) == pytest.approx(4 / 7)
    data = curves.curves_data({7: MATCHES}, {7: "ring"})
    best = data["pooled"]["max_f1"]
    assert (best["threshold"], best["f1"], best["precision"], best["recall"]) == pytest.approx((0.7, 4 / 7, 2 / 3, 0.5))
    # Interpolated precision: 1 up to recall 1/4 (26 points), 2/3 up to 1/2 (25 points), then 0.
    assert data["per_class"]["ring"]["ap50"] == pytest.approx((26 + 25 * 2 / 3) / 101)


def test_curves_agree_with_coco_and_pool_classes(tmp_path: Path) -> None:
    gt = TEMPLATE_GT + [(1, 2, [40, 0, 10, 10], 0), (1, 2, [60, 0, 10, 10], 0)]
    dets = TEMPLATE_DETS + [det(1, 1, [45, 0, 10, 10], 0.85), det(1, 2, [40, 0, 10, 10], 0.7),
                            det(1, 2, [100, 100, 10, 10], 0.75)]
    evaluator = CocoEvaluator(coco_of(gt, [(1, "a"), (2, "b")]), keep_matches=True)
    evaluator.update(dets)
    evaluator.compute()
    matches = evaluator.matches(iou=0.5)
    for category_id in (1, 2):
        _, coco_precision = evaluator.pr_curve(iou=0.5, category_id=category_id)
        np.testing.assert_allclose(curves.pr_curve(matches[category_id]), coco_precision)
    pooled = curves.pooled(matches)
    assert pooled.num_gt == 4 and sorted(pooled.scores.tolist()) == [0.7, 0.75, 0.8, 0.85, 0.9]
    written = curves.save_curves(curves.curves_data(matches, {1: "a", 2: "b"}), tmp_path)
    assert [p.name for p in written] == ["curves.json", "pr_curves.png", "f1_curves.png"]
    assert curves.load_curves(tmp_path / "curves.json")["per_class"]["b"]["num_gt"] == 2
    image = curves.f1_figure(matches, {1: "a", 2: "b"})
    assert image.dtype == np.uint8 and image.shape[2] == 3


# ----------------------------------------------------------------------------- worst images


def summary(image_id: int, errors: int, ap50: float | None) -> worst_images.ImageSummary:
    return worst_images.ImageSummary(image_id, f"{image_id}.png", {"background": errors}, errors, ap50)


def test_worst_image_order() -> None:
    ranked = worst_images.rank_worst([
        summary(1, 2, 0.5), summary(5, 2, 0.2), summary(3, 3, 0.9), summary(4, 0, None), summary(6, 2, None),
        summary(2, 2, 0.2),
    ])
    # Most errors first; then lowest AP50 (none last); then image id.
    assert [s.image_id for s in ranked] == [3, 2, 5, 1, 6, 4]


def test_image_summaries_count_at_the_threshold() -> None:
    gt = TEMPLATE_GT + [(2, 1, [0, 0, 10, 10], 0)]
    dets = TEMPLATE_DETS + [det(1, 1, [50, 50, 10, 10], 0.85), det(1, 1, [80, 80, 10, 10], 0.2),
                            det(2, 1, [0, 0, 10, 10], 0.6)]
    images = group_by_image(coco_of(gt, [(1, "a")], num_images=2), dets)
    errors_all = [error_types.classify_image(i) for i in images]
    kept = [error_types.classify_image(i.keep_detections(i.det_scores >= 0.5)) for i in images]
    summaries = worst_images.summarize_images(images, errors_all, kept, {1: "1.png", 2: "2.png"})
    # Image 1 at 0.5: two true positives and one background error (the 0.2 one is below the threshold);
    # its AP50 over all detections: T F T F over 2 boxes = AP_TFT. Image 2: one true positive, AP 1.
    assert summaries[0].counts == {"true_positive": 2, "classification": 0, "localization": 0, "both": 0,
                                   "duplicate": 0, "background": 1, "missed": 0}
    assert summaries[0].errors == 1 and summaries[0].ap50 == pytest.approx(AP_TFT)
    assert summaries[1].errors == 0 and summaries[1].ap50 == pytest.approx(1.0)
    assert [s.image_id for s in worst_images.rank_worst(summaries)] == [1, 2]


# ----------------------------------------------------------------------------- the whole report


def test_write_report(tmp_path: Path) -> None:
    from PIL import Image

    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for i in (1, 2):
        Image.fromarray(np.full((200, 200, 3), 90 * i, np.uint8)).save(images_dir / f"{i}.png")
    gt = CONFUSION_GT + [(2, DOG, [10, 10, 50, 50], 0)]
    dets = CONFUSION_DETS + [det(2, DOG, [10, 10, 50, 50], 0.9)]
    evaluator = CocoEvaluator(coco_of(gt, TWO_CLASSES, num_images=2), keep_matches=True)
    evaluator.update(dets)
    metrics = evaluator.compute()
    out = tmp_path / "out"
    written = write_report(out, evaluator, metrics, fixed_thresholds(0.5, [CAT, DOG]), images_dir, num_worst=1)
    names = {p.relative_to(out).as_posix() for p in written}
    assert {"report.html", "confusion_matrix.json", "errors.json", "curves.json", "worst_images.json",
            "worst_images/000_image1.jpg"} <= names
    matrix = json.loads((out / "confusion_matrix.json").read_text())
    assert matrix["counts"] == [[1, 0, 1], [1, 1, 0], [1, 1, 0]]
    rows = worst_images.load_worst_images(out / "worst_images.json")
    assert [r["image_id"] for r in rows] == [1, 2] and rows[1]["drawing"] is None
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # PR, F1, confusion, errors
    assert page.count("data:image/jpeg;base64,") == 1  # one worst image
    assert "Pooled max F1 " in page and "(precision " in page and " %, recall " in page  # percent, as the tables
    assert "--score-thresh 0.5" in page
    figures = training_figures(evaluator, Thresholds({CAT: 0.5, DOG: 0.5}, "test"))
    assert set(figures) == {"eval/confusion_matrix", "eval/f1_curve"}


def test_training_summary(tmp_path: Path) -> None:
    rows = [
        {"kind": "train", "step": s, "wall_time": 0.0, "loss": 2.0 / s, "loss_cls": 1.0 / s, "loss_box": 1.0 / s,
         "lr": 0.01}
        for s in (1, 2, 3, 4)
    ] + [
        {"kind": "eval", "step": 2, "AP": 0.1, "AP50": 0.2, "loss": 0.9, "loss_cls": 0.5, "loss_box": 0.4},
        {"kind": "eval", "step": 4, "AP": None, "AP50": 0.3},  # no val loss logged, AP undefined
        {"kind": "pr_curve", "step": 4, "tag": "x"},
    ]
    rows.insert(0, {"kind": "eval", "step": 1, "AP": 0.05, "AP50": float("nan"), "loss": 1.5})  # a resumed run's order
    assert series(rows, "eval", "AP") == ([1, 2], [0.05, 0.1])  # by step; the null AP at step 4 left out
    assert series(rows, "eval", "AP50") == ([2, 4], [0.2, 0.3])  # nan left out
    assert series(rows, "eval", "loss") == ([1, 2], [1.5, 0.9])
    assert series(rows, "train", "lr") == ([1, 2, 3, 4], [0.01] * 4)
    path = plot_training_summary(rows, tmp_path / "results.png")
    from PIL import Image

    with Image.open(path) as image:
        assert image.size == (1300, 360) and np.asarray(image.convert("L")).std() > 0


@pytest.mark.slow
def test_evaluate_writes_the_report(trained_run: Path, synthetic: Path, tmp_path: Path) -> None:
    import shutil

    from retinanet.cli import evaluate
    from tests.helpers import REPO, synthetic_overrides

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(trained_run / "operating_point.json", run / "operating_point.json")
    shutil.copy(trained_run / "checkpoints" / "best.pt", run / "checkpoints" / "best.pt")
    out = tmp_path / "eval"
    args = ["--config", str(REPO / "configs" / "demo_cpu.yaml"), "--checkpoint", str(run / "checkpoints" / "best.pt"),
            "--output-dir", str(out), "--worst", "2", "--set", *synthetic_overrides(synthetic)]
    assert evaluate.main(args) == 0
    for name in ("metrics.json", "report.html", "confusion_matrix.json", "confusion_matrix.png", "errors.json",
                 "errors.png", "curves.json", "pr_curves.png", "f1_curves.png", "worst_images.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "worst_images").glob("*.jpg"))) == 2
    gt = json.loads((synthetic / "annotations" / "instances_val.json").read_text())
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    matrix = json.loads((out / "confusion_matrix.json").read_text())
    assert matrix["classes"] == [c["name"] for c in categories] + ["background"]
    per_class = [sum(1 for a in gt["annotations"] if a["category_id"] == c["id"] and not a["iscrowd"]) for c in categories]
    assert [sum(row) for row in matrix["counts"][:-1]] == per_class
    assert set(json.loads((out / "errors.json").read_text())) == set(error_types.ERROR_TYPES)
    assert "operating_point.json (max F1, per class)" in (out / "report.html").read_text()


def test_worst_images_of_large_photos_are_shrunk_jpegs(tmp_path: Path) -> None:
    """A 2048x1371 photo is decoded at a reduced scale and drawn at a long side of 1024 with its boxes scaled
    by the same factor; small images are still enlarged; report.html embeds a thumbnail."""
    from PIL import Image

    Image.fromarray(np.full((1371, 2048, 3), 40, np.uint8)).save(tmp_path / "big.jpg", quality=95)
    pixels, scale = worst_images.read_image(tmp_path / "big.jpg", worst_images.MAX_DRAWN_SIDE)
    assert pixels.shape == (686, 1024, 3) and scale == 0.5  # 1371 / 2 rounds to 686
    assert worst_images.read_image(tmp_path / "big.jpg")[0].shape == (1371, 2048, 3)
    coco = coco_of([(1, CAT, [400, 300, 600, 400], 0)], [(CAT, "cat")])
    coco.imgs[1].update(width=2048, height=1371)
    image = group_by_image(coco, [])[0]
    drawn = worst_images.draw_outcomes(pixels, image, error_types.classify_image(image), {CAT: "cat"}, scale)
    assert drawn.shape == (686, 1024, 3)
    orange = np.array([int(error_types.OUTCOME_COLORS[error_types.MISSED][i:i + 2], 16) for i in (1, 3, 5)])
    # The missed box [400, 300, 1000, 700] lands at [200, 150, 500, 350]: its left edge at x 200, not at 400.
    assert np.abs(drawn[250, 200].astype(int) - orange).max() < 8 and np.abs(drawn[250, 400] - 40).max() < 8
    small, small_scale = worst_images.read_image(tmp_path / "big.jpg", 4096)
    assert small_scale == 1.0 and small.shape == (1371, 2048, 3)

    jpeg = worst_images.jpeg_bytes(drawn)
    thumbnail = worst_images.jpeg_bytes(drawn, worst_images.THUMBNAIL_SIDE)
    assert jpeg[:2] == b"\xff\xd8" and len(thumbnail) < len(jpeg)
    with Image.open(io.BytesIO(thumbnail)) as im:
        assert im.size == (640, 429)


def test_pr_legend_is_off_the_curves() -> None:
    """The legend sits right of the axes (it used to cover the low-precision curves at the lower left)."""
    matches = {c: ClassMatches(np.array([0.9, 0.5]), np.array([True, False]), 2) for c in range(1, 6)}
    figure = curves._pr_figure(curves.curves_data(matches, {c: f"class {c}" for c in range(1, 6)}))
    figure.canvas.draw()
    axes = figure.axes[0]
    legend = axes.get_legend().get_window_extent()
    assert len(axes.get_legend().get_texts()) == 6  # five classes and the pooled curve
    assert legend.x0 > axes.get_window_extent().x1  # entirely right of the plot
    assert legend.x1 <= figure.bbox.x1  # and inside the figure

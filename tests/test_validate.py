"""Dataset validation (data/validate.py), its use in CocoDetection and build_dataset, and scripts/check_dataset.py.

Every case builds a tiny COCO json and its images in tmp_path, then breaks one thing.
"""
from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from retinanet.data.coco import CocoDetection
from retinanet.data.loaders import DatasetError as LoadersDatasetError
from retinanet.data.loaders import build_dataset
from retinanet.data.validate import FIX_HINT, PROBLEMS, DatasetError, load_coco_json, validate_coco
from retinanet.config import ConfigError, load_config
from retinanet.evaluation.evaluator import CocoEvaluator, detections_to_coco
from retinanet.structures import Detections
from retinanet.cli import check_dataset as check_dataset_cli
from tests.helpers import REPO, SHARED_TINY_COCO

CLEAN: dict[str, Any] = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.png", "width": 20, "height": 20},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "iscrowd": 0, "area": 80},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 10, 10, 10], "iscrowd": 0, "area": 100},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0, "area": 25},
    ],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
}


def write_set(root: Path, dataset: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write the json and one noise image per well-formed image record, sized as the record says."""
    dataset = copy.deepcopy(CLEAN if dataset is None else dataset)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for img in dataset.get("images", []):
        w, h = img.get("width"), img.get("height")
        if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img_dir / img["file_name"])
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps(dataset))
    return img_dir, ann_file


def broken(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    dataset = copy.deepcopy(CLEAN)
    change(dataset)
    return dataset


def first_line(message: str) -> str:
    return message.splitlines()[0]


def write_jpeg(path: Path, size_wh: tuple[int, int], orientation: int = 1) -> bytes:
    rng = np.random.default_rng(1)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    Image.fromarray(rng.integers(0, 255, (size_wh[1], size_wh[0], 3), dtype=np.uint8)).save(path, exif=exif)
    return path.read_bytes()


# ----------------------------------------------------------------------------- fatal: the file itself


def test_dataset_error_moved_and_reexported_from_loaders() -> None:
    assert LoadersDatasetError is DatasetError


@pytest.mark.parametrize("on_invalid", ["error", "skip"])
def test_missing_annotation_file_is_fatal(tmp_path: Path, on_invalid: str) -> None:
    with pytest.raises(DatasetError) as info:
        CocoDetection(tmp_path, tmp_path / "nope.json", on_invalid=on_invalid)
    assert str(info.value) == f"{tmp_path / 'nope.json'}: annotation file not found; check the path"


@pytest.mark.parametrize("on_invalid", ["error", "skip"])
def test_not_json_is_fatal_and_says_where(tmp_path: Path, on_invalid: str) -> None:
    bad = tmp_path / "a.json"
    bad.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(DatasetError) as info:
        CocoDetection(tmp_path, bad, on_invalid=on_invalid)
    assert str(info.value).startswith(f"{bad}: not valid JSON (Expecting value at line 2 column")
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)))
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_coco_json(binary)


@pytest.mark.parametrize("missing", ["images", "annotations", "categories"])
def test_json_without_a_required_list_is_fatal(tmp_path: Path, missing: str) -> None:
    img_dir, ann_file = write_set(tmp_path, broken(lambda d: d.pop(missing)))
    with pytest.raises(DatasetError) as info:
        CocoDetection(img_dir, ann_file, on_invalid="skip")
    message = str(info.value)
    assert message.startswith(f"{ann_file}: not a COCO detection file: missing '{missing}' (it has: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ([1, 2], "expected a COCO object with images, annotations and categories, got a JSON list"),
        ({"images": {}, "annotations": [], "categories": []}, "'images' must be a list, got dict"),
        ({"images": [], "annotations": [], "categories": [{"id": 1}]}, "'images' is empty"),
        ({"images": [{"id": 1}], "annotations": [], "categories": []}, "'categories' is empty"),
    ],
)
def test_malformed_top_level_is_fatal(tmp_path: Path, content: Any, expected: str) -> None:
    ann_file = tmp_path / "a.json"
    ann_file.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="^" + str(ann_file).replace("\\", "\\\\") + ": ") as info:
        load_coco_json(ann_file)
    assert expected in str(info.value)


# ----------------------------------------------------------------------------- one problem at a time


def _cut(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _truncated_jpeg(img_dir: Path, d: dict[str, Any]) -> None:
    d["images"][1]["file_name"] = "b.jpg"
    write_jpeg(img_dir / "b.jpg", (20, 20))
    _cut(img_dir / "b.jpg", 0.6)


# (kind, change to the json, change to the files, records counted, annotations / images skipped, example text)
CASES: list[tuple[str, Callable[[dict], Any], Callable[[Path, dict], Any] | None, int, int, int, str]] = [
    ("unknown_image_id", lambda d: d["annotations"][0].update(image_id=99), None, 1, 1, 0,
     "annotation 1 (image 99): image id 99 is not in images"),
    ("unknown_category_id", lambda d: d["annotations"][0].update(category_id=7), None, 1, 1, 0,
     "annotation 1 (image 1): category id 7 is not declared (declared: 1, 2)"),
    ("duplicate_image_id", lambda d: d["images"].append({"id": 2, "file_name": "a.png", "width": 40, "height": 30}),
     None, 2, 1, 2, "image 2 (b.png): record #1, 2 share this id; image 2 (a.png): record #2, 2 share this id"),
    ("duplicate_annotation_id", lambda d: d["annotations"][1].update(id=1), None, 2, 2, 0,
     "annotation 1 (image 1): record #0, 2 share this id; annotation 1 (image 1): record #1"),
    ("duplicate_category_id", lambda d: d["categories"].append({"id": 2, "name": "wolf"}), None, 1, 0, 0,
     "category id 2: 'wolf' and 'dog'"),
    ("category_malformed", lambda d: d["categories"].append({"name": "no id"}), None, 1, 0, 0,
     "category #2: {'name': 'no id'}"),
    ("bbox_negative_size", lambda d: d["annotations"][2].update(bbox=[5, 5, -3, 4]), None, 1, 1, 0,
     "annotation 3 (image 2): bbox [5, 5, -3, 4]"),
    ("bbox_zero_size", lambda d: d["annotations"][2].update(bbox=[5, 5, 3, 0]), None, 1, 1, 0,
     "annotation 3 (image 2): bbox [5, 5, 3, 0]"),
    ("bbox_not_finite", lambda d: d["annotations"][2].update(bbox=[5, float("nan"), 3, 4]), None, 1, 1, 0,
     "annotation 3 (image 2): bbox [5, nan, 3, 4]"),
    ("bbox_not_finite", lambda d: d["annotations"][2].update(bbox=[5, 5, float("inf"), 4]), None, 1, 1, 0,
     "bbox [5, 5, inf, 4]"),
    ("bbox_wrong_length", lambda d: d["annotations"][2].update(bbox=[5, 5, 3]), None, 1, 1, 0,
     "annotation 3 (image 2): bbox [5, 5, 3]"),
    ("bbox_wrong_length", lambda d: d["annotations"][2].update(bbox=["5", "5", "3", "4"]), None, 1, 1, 0,
     "bbox ['5', '5', '3', '4']"),
    ("annotation_malformed", lambda d: d["annotations"][2].pop("bbox"), None, 1, 1, 0,
     "annotation 3 (image 2): missing 'bbox'"),
    ("annotation_malformed", lambda d: d["annotations"][2].update(image_id="2"), None, 1, 1, 0,
     "annotation 3 (image 2): image_id '2' is not an integer"),
    ("image_malformed", lambda d: d["images"][1].update(width=0), None, 1, 1, 1,
     "image #1: width 0 is not a positive number"),
    ("image_missing", lambda d: None, lambda p, d: (p / "b.png").unlink(), 1, 1, 1, "image 2 (b.png): "),
    ("image_empty", lambda d: None, lambda p, d: (p / "b.png").write_bytes(b""), 1, 1, 1, "b.png is 0 bytes"),
    ("image_unreadable", lambda d: None, lambda p, d: (p / "b.png").write_text("not a picture"), 1, 1, 1,
     "b.png is not an image file PIL can read (13 bytes)"),
    ("image_truncated", lambda d: None, lambda p, d: _cut(p / "b.png", 0.7), 1, 1, 1, "b.png: OSError: Truncated"),
    ("image_truncated", lambda d: None, _truncated_jpeg, 1, 1, 1, "image 2 (b.jpg): "),
    ("image_size_mismatch", lambda d: None, lambda p, d: d["images"][1].update(width=21), 1, 1, 1,
     "image 2 (b.png): json says 21x20, file is 20x20"),
]


@pytest.mark.parametrize(("kind", "change", "files", "count", "skip_anns", "skip_imgs", "example"), CASES)
def test_each_problem_stops_with_error_and_is_skipped_with_skip(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, change: Callable, files: Callable | None,
    count: int, skip_anns: int, skip_imgs: int, example: str,
) -> None:
    dataset = broken(change)
    img_dir, ann_file = write_set(tmp_path, dataset)
    if files is not None:
        files(img_dir, dataset)
        ann_file.write_text(json.dumps(dataset))

    with pytest.raises(DatasetError) as info:
        CocoDetection(img_dir, ann_file)
    message = str(info.value)
    records = "record" if count == 1 else "records"
    assert first_line(message) == f"{ann_file}: {count} invalid {records} ({PROBLEMS[kind]}: {count}); {FIX_HINT}"
    assert message.endswith(FIX_HINT)
    assert f"  {PROBLEMS[kind]} ({count}): " in message and example in message

    with caplog.at_level(logging.WARNING, logger="retinanet.data"):
        ds = CocoDetection(img_dir, ann_file, on_invalid="skip")
    assert len(ds.coco.dataset["annotations"]) == len(dataset["annotations"]) - skip_anns
    assert len(ds.coco.dataset["images"]) == len(dataset["images"]) - skip_imgs
    skipped = [r.getMessage() for r in caplog.records if "data.on_invalid=skip" in r.getMessage()]
    assert len(skipped) == 1
    assert first_line(skipped[0]) == (
        f"{ann_file}: data.on_invalid=skip: skipped {skip_anns} annotations, {skip_imgs} images: "
        f"{PROBLEMS[kind]}: {count}"
    )
    assert ds.category_map.category_ids == [1, 2]  # skipping never changes the classes
    for i in range(len(ds)):
        ds[i]


def test_all_problems_reported_at_once_with_three_examples_each(tmp_path: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d["annotations"] += [
            {"id": 10 + k, "image_id": 1, "category_id": 1, "bbox": [k, 1, 0, 4], "iscrowd": 0} for k in range(5)
        ]
        d["annotations"][0]["category_id"] = 9
        d["images"].append({"id": 3, "file_name": "missing.png", "width": 8, "height": 8})

    img_dir, ann_file = write_set(tmp_path, broken(change))
    (img_dir / "missing.png").unlink()
    with pytest.raises(DatasetError) as info:
        CocoDetection(img_dir, ann_file)
    lines = str(info.value).splitlines()
    assert lines[0] == (
        f"{ann_file}: 7 invalid records (image file missing: 1, annotation of an unknown category id: 1, "
        f"bbox with zero width or height: 5); {FIX_HINT}"
    )
    zero = next(line for line in lines if line.startswith("  bbox with zero width or height (5): "))
    assert zero.count("annotation 1") == 3 and zero.endswith("; ... 2 more")
    assert "annotation 10 (image 1): bbox [0, 1, 0, 4]" in zero
    assert len(lines) == 5


def test_every_image_missing_points_at_the_folder(tmp_path: Path) -> None:
    _, ann_file = write_set(tmp_path)
    wrong_dir = tmp_path / "elsewhere"
    wrong_dir.mkdir()
    with pytest.raises(DatasetError) as info:
        CocoDetection(wrong_dir, ann_file)
    assert f"none of the 2 image files exist in {wrong_dir}: check the images folder" in first_line(str(info.value))
    with pytest.raises(DatasetError, match="no image left after data.on_invalid=skip"):
        CocoDetection(wrong_dir, ann_file, on_invalid="skip")


def test_validate_coco_does_not_modify_its_input(tmp_path: Path) -> None:
    dataset = broken(lambda d: d["annotations"][0].update(id=0, bbox=[-2, 3, 10, 8]))
    img_dir, ann_file = write_set(tmp_path, dataset)
    before = copy.deepcopy(dataset)
    report = validate_coco(dataset, img_dir)
    assert report.ok and dataset == before
    assert report.note_counts == {"annotation_id_zero": 1, "bbox_partly_outside": 1}
    bad = validate_coco(broken(lambda d: d["annotations"][1].update(bbox=[1, 1, 0, 1])), img_dir)
    assert bad.bad_annotation_ids == {2} and bad.bad_annotation_indices == {1} and not bad.bad_image_ids


def test_validate_coco_can_leave_files_alone(tmp_path: Path) -> None:
    img_dir, _ = write_set(tmp_path)
    (img_dir / "b.png").unlink()
    assert validate_coco(copy.deepcopy(CLEAN), img_dir, check_images=False).ok
    assert validate_coco(copy.deepcopy(CLEAN), img_dir).counts == {"image_missing": 1}


# ----------------------------------------------------------------------------- notes: fine, fixed, logged


def test_box_partly_outside_is_clipped_entirely_outside_is_a_problem(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def change(d: dict[str, Any]) -> None:
        d["annotations"][1]["bbox"] = [35, 25, 10, 10]  # partly outside a 40x30 image
        d["annotations"][2]["bbox"] = [25, 1, 5, 5]  # entirely outside a 20x20 image

    img_dir, ann_file = write_set(tmp_path, broken(change))
    with pytest.raises(DatasetError, match=r"1 invalid record \(bbox entirely outside the image: 1\)"):
        CocoDetection(img_dir, ann_file)
    with caplog.at_level(logging.WARNING, logger="retinanet.data"):
        ds = CocoDetection(img_dir, ann_file, on_invalid="skip")
    assert ds.report.counts == {"bbox_outside_image": 1}
    assert ds.report.note_counts == {"bbox_partly_outside": 1}
    target = ds[ds.ids.index(1)][1]
    assert target.boxes_xyxy.tolist() == [[2.0, 3.0, 12.0, 11.0], [35.0, 25.0, 40.0, 30.0]]
    assert ds[ds.ids.index(2)][1].boxes_xyxy.shape == (0, 4)
    skipped = [r.getMessage() for r in caplog.records if "data.on_invalid=skip" in r.getMessage()]
    assert len(skipped) == 1 and "skipped 1 annotations" in skipped[0]


def _perfect_results(ds: CocoDetection) -> list[dict[str, Any]]:
    """Ground truth as predictions, built from the dataset's targets and labels mapped back to category ids."""
    results = []
    for i in range(len(ds)):
        _, target = ds[i]
        det = Detections(boxes_xyxy=target.boxes_xyxy, scores=torch.ones(len(target.labels)), labels=target.labels)
        results += detections_to_coco(target.image_id, det, ds.category_map.labels_to_category_ids)
    return results


def test_annotation_id_zero_is_renumbered_and_evaluation_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    img_dir, ann_file = write_set(tmp_path, broken(lambda d: d["annotations"][1].update(id=0)))
    with caplog.at_level(logging.WARNING, logger="retinanet.data"):
        ds = CocoDetection(img_dir, ann_file)
    assert sorted(a["id"] for a in ds.coco.dataset["annotations"]) == [1, 3, 4]
    assert 0 not in ds.coco.anns and ds.coco.anns[4]["bbox"] == [20, 10, 10, 10]
    assert json.loads(ann_file.read_text())["annotations"][1]["id"] == 0  # the user's file is untouched
    assert any("annotation id <= 0 (renumbered" in r.getMessage() for r in caplog.records)
    evaluator = CocoEvaluator(ds.coco)
    evaluator.update(_perfect_results(ds))
    assert evaluator.compute()["AP"] == pytest.approx(1.0, abs=1e-9)


def _roboflow(d: dict[str, Any]) -> None:
    d["categories"] = [
        {"id": 0, "name": "pets", "supercategory": "none"},
        {"id": 1, "name": "cat", "supercategory": "pets"},
        {"id": 2, "name": "dog", "supercategory": "pets"},
    ]


def test_roboflow_placeholder_category_is_not_a_class(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    img_dir, ann_file = write_set(tmp_path, broken(_roboflow))
    with caplog.at_level(logging.WARNING, logger="retinanet.data"):
        ds = CocoDetection(img_dir, ann_file)
    assert ds.category_map.num_classes == 2
    assert ds.category_map.category_ids == [1, 2] and ds.category_map.names == ["cat", "dog"]
    assert any("unused placeholder category 0" in r.getMessage() for r in caplog.records)
    _, target = ds[ds.ids.index(1)]
    assert target.labels.tolist() == [0, 1]
    assert ds.category_map.labels_to_category_ids(target.labels).tolist() == [1, 2]
    evaluator = CocoEvaluator(ds.coco)
    evaluator.update(_perfect_results(ds))
    metrics = evaluator.compute()
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-9)
    assert {name: entry["id"] for name, entry in metrics["per_class"].items()} == {"cat": 1, "dog": 2}


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["annotations"][0].update(category_id=0),  # used: a real class
        lambda d: d["categories"][0].update(name="animals"),  # not the others' supercategory
    ],
)
def test_category_zero_without_the_placeholder_signature_stays(tmp_path: Path, change: Callable) -> None:
    def both(d: dict[str, Any]) -> None:
        _roboflow(d)
        change(d)

    img_dir, ann_file = write_set(tmp_path, broken(both))
    ds = CocoDetection(img_dir, ann_file)
    assert ds.category_map.category_ids == [0, 1, 2]
    assert not ds.report.placeholder_category_ids


# ----------------------------------------------------------------------------- image files


def test_jpeg_exif_rotation_swaps_the_expected_size(tmp_path: Path) -> None:
    dataset = {
        "images": [{"id": 1, "file_name": "r.jpg", "width": 10, "height": 20}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 6], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "x"}],
    }
    write_jpeg(tmp_path / "r.jpg", (20, 10), orientation=6)  # stored 20 wide, shown 10 wide
    assert validate_coco(dataset, tmp_path).ok
    dataset["images"][0].update(width=20, height=10)
    report = validate_coco(dataset, tmp_path)
    assert report.counts == {"image_size_mismatch": 1}
    assert report.examples["image_size_mismatch"] == [
        "image 1 (r.jpg): json says 20x10, file is 20x10, 10x20 after EXIF orientation 6"
    ]


def test_jpeg_with_data_after_the_image_is_fine_but_cut_one_is_not(tmp_path: Path) -> None:
    dataset = {"images": [{"id": 1, "file_name": "m.jpg", "width": 64, "height": 48}], "annotations": [],
               "categories": [{"id": 1, "name": "x"}]}
    data = write_jpeg(tmp_path / "m.jpg", (64, 48))
    (tmp_path / "m.jpg").write_bytes(data + bytes(range(256)) * 40)  # like a motion photo's appended video
    assert validate_coco(dataset, tmp_path).ok
    (tmp_path / "m.jpg").write_bytes(data[: len(data) - 200])
    assert validate_coco(dataset, tmp_path).counts == {"image_truncated": 1}


# ----------------------------------------------------------------------------- config and the apps


def test_on_invalid_config_key(tmp_path: Path) -> None:
    assert load_config(None).data.on_invalid == "error"
    with pytest.raises(ConfigError, match="data.on_invalid: 'ignore' is not one of error, skip"):
        load_config(None, ["data.on_invalid=ignore"])
    img_dir, ann_file = write_set(tmp_path, broken(lambda d: d["annotations"][0].update(bbox=[1, 1, 0, 0])))
    paths = [f"data.train.images={img_dir}", f"data.train.annotations={ann_file}"]
    with pytest.raises(DatasetError, match="bbox with zero width or height: 1"):
        build_dataset(load_config(None, paths), "train")
    ds = build_dataset(load_config(None, [*paths, "data.on_invalid=skip"]), "train")
    assert len(ds.coco.dataset["annotations"]) == 2


def test_train_stops_with_one_error_line_not_a_traceback(tmp_path: Path) -> None:
    img_dir, ann_file = write_set(tmp_path, broken(lambda d: d["annotations"][0].update(category_id=5)))
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / "demo_cpu.yaml"),
         "--output-dir", str(tmp_path / "run"), "--set", f"data.train.images={img_dir}",
         f"data.train.annotations={ann_file}", "data.val.annotations="],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {ann_file}: 1 invalid record (annotation of an unknown category id: 1); {FIX_HINT}"]


def run_check(capsys: pytest.CaptureFixture, images: Path, annotations: Path) -> tuple[int, str, str]:
    code = check_dataset_cli.main(["--images", str(images), "--annotations", str(annotations)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_dataset_on_a_clean_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = broken(lambda d: d["images"].append({"id": 5, "file_name": "c.png", "width": 300, "height": 300}))
    dataset["annotations"].append({"id": 4, "image_id": 5, "category_id": 2, "bbox": [0, 0, 280, 270], "iscrowd": 1})
    dataset["annotations"].append({"id": 5, "image_id": 5, "category_id": 2, "bbox": [0, 0, 100, 100], "iscrowd": 0})
    img_dir, ann_file = write_set(tmp_path, dataset)
    code, out, _ = run_check(capsys, img_dir, ann_file)
    assert code == 0
    assert "images: 3 (0 without boxes)" in out and "annotations: 5 (1 crowd)" in out
    assert any(line.split() == ["1", "cat", "2", "0", "2"] for line in out.splitlines())
    assert any(line.split() == ["2", "dog", "2", "1", "2"] for line in out.splitlines())
    # sqrt(area): 80 -> 8.9, 100 -> 10, 25 -> 5 (all < 16), 10000 -> 100 (64-128); the crowd box is left out
    assert "<16: 3\n" in out and "64-128: 1\n" in out and ">=256: 0\n" in out
    assert "COCO small (< 32^2): 3, medium: 0, large (>= 96^2): 1" in out
    assert "problems: none" in out


def test_check_dataset_on_a_broken_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = broken(lambda d: d["annotations"][2].update(bbox=[1, 1, -1, 2]))
    dataset["images"].append({"id": 9, "file_name": "empty.png", "width": 8, "height": 8})
    img_dir, ann_file = write_set(tmp_path, dataset)
    code, out, _ = run_check(capsys, img_dir, ann_file)
    assert code == 1
    assert "images: 3 (2 without boxes)" in out and "(ids 2, 9)" in out
    assert "problems: 1\n  bbox with negative width or height (1): annotation 3 (image 2): bbox [1, 1, -1, 2]" in out


def test_check_dataset_unusable_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    img_dir, ann_file = write_set(tmp_path)
    code, _, err = run_check(capsys, img_dir, tmp_path / "none.json")
    assert code == 2 and err == f"error: {tmp_path / 'none.json'}: annotation file not found; check the path\n"
    ann_file.write_text("images: []")
    code, _, err = run_check(capsys, img_dir, ann_file)
    assert code == 2 and err.startswith(f"error: {ann_file}: not valid JSON")
    code, _, err = run_check(capsys, tmp_path / "no_dir", ann_file)
    assert code == 2 and "not a folder" in err


@pytest.mark.skipif(not SHARED_TINY_COCO.is_dir(), reason=f"real COCO subset not found at {SHARED_TINY_COCO}")
@pytest.mark.parametrize("split", ["train2017", "val2017"])
def test_check_dataset_real_tiny_coco_is_clean(capsys: pytest.CaptureFixture, split: str) -> None:
    ann_file = SHARED_TINY_COCO / "annotations" / f"instances_{split}.json"
    code, out, _ = run_check(capsys, SHARED_TINY_COCO / split, ann_file)
    assert code == 0, out
    assert "images: 50 (" in out and "problems: none" in out
    assert "annotations: " in out and " crowd)" in out

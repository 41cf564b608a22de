"""Tests for `make_synthetic_dataset.py --style photos`: Roboflow layout, placeholder category, box sizes, determinism."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet.cli import make_synthetic_dataset as synthetic_cli
from retinanet.data import synthetic_photos
from retinanet.data.coco import CocoDetection

SIZE = (240, 161)  # a 2048x1371 photo's aspect, small enough for seconds


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("photos")
    synthetic_photos.make_photos_dataset(out, seed=0, num_train=50, num_valid=3, num_test=2, image_size=SIZE)
    return out


def _load(root: Path, split: str) -> dict:
    return json.loads((root / split / "_annotations.coco.json").read_text())


def test_roboflow_layout_and_placeholder_category(photos_dir: Path) -> None:
    for split, n in (("train", 50), ("valid", 3), ("test", 2)):
        data = _load(photos_dir, split)
        assert sorted(p.name for p in (photos_dir / split).glob("*.jpg")) == sorted(im["file_name"] for im in data["images"])
        assert len(data["images"]) == n
        assert [im["id"] for im in data["images"]] == list(range(n))  # Roboflow counts from 0
        cats = data["categories"]
        assert cats[0] == {"id": 0, "name": "objects", "supercategory": "none"}
        assert [c["id"] for c in cats[1:]] == list(range(1, 13))
        assert {c["supercategory"] for c in cats[1:]} == {"objects"}
        assert 0 not in {a["category_id"] for a in data["annotations"]}
    first = _load(photos_dir, "train")["images"][0]
    with Image.open(photos_dir / "train" / first["file_name"]) as im:
        assert (im.format, im.size, im.mode) == ("JPEG", (first["width"], first["height"]), "RGB")
        assert (im.width, im.height) == SIZE


def test_boxes_are_2_to_10_percent_of_the_side_and_inside(photos_dir: Path) -> None:
    data = _load(photos_dir, "train")
    width, height = SIZE
    boxes = np.array([a["bbox"] for a in data["annotations"]])
    fraction = boxes[:, 2:].max(axis=1) / max(width, height)
    assert fraction.min() >= 0.02 - 0.01 / width and fraction.max() <= 0.10 + 0.01 / width  # bbox rounded to 0.01 px
    assert fraction.min() < 0.03 and fraction.max() > 0.08  # the whole range is used
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= width).all() and (boxes[:, 1] + boxes[:, 3] <= height).all()
    areas = np.array([a["area"] for a in data["annotations"]])
    assert ((areas > 0) & (areas <= boxes[:, 2] * boxes[:, 3])).all()


def test_objects_per_image_classes_and_imbalance(photos_dir: Path) -> None:
    data = _load(photos_dir, "train")
    per_image = Counter(a["image_id"] for a in data["annotations"])
    counts = [per_image[im["id"]] for im in data["images"]]
    assert 7 <= np.mean(counts) <= 12 and max(counts) <= 15
    assert min(counts) <= 4  # some images have few objects (4% have none: too rare to require in 50)
    per_class = Counter(a["category_id"] for a in data["annotations"])
    assert set(per_class) == set(range(1, 13))
    assert 1.3 < max(per_class.values()) / min(per_class.values()) < 6  # mild imbalance


def test_loads_through_coco_detection_without_the_placeholder(photos_dir: Path) -> None:
    ds = CocoDetection(photos_dir / "train", photos_dir / "train" / "_annotations.coco.json")
    assert ds.category_map.category_ids == list(range(1, 13))
    assert ds.category_map.names[:2] == ["circle", "ellipse"]
    assert ds.num_dropped_boxes == 0
    image, target = ds[0]
    assert image.shape == (3, SIZE[1], SIZE[0])


def test_same_seed_gives_same_bytes(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthetic_cli.main(
            ["--style", "photos", "--output", str(tmp_path / name), "--seed", str(seed), "--num-train", "2",
             "--num-val", "1", "--num-test", "1", "--image-size", "160x107"]
        )
    for split in ("train", "valid", "test"):
        json_a = (tmp_path / "a" / split / "_annotations.coco.json").read_bytes()
        assert json_a == (tmp_path / "b" / split / "_annotations.coco.json").read_bytes()
        assert json_a != (tmp_path / "c" / split / "_annotations.coco.json").read_bytes()
        for jpg in sorted((tmp_path / "a" / split).glob("*.jpg")):
            assert jpg.read_bytes() == (tmp_path / "b" / split / jpg.name).read_bytes()
    stamp = (tmp_path / "a" / "train" / "_annotations.coco.json").stat().st_mtime_ns
    synthetic_photos.make_photos_dataset(tmp_path / "a", seed=3, num_train=2, num_valid=1, num_test=1, image_size=(160, 107))
    assert (tmp_path / "a" / "train" / "_annotations.coco.json").stat().st_mtime_ns == stamp  # complete: kept


def test_cli_rejects_shapes_only_mistakes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        synthetic_cli.parse_args(["--output", "x", "--num-test", "3"])
    assert exc.value.code == 2 and "--num-test" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synthetic_cli.parse_args(["--output", "x", "--image-size", "64x32"])
    args = synthetic_cli.parse_args(["--output", "x", "--style", "photos"])
    assert (args.num_train, args.num_val, args.num_test, args.image_size) == (200, 60, 30, (2048, 1371))
    assert synthetic_cli.parse_args(["--output", "x"]).image_size == (128, 128)

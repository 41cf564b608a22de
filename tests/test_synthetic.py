"""Tests for scripts/make_synthetic_dataset.py: determinism, imbalance, empty images, loading."""
from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from retinanet.data.coco import CocoDetection

from retinanet.cli import make_synthetic_dataset as synthetic_cli
from retinanet.data import synthetic


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.make_dataset(out, seed=0, num_train=200, num_val=10, image_size=64)
    return out


def _load_json(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def test_same_seed_gives_same_bytes(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthetic.make_dataset(tmp_path / name, seed=seed, num_train=6, num_val=3, image_size=64)
    for split in ("train", "val"):
        json_a = (tmp_path / "a" / "annotations" / f"instances_{split}.json").read_bytes()
        assert json_a == (tmp_path / "b" / "annotations" / f"instances_{split}.json").read_bytes()
        assert json_a != (tmp_path / "c" / "annotations" / f"instances_{split}.json").read_bytes()
        for png in sorted((tmp_path / "a" / split).glob("*.png")):
            assert png.read_bytes() == (tmp_path / "b" / split / png.name).read_bytes()
    assert len(list((tmp_path / "a" / "train").glob("*.png"))) == 6


def test_coco_format_and_gapped_ids(dataset_dir: Path) -> None:
    data = _load_json(dataset_dir, "train")
    assert {"info", "licenses", "images", "annotations", "categories"} <= data.keys()
    assert [c["id"] for c in data["categories"]] == [1, 3, 7, 10, 12]
    assert [c["name"] for c in data["categories"]][:3] == ["circle", "square", "triangle"]
    assert min(im["id"] for im in data["images"]) == 1
    assert sorted(a["id"] for a in data["annotations"]) == list(range(1, len(data["annotations"]) + 1))
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        assert a["iscrowd"] == 0
        assert 0 < a["area"] <= w * h
        assert x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64 and w >= 2 and h >= 2
    assert len(data["images"]) == 200 and len(_load_json(dataset_dir, "val")["images"]) == 10


def test_boxes_are_tight_around_the_shapes(dataset_dir: Path) -> None:
    # An unoccluded square fills exactly its box: one colour inside, a different one just outside.
    data = _load_json(dataset_dir, "train")

    def overlaps(a: dict, b: dict) -> bool:
        (ax, ay, aw, ah), (bx, by, bw, bh) = a["bbox"], b["bbox"]
        return min(ax + aw, bx + bw) > max(ax, bx) and min(ay + ah, by + bh) > max(ay, by)

    def off_border(a: dict) -> bool:
        x, y, w, h = a["bbox"]
        return 0 < x and 0 < y and x + w < 64 and y + h < 64

    squares = [
        a
        for a in data["annotations"]
        if a["category_id"] == 3
        and off_border(a)
        and not any(overlaps(a, b) for b in data["annotations"] if b["image_id"] == a["image_id"] and b is not a)
    ]
    assert len(squares) >= 5
    for square in squares[:5]:
        image = np.asarray(Image.open(dataset_dir / "train" / f"{square['image_id']:06d}.png"), dtype=np.float32)
        x, y, w, h = (int(v) for v in square["bbox"])
        inside = image[y : y + h, x : x + w].reshape(-1, 3)
        rows = [image[y - 1, x - 1 : x + w + 1], image[y + h, x - 1 : x + w + 1]]
        cols = [image[y : y + h, x - 1], image[y : y + h, x + w]]
        ring = np.concatenate(rows + cols)
        assert inside.std(axis=0).max() < 8, square  # one flat colour plus faint noise
        assert np.abs(ring - inside.mean(axis=0)).sum(axis=1).min() > 30, square


def test_class_imbalance_sizes_and_empty_images(dataset_dir: Path) -> None:
    data = _load_json(dataset_dir, "train")
    counts = Counter(a["category_id"] for a in data["annotations"])
    total = sum(counts.values())
    shares = {cid: n / total for cid, n in counts.items()}
    assert 0.5 < shares[1] < 0.7  # circles dominate
    assert 0.01 < min(shares.values()) < 0.08  # and some class is rare
    assert set(counts) == {1, 3, 7, 10, 12}
    per_image = Counter(a["image_id"] for a in data["annotations"])
    num_empty = sum(im["id"] not in per_image for im in data["images"])
    assert 1 <= num_empty <= 0.15 * len(data["images"])
    assert max(per_image.values()) <= 8
    sides = np.array([max(a["bbox"][2:]) for a in data["annotations"]])
    assert (sides <= 8).mean() > 0.2 and (sides >= 20).mean() > 0.1  # small (<= S/8) and large (>= 5S/16)


def test_loads_through_coco_detection(dataset_dir: Path) -> None:
    ds = CocoDetection(dataset_dir / "train", dataset_dir / "annotations" / "instances_train.json")
    assert len(ds) == 200
    assert ds.num_dropped_boxes == 0
    assert ds.category_map.category_ids == [1, 3, 7, 10, 12]
    image, target = ds[0]
    assert image.shape == (3, 64, 64)
    assert target.image_id == 1
    assert target.labels.numel() == target.boxes_xyxy.shape[0]
    ann_ids = [a["category_id"] for a in ds.coco.imgToAnns[1]]
    assert ds.category_map.labels_to_category_ids(target.labels).tolist() == ann_ids
    assert bool((target.boxes_xyxy >= 0).all()) and bool((target.boxes_xyxy <= 64).all())
    assert target.iscrowd.dtype == torch.bool and not bool(target.iscrowd.any())


def test_complete_output_is_kept_and_incomplete_regenerated(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    synthetic_cli.main(["--output", str(out), "--num-train", "4", "--num-val", "2", "--image-size", "64"])
    ann = out / "annotations" / "instances_train.json"
    stamp = ann.stat().st_mtime_ns
    synthetic.make_dataset(out, seed=0, num_train=4, num_val=2, image_size=64)
    assert ann.stat().st_mtime_ns == stamp
    (out / "train" / "000002.png").unlink()
    synthetic.make_dataset(out, seed=0, num_train=4, num_val=2, image_size=64)
    assert (out / "train" / "000002.png").is_file()
    synthetic.make_dataset(out, seed=0, num_train=3, num_val=2, image_size=64)
    assert sorted(p.name for p in (out / "train").glob("*.png")) == ["000001.png", "000002.png", "000003.png"]
    png = out / "train" / "000001.png"
    good = png.read_bytes()
    png.write_bytes(b"corrupt")
    synthetic.make_dataset(out, seed=0, num_train=3, num_val=2, image_size=64)
    assert png.read_bytes() == b"corrupt"  # complete by its json: skipped
    synthetic_cli.main(["--output", str(out), "--num-train", "3", "--num-val", "2", "--image-size", "64", "--force"])
    assert png.read_bytes() == good

"""Your own data: the shipped Roboflow-layout sample is what data/README.md says, and docs/own_data.md runs as
written on it (check, train, evaluate the test split, report, predict, export)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from PIL import Image

from tests.helpers import REPO

ROBOFLOW = REPO / "data" / "sample_roboflow"
FOLDERS = {"train": "train", "valid": "val", "test": "val"}  # export folder -> data/sample split it came from


def test_the_roboflow_sample_is_data_sample_as_an_export() -> None:
    names, boxes = None, Counter()
    for folder, source in FOLDERS.items():
        export = json.loads((ROBOFLOW / folder / "_annotations.coco.json").read_text())
        original = json.loads((REPO / "data" / "sample" / "annotations" / f"instances_{source}.json").read_text())
        cats = sorted(export["categories"], key=lambda c: c["id"])
        assert cats[0] == {"id": 0, "name": "household-objects", "supercategory": "none"}  # Roboflow's placeholder
        assert all(c["supercategory"] == "household-objects" for c in cats[1:])
        names = names or [c["name"] for c in cats[1:]]
        assert [c["name"] for c in cats[1:]] == names and len(names) == 13
        assert [im["id"] for im in export["images"]] == list(range(len(export["images"])))  # ids from 0
        assert [a["id"] for a in export["annotations"]] == list(range(len(export["annotations"])))
        by_name = {im["file_name"]: im for im in original["images"]}
        for im in export["images"]:
            first = by_name[im["extra"]["name"]]
            with Image.open(ROBOFLOW / folder / im["file_name"]) as pil:
                assert pil.size == (im["width"], im["height"]) == (first["width"], first["height"])
            assert im["license"] == first["license"]
            ours = sorted(a["bbox"] for a in export["annotations"] if a["image_id"] == im["id"])
            theirs = sorted([round(v, 2) for v in a["bbox"]] for a in original["annotations"]
                            if a["image_id"] == first["id"] and not a["iscrowd"])
            assert ours == theirs  # every non-crowd box of the photo, at its COCO coordinates
        assert not any(a["iscrowd"] for a in export["annotations"])
        name_of = {c["id"]: c["name"] for c in cats}
        boxes.update((folder, name_of[a["category_id"]]) for a in export["annotations"])
    assert (boxes["train", "toaster"], boxes["valid", "toaster"], boxes["test", "toaster"]) == (1, 0, 0)
    size = sum(p.stat().st_size for p in ROBOFLOW.rglob("*") if p.is_file())
    assert size < 1.2e6

"""--data DIR: the layouts of retinanet/data/layouts.py on folders made here, their overrides and their errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from retinanet.cli.common import with_data
from retinanet.config import ConfigError, SplitConfig, load_config
from retinanet.data.layouts import find_layout
from tests.helpers import REPO


def make(root: Path, *files: str) -> Path:
    """Empty files (and their folders) under root; a name ending in / is a folder."""
    for name in files:
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
    return root


def test_roboflow_export(tmp_path: Path) -> None:
    root = make(tmp_path, "train/_annotations.coco.json", "valid/_annotations.coco.json", "test/_annotations.coco.json")
    found = find_layout(root)
    assert found.layout.name == "Roboflow COCO export"
    assert found.splits == {
        "train": SplitConfig(str(root / "train"), str(root / "train/_annotations.coco.json")),
        "val": SplitConfig(str(root / "valid"), str(root / "valid/_annotations.coco.json")),
        "test": SplitConfig(str(root / "test"), str(root / "test/_annotations.coco.json")),
    }


def test_roboflow_export_without_test_leaves_the_test_split_empty(tmp_path: Path) -> None:
    found = find_layout(make(tmp_path, "train/_annotations.coco.json", "valid/_annotations.coco.json"))
    assert found.has("val") and not found.has("test")
    assert found.splits["test"] == SplitConfig()
    assert found.looked_for("test") == f"looked for {tmp_path / 'test/_annotations.coco.json'} (Roboflow COCO export)"


def test_coco_2017(tmp_path: Path) -> None:
    root = make(tmp_path, "annotations/instances_train2017.json", "annotations/instances_val2017.json",
                "train2017/", "val2017/", "annotations/image_info_test2017.json", "test2017/")
    found = find_layout(root)
    assert found.layout.name == "COCO 2017"
    assert found.splits["train"] == SplitConfig(str(root / "train2017"), str(root / "annotations/instances_train2017.json"))
    assert found.splits["val"] == SplitConfig(str(root / "val2017"), str(root / "annotations/instances_val2017.json"))
    assert not found.has("test")  # COCO publishes no test annotations
    assert found.looked_for("test") == "the COCO 2017 layout has no test annotations"


def test_this_repositorys_layout_is_data_sample() -> None:
    found = find_layout(REPO / "data" / "sample")
    assert found.layout.name == "this repository's layout"
    assert found.splits["val"] == SplitConfig(str(REPO / "data/sample/val"),
                                              str(REPO / "data/sample/annotations/instances_val.json"))
    assert not found.has("test")


def test_nothing_matches_one_line_naming_what_was_looked_for(tmp_path: Path) -> None:
    make(tmp_path, "images/a.jpg", "labels.json")
    with pytest.raises(ConfigError) as caught:
        find_layout(tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        f"--data {tmp_path}: no known dataset layout; looked for {tmp_path / 'train/_annotations.coco.json'} "
        f"(Roboflow COCO export); {tmp_path / 'annotations/instances_train2017.json'} (COCO 2017); "
        f"{tmp_path / 'annotations/instances_train.json'} (this repository's layout); see docs/own_data.md")


def test_one_split_of_an_export_points_to_its_parent(tmp_path: Path) -> None:
    make(tmp_path, "train/_annotations.coco.json")
    with pytest.raises(ConfigError, match=f"one split of a Roboflow export; pass the export's folder, {tmp_path}$"):
        find_layout(tmp_path / "train")


def test_missing_folder_and_missing_images(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"--data {tmp_path / 'none'}: not a folder; check the path"):
        find_layout(tmp_path / "none")
    make(tmp_path, "annotations/instances_train2017.json")
    with pytest.raises(ConfigError, match=r"train2017 is not a folder \(the images of .*instances_train2017.json\)"):
        find_layout(tmp_path)


@pytest.mark.parametrize("name", ["true", "a: b", "a #b", "x'y", "[1]"])
def test_overrides_keep_any_folder_name_a_string(tmp_path: Path, name: str) -> None:
    root = make(tmp_path / name, "train/_annotations.coco.json")
    cfg = load_config(None, find_layout(root).overrides())
    assert cfg.data.train == SplitConfig(str(root / "train"), str(root / "train/_annotations.coco.json"))
    assert cfg.data.val == cfg.data.test == SplitConfig()


def test_data_replaces_the_config_splits_and_set_still_wins(tmp_path: Path) -> None:
    root = make(tmp_path, "train/_annotations.coco.json", "valid/_annotations.coco.json")
    _, overrides = with_data(str(root), ["data.val.annotations=mine.json"])
    cfg = load_config(REPO / "configs" / "sample.yaml", overrides)
    assert cfg.data.train.images == str(root / "train")  # the config's data/sample is replaced
    assert cfg.data.val == SplitConfig(str(root / "valid"), "mine.json")  # an explicit --set wins
    assert cfg.data.test == SplitConfig()
    assert with_data(None, ["a=1"]) == (None, ["a=1"])

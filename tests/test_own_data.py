"""Your own data: the shipped Roboflow-layout sample is what data/README.md says, and docs/own_data.md runs as
written on it (check, train, evaluate the test split, report, predict, export)."""
from __future__ import annotations

import importlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.helpers import REPO
from tests.test_docs import Command, commands, entry_point

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


# ----------------------------------------------------------------------------- docs/own_data.md, run as written

PAGE = REPO / "docs" / "own_data.md"
SHORT_RUN = "_base_: {base}\ntrain:\n  max_iters: 4\n"  # the page's recipe, shortened: seconds, not minutes


def page_commands() -> list[Command]:
    return [c for c in commands(PAGE) if c.not_run is None]


def test_the_page_is_the_whole_path_with_data_and_the_test_split() -> None:
    steps = [(entry_point(c.args) or ("", []))[0].rsplit(".", 1)[-1] for c in page_commands()]
    assert steps == ["check_dataset", "train", "evaluate", "predict", "export", "predict"]
    check, train, evaluate = page_commands()[:3]
    assert "--data" in check.args and "--data" in train.args
    assert evaluate.args[evaluate.args.index("--split") + 1] == "test"
    assert all("data/sample_roboflow" in c.text for c in page_commands() if "--data" in c.args)


def _scratch_with_short_configs(folder: Path) -> Path:
    """The repository's code and data linked into `folder`, each config the page trains with shortened to 4 iterations."""
    for name in ("data", "scripts", "train.py", "evaluate.py"):
        (folder / name).symlink_to(REPO / name)
    (folder / "configs").mkdir()
    trained = {c.args[c.args.index("--config") + 1] for c in page_commands() if "train" in c.args[1]}
    for config in (REPO / "configs").glob("*.yaml"):
        if f"configs/{config.name}" in trained:
            (folder / "configs" / config.name).write_text(SHORT_RUN.format(base=config))
        else:
            (folder / "configs" / config.name).symlink_to(config)
    return folder


@pytest.mark.slow
def test_the_page_runs_as_written_on_the_roboflow_sample(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command's entry point, in this process (no interpreter start-up), in a folder like the repository root."""
    folder = _scratch_with_short_configs(tmp_path)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    outputs = []
    for command in page_commands():
        module, args = entry_point(command.args)
        assert importlib.import_module(module).main(args) == 0, command.where
        outputs.append(capsys.readouterr().out)
    assert re.search(r"^  toaster +1 in train, 0 in val, 0 in test$", outputs[0], flags=re.M)  # what the page says
    run = folder / "runs" / "sample_roboflow"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["test"]["images"] == "data/sample_roboflow/test"
    metrics = json.loads((run / "eval_test" / "metrics.json").read_text())
    assert metrics["per_class"]["toaster"]["AP"] is None  # no test box: undefined, shown as "-"
    assert (run / "eval_test" / "report.html").is_file() and not (run / "metrics.json").exists()
    assert (run / "model.onnx").is_file() and (run / "onnx" / "detections.json").is_file()

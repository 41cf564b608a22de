"""Every bad input through the command line: one line on stderr, no traceback, the right exit code."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from retinanet.cli import evaluate
from retinanet.cli import train
from retinanet.cli.common import run_cli
from tests.helpers import REPO, synthetic_overrides

DEMO = str(REPO / "configs" / "demo_cpu.yaml")


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _cases(tmp: Path, syn: Path) -> list[tuple[str, list[str], int, str]]:
    """(name, train.py argv, exit code, expected start of the message after 'error: ')."""
    data = synthetic_overrides(syn)
    base = f"_base_: {DEMO}\n"
    cyc_a, cyc_b = tmp / "a.yaml", tmp / "b.yaml"
    _write(cyc_a, "_base_: b.yaml\n")
    _write(cyc_b, "_base_: a.yaml\n")
    not_json = _write(tmp / "bad.json", "{not json")
    return [
        ("unknown key", ["--config", _write(tmp / "k.yaml", base + "train:\n  lrr: 0.1\n")], 2,
         f"{tmp / 'k.yaml'}: unknown key 'train.lrr'; did you mean 'train.lr'?"),
        ("wrong type", ["--config", DEMO, "--set", "train.batch_size=eight"], 2,
         f"{DEMO} + --set: train.batch_size: expected int, got 'eight'"),
        ("lr <= 0", ["--config", DEMO, "--set", "train.lr=0"], 2, f"{DEMO} + --set: train.lr: must be > 0"),
        ("gamma < 0", ["--config", DEMO, "--set", "loss.gamma=-1"], 2, f"{DEMO} + --set: loss.gamma: must be >= 0"),
        ("alpha out of range", ["--config", DEMO, "--set", "loss.alpha=2"], 2, f"{DEMO} + --set: loss.alpha: must be in"),
        ("min_size > max_size", ["--config", DEMO, "--set", "input.min_size=[512]"], 2,
         f"{DEMO} + --set: input.min_size: must be <= max_size"),
        ("IoU thresholds out of order", ["--config", DEMO, "--set", "model.matcher.bg_iou=0.7"], 2,
         f"{DEMO} + --set: model.matcher.bg_iou: needs 0 <= bg_iou <= fg_iou <= 1"),
        ("fp16 on CPU", ["--config", DEMO, "--output-dir", str(tmp / "fp16"), "--set", *data, "train.amp=fp16",
                         "train.device=cpu"], 2, f"{DEMO}: train.amp: fp16 needs a CUDA device"),
        ("config file missing", ["--config", str(tmp / "nope.yaml")], 2, f"{tmp / 'nope.yaml'}: config file not found"),
        ("malformed YAML", ["--config", _write(tmp / "m.yaml", "train: [1, 2\n")], 2, f"{tmp / 'm.yaml'}: line"),
        ("cyclic _base_", ["--config", str(cyc_a)], 2, f"{cyc_a.resolve()}: cyclic _base_ chain"),
        ("data path missing", ["--config", DEMO, "--set", *data, f"data.train.images={tmp / 'none'}"], 2,
         f"{DEMO}: data.train.images: {tmp / 'none'} does not exist; check the path"),
        ("unknown augmentation", ["--config", DEMO, "--set", *data, "data.augmentations=[{name: HorizontalFlp}]"], 2,
         f"{DEMO}: data.augmentations: "),
        ("annotations not JSON", ["--config", DEMO, "--set", *data, f"data.train.annotations={not_json}"], 1,
         f"{not_json}: not valid JSON"),
        ("resume without a run", ["--config", DEMO, "--output-dir", str(tmp / "fresh"), "--resume", "--set", *data], 1,
         "--resume: "),
    ]


def test_train_cli_errors(synthetic: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["train.py"])
    for name, argv, code, message in _cases(tmp_path, synthetic):
        assert run_cli(lambda: train.main(argv)) == code, name
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith(f"error: {message}"), (name, err)
        assert not any("Traceback" in line for line in err), name


def test_evaluate_cli_errors(synthetic: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["evaluate.py"])
    data = synthetic_overrides(synthetic)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "list.json").write_text(json.dumps([{"image_id": 1}]))
    cases = [
        (["--config", DEMO, "--checkpoint", str(tmp_path / "junk.pt"), "--set", *data], 1,
         f"{tmp_path / 'junk.pt'}: not a readable checkpoint"),
        (["--config", DEMO, "--checkpoint", str(tmp_path / "junk.pt"), "--set", *data, "eval.amp=fp16",
          "train.device=cpu"], 2, f"{DEMO}: eval.amp: fp16 needs a CUDA device"),
        (["--config", DEMO, "--predictions", str(tmp_path / "list.json"), "--set", *data], 1,
         f"--predictions {tmp_path / 'list.json'}: expected a COCO results list"),
    ]
    for argv, code, message in cases:
        assert run_cli(lambda: evaluate.main(argv)) == code
        errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error: ")]
        assert errors == [errors[0]] and errors[0].startswith(f"error: {message}"), errors


@pytest.mark.parametrize("flag", ["--debug"])
def test_debug_shows_the_traceback(flag: str, monkeypatch) -> None:
    from retinanet.config import ConfigError

    monkeypatch.setattr("sys.argv", ["train.py", flag])
    with pytest.raises(ConfigError):
        run_cli(lambda: train.main(["--config", DEMO, "--set", "train.lr=0"]))

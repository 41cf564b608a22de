"""evaluate.py --split and --data: the split it evaluates, the folder it writes, the run files it leaves alone,
and the cheap arguments it checks before it reads any data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from retinanet.cli import evaluate
from retinanet.cli.common import run_cli
from retinanet.evaluation.evaluator import STAT_NAMES
from tests.helpers import REPO
from tests.test_operating_point import copy_run

SAMPLE = str(REPO / "configs" / "sample.yaml")


def errors_of(capsys: pytest.CaptureFixture, argv: list[str], code: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr("sys.argv", ["evaluate.py"])
    assert run_cli(lambda: evaluate.main(argv)) == code
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]


def test_cheap_arguments_are_checked_before_the_data(tmp_path: Path, capsys, monkeypatch) -> None:
    """A val set with a bad record would stop the run once validated: each mistake below is found first."""
    bad = json.loads((REPO / "data/sample/annotations/instances_val.json").read_text())
    bad["annotations"][0]["bbox"] = [1, 1, -5, 2]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    data = ["--set", f"data.val.annotations={tmp_path / 'bad.json'}"]
    missing = tmp_path / "runs" / "x" / "checkpoints" / "last.pt"
    cases = [
        (["--checkpoint", str(missing)], 1, f"--checkpoint {missing}: file not found; check the path"),
        (["--model", str(tmp_path / "m.onnx")], 1, f"--model {tmp_path / 'm.onnx'}: file not found"),
        (["--predictions", str(tmp_path / "r.json")], 1, f"--predictions {tmp_path / 'r.json'}: file not found"),
        (["--checkpoint", SAMPLE, "--score-thresh", "2"], 2, "--score-thresh 2.0: must be in [0, 1]"),
        (["--checkpoint", SAMPLE, "--target-recall", "0"], 2, "--target-recall 0: must be a number in (0, 1]"),
        (["--checkpoint", SAMPLE, "--split", "test"], 2,
         f"--split test: data.test.images/annotations are not set in {SAMPLE}; pass --data DIR or --set "
         "data.test.images=DIR data.test.annotations=FILE"),
        (["--checkpoint", SAMPLE, "--split", "test", "--data", str(REPO / "data/sample")], 2,
         f"--split test: --data {REPO / 'data/sample'} has no test split (looked for "
         f"{REPO / 'data/sample/annotations/instances_test.json'} (this repository's layout))"),
    ]
    for argv, code, message in cases:
        errors = errors_of(capsys, ["--config", SAMPLE, *argv, *data], code, monkeypatch)
        assert errors == [f"error: {message}"] or (len(errors) == 1 and errors[0].startswith(f"error: {message}")), errors
    # Without the cheap mistakes, the bad record is what stops it: the data was checked last, not skipped.
    (tmp_path / "r.json").write_text("[]")
    errors = errors_of(capsys, ["--config", SAMPLE, "--predictions", str(tmp_path / "r.json"), *data], 1, monkeypatch)
    assert len(errors) == 1 and "bbox with negative width or height" in errors[0]


def _metrics(folder: Path) -> list:
    return [json.loads((folder / "metrics.json").read_text())[k] for k in STAT_NAMES]


def test_test_split_goes_to_its_own_folder_and_leaves_the_run_files(trained_run: Path, synthetic: Path,
                                                                   tmp_path: Path, capsys, monkeypatch) -> None:
    run = copy_run(trained_run, tmp_path / "run")
    checkpoint = run / "checkpoints" / "best.pt"
    before = {name: (run / name).read_bytes() for name in ("operating_point.json", "MODEL_CARD.md", "model_card.json")}
    # The synthetic val set stands in for a test split: the same images give the same numbers.
    as_test = ["--set", f"data.test.images={synthetic / 'val'}",
               f"data.test.annotations={synthetic / 'annotations' / 'instances_val.json'}"]
    assert evaluate.main(["--config", str(run / "config.yaml"), "--checkpoint", str(checkpoint), "--split", "test",
                          "--target-precision", "0.5", *as_test]) == 0
    out = capsys.readouterr().out
    assert f"the run's operating point ({run / 'operating_point.json'}) stays the one chosen on val" in out
    assert {name: (run / name).read_bytes() for name in before} == before
    assert (run / "eval_test" / "operating_point.json").is_file() and (run / "eval_test" / "report.html").is_file()
    assert not (run / "metrics.json").exists()

    assert evaluate.main(["--config", str(run / "config.yaml"), "--checkpoint", str(checkpoint)]) == 0
    assert _metrics(run / "eval_val") == _metrics(run / "eval_test")

    errors = errors_of(capsys, ["--config", str(run / "config.yaml"), "--checkpoint", str(checkpoint), "--split",
                                "test", "--output-dir", str(run), *as_test], 2, monkeypatch)
    assert errors == [f"error: --output-dir {run}: the run folder keeps what training chose on val; write the test "
                      f"split's results elsewhere (the default is {run / 'eval_test'})"]


def test_train_split_is_evaluated_without_the_training_augmentations(trained_run: Path, synthetic: Path,
                                                                     tmp_path: Path) -> None:
    """--split train equals evaluating the train files as val: no flip (p=1 here) and no scale jitter."""
    config, checkpoint = str(trained_run / "config.yaml"), str(trained_run / "checkpoints" / "best.pt")
    augment = ["data.augmentations=[{name: HorizontalFlip, p: 1.0}]", "input.min_size=[48,80]", "input.max_size=80",
               "input.eval_min_size=64"]
    assert evaluate.main(["--config", config, "--checkpoint", checkpoint, "--split", "train",
                          "--output-dir", str(tmp_path / "train"), "--set", *augment]) == 0
    as_val = [f"data.val.images={synthetic / 'train'}",
              f"data.val.annotations={synthetic / 'annotations' / 'instances_train.json'}"]
    assert evaluate.main(["--config", config, "--checkpoint", checkpoint, "--output-dir", str(tmp_path / "val"),
                          "--set", *augment, *as_val]) == 0
    assert _metrics(tmp_path / "train") == _metrics(tmp_path / "val")
    assert (json.loads((tmp_path / "train" / "detections.json").read_text())
            == json.loads((tmp_path / "val" / "detections.json").read_text()))

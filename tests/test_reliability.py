"""Faults and bad checkpoints: clear messages, no lost work."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from retinanet.cli import evaluate
from retinanet.config import load_config
from retinanet.engine.checkpoint import CheckpointError, load_checkpoint, load_for_finetune, load_model_weights, save_checkpoint
from retinanet.fileio import write_text_atomic
from retinanet.modeling.losses import DetectionLoss
from retinanet.modeling.model import build_model
from tests.helpers import REPO, TINY_OVERRIDES, run_train, synthetic_overrides


def test_checkpoint_write_is_atomic_and_keeps_previous(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "iteration": 1}, path)
    save_checkpoint({"model": {"w": torch.ones(2) * 2}, "iteration": 2}, path)
    assert load_checkpoint(path)["iteration"] == 2
    assert load_checkpoint(tmp_path / "last.prev.pt")["iteration"] == 1

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="previous checkpoint is intact"):
        save_checkpoint({"model": {}, "iteration": 3}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_checkpoint_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "notes.txt")
    good = tmp_path / "good.pt"
    save_checkpoint({"model": {"w": torch.randn(1000)}, "iteration": 1}, good, keep_previous=False)
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "truncated.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_model_mismatch_messages(tmp_path: Path) -> None:
    cfg = load_config(None, TINY_OVERRIDES)
    source = build_model(cfg, num_classes=3).state_dict()
    with pytest.raises(CheckpointError, match="different num_classes.*train.init_from"):
        load_model_weights(build_model(cfg, num_classes=5), source, tmp_path / "x.pt")
    other_backbone = build_model(load_config(None, TINY_OVERRIDES + ["model.backbone.name=resnet34"]), num_classes=3)
    with pytest.raises(CheckpointError, match="weights do not fit this model.*model.backbone.name"):
        load_model_weights(other_backbone, source, tmp_path / "x.pt")


def test_finetune_keeps_fresh_class_head() -> None:
    cfg = load_config(None, TINY_OVERRIDES)
    source = build_model(cfg, num_classes=3)
    target = build_model(cfg, num_classes=7)
    skipped = load_for_finetune(target, source.state_dict())
    assert skipped == ["head.cls_logits.bias", "head.cls_logits.weight"]
    assert torch.equal(target.head.box_deltas.weight, source.head.box_deltas.weight)
    assert target.head.cls_logits.weight.shape[0] == 7 * 9


def test_nonfinite_losses_are_skipped_then_stop(synthetic: Path, tmp_path: Path, monkeypatch) -> None:
    real_call = DetectionLoss.__call__
    calls = {"n": 0}
    poison: set[int] = {3}

    def flaky(self, outputs, targets):
        calls["n"] += 1
        losses = real_call(self, outputs, targets)
        if calls["n"] in poison:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(DetectionLoss, "__call__", flaky)
    sets = synthetic_overrides(synthetic) + ["train.max_iters=4", "train.eval_every=0", "train.checkpoint_every=2"]
    assert run_train(tmp_path / "a", sets) == 0
    lines = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [l for l in lines if l["kind"] == "train"]
    assert [l["step"] for l in train_lines] == [1, 2, 4]  # step 3 skipped
    assert train_lines[-1]["skipped_steps"] == 1
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["skipped_steps"] == 1  # --resume keeps the count

    calls["n"] = 0
    poison.clear()
    poison.update(range(3, 100))
    sets = synthetic_overrides(synthetic) + [
        "train.max_iters=8", "train.eval_every=0", "train.checkpoint_every=2", "train.max_nonfinite_steps=3"
    ]
    with pytest.raises(FloatingPointError, match="3 steps in a row with a non-finite loss or gradients .*"
                                                 "the last: non-finite loss.*last good checkpoint"):
        run_train(tmp_path / "b", sets)
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["iteration"] == 2


def test_unwritable_output_dir_fails_before_training(synthetic: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="cannot write there.*choose another --output-dir"):
        run_train(blocker / "run", synthetic_overrides(synthetic))


def test_sigterm_saves_and_resume_continues(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = synthetic_overrides(synthetic) + ["train.max_iters=2000", "train.eval_every=0", "train.checkpoint_every=0"]
    cmd = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / "demo_cpu.yaml"),
           "--output-dir", str(out), "--set", *sets]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or metrics.stat().st_size == 0):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert 1 <= state["iteration"] < 2000
    sets_short = sets + [f"train.max_iters={state['iteration'] + 1}"]
    assert run_train(out, sets_short, resume=True) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == state["iteration"] + 1


def test_evaluate_rejects_a_foreign_results_file(synthetic: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    from retinanet.data.loaders import DatasetError

    with pytest.raises(DatasetError, match="expected a COCO results list"):
        evaluate.main(["--config", str(REPO / "configs" / "demo_cpu.yaml"), "--predictions", str(tmp_path / "bad.json"),
                       "--set", *synthetic_overrides(synthetic)])
    assert os.path.exists(tmp_path / "bad.json")


def test_text_files_are_replaced_whole_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "operating_point.json"
    write_text_atomic(path, "old")
    assert path.read_text() == "old"

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space"):
        write_text_atomic(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["operating_point.json"]


def test_a_checkpoint_of_another_schema_is_a_one_line_error(tmp_path: Path) -> None:
    from retinanet.engine.checkpoint import SCHEMA_VERSION, Checkpoint

    good = Checkpoint(model={"w": torch.ones(2)}, config={}, categories=[{"id": 3, "name": "cat"}], iteration=5)
    good.save(tmp_path / "good.pt")
    assert Checkpoint.load(tmp_path / "good.pt").iteration == 5
    old = {"model": {"w": torch.ones(2)}, "config": {}, "categories": []}  # version 1: no "version" key
    torch.save(old, tmp_path / "old.pt")
    assert Checkpoint.load(tmp_path / "old.pt").version == SCHEMA_VERSION
    torch.save({"model": {}, "categories": [], "epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: not a checkpoint of this code's schema "
                                              r"\(missing config; unknown epoch\); use the version"):
        Checkpoint.load(tmp_path / "other.pt")
    torch.save({**old, "version": SCHEMA_VERSION + 1}, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match=f"schema version {SCHEMA_VERSION + 1}, this code reads up to"):
        Checkpoint.load(tmp_path / "newer.pt")

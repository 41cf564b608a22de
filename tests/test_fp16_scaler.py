"""fp16: a step the GradScaler skips (inf gradients) is a skipped step, on a CPU with a scripted scaler.

`ScriptedScaler` is torch's own GradScaler, enabled on the CPU, with an inf written into one
gradient on the calls it is told to: the real scaler then finds the inf, skips optimizer.step and
halves its scale, exactly as an fp16 overflow on a GPU does.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from retinanet.engine.checkpoint import load_checkpoint
from retinanet.engine.trainer import StepOptions, train_step
from retinanet.modeling.model import build_criterion, build_model
from retinanet.structures import Batch, Target
from tests.helpers import run_train, synthetic_overrides

CPU = torch.device("cpu")


class ScriptedScaler(torch.amp.GradScaler):
    """A real (CPU) GradScaler whose gradients overflow on the listed unscale_ calls (1-based)."""

    def __init__(self, overflow_on: set[int]) -> None:
        super().__init__("cpu", init_scale=2.0**8)
        self.overflow_on, self.calls = overflow_on, 0

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        self.calls += 1
        if self.calls in self.overflow_on:
            grad = next(p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None)
            grad.fill_(float("inf"))
        super().unscale_(optimizer)


def test_a_step_the_scaler_skips_is_reported_as_skipped(tiny_cfg) -> None:
    model = build_model(tiny_cfg, num_classes=2).train()
    criterion = build_criterion(tiny_cfg, 2)
    target = Target(torch.tensor([[10.0, 10, 60, 70]]), torch.tensor([1]))
    batch = Batch(torch.rand(2, 3, 128, 128), [(128, 128)] * 2, [target, target])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = ScriptedScaler(overflow_on={1})
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    skipped = train_step(model, criterion, optimizer, scaler, [batch], StepOptions(CPU))
    assert not skipped.finite  # counted as a good step before
    assert skipped.scaler_skipped
    assert scaler.get_scale() == 2.0**7
    assert all(torch.equal(v, before[k]) for k, v in model.named_parameters())  # BN statistics move, weights not
    applied = train_step(model, criterion, optimizer, scaler, [batch], StepOptions(CPU))
    assert (applied.finite, applied.scaler_skipped) == (True, False)
    assert not torch.equal(model.head.cls_logits.weight, before["head.cls_logits.weight"])


def test_fit_counts_a_scaler_skip_and_an_fp32_run_resumes_under_fp16(synthetic: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    """Iterations 1-2 without a scaler (its state is empty), then 3-4 with one that skips iteration 3:
    the resume loads, iteration 3 writes no train line, and neither the schedule nor the EMA moves on it."""
    sets = synthetic_overrides(synthetic) + ["train.eval_every=0", "train.checkpoint_every=1", "train.ema_decay=0.9"]
    assert run_train(tmp_path, sets + ["train.max_iters=2"]) == 0
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["scaler"] == {}
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled=True: ScriptedScaler(overflow_on={1}))
    assert run_train(tmp_path, sets + ["train.max_iters=4"], resume=True) == 0
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if l["kind"] == "train"] == [1, 2, 4]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (ckpt["iteration"], ckpt["skipped_steps"]) == (4, 1)
    assert ckpt["scheduler"]["last_epoch"] == 3 and ckpt["ema_updates"] == 3
    assert ckpt["scaler"]["scale"] == 2.0**7

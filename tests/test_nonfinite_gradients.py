"""A finite loss with inf or nan gradients: the step is skipped and counted like a non-finite loss.

Before, such a step was applied and counted as good (finite True): SGD and AdamW wrote the inf or nan
into the weights, clipping with an inf norm zeroed the whole gradient (and inf x 0 made nan), and a nan
norm turned every weight into nan. The cases are the issue's table: SGD or AdamW, grad_clip 0 or 10,
an inf or a nan written into head.cls_logits.weight's gradient by a hook.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from retinanet.config import load_config
from retinanet.engine import distributed, trainer as trainer_module
from retinanet.engine.checkpoint import load_checkpoint
from retinanet.engine.trainer import Progress, StepOptions, StepStats, Trainer, train_step
from retinanet.modeling.model import build_criterion, build_model
from retinanet.structures import Batch, Target
from tests.helpers import TINY_OVERRIDES, run_train, synthetic_overrides

CPU = torch.device("cpu")
POISONED = "head.cls_logits.weight"


def tiny() -> tuple[torch.nn.Module, Any, Batch]:
    cfg = load_config(None, TINY_OVERRIDES)
    model = build_model(cfg, num_classes=2).train()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = [Target(torch.tensor([[5.0, 5, 30, 35]]), torch.tensor([1])),
               Target(torch.tensor([[15.0, 20, 60, 50]]), torch.tensor([0]))]
    return model, build_criterion(cfg, 2), Batch(images, [(64, 64)] * 2, targets)


def poison(model: torch.nn.Module, value: float):
    """A hook that replaces head.cls_logits.weight's gradient with `value` everywhere; `.remove()` ends it."""
    return model.get_parameter(POISONED).register_hook(lambda grad: torch.full_like(grad, value))


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two optimizer state dicts hold the same values: tensors torch.equal, the rest =="""
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for index, state in a["state"].items():
        assert state.keys() == b["state"][index].keys()
        for key, value in state.items():
            other = b["state"][index][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, (index, key)


@pytest.mark.parametrize("injected", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("grad_clip", [0.0, 10.0])
@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_a_step_with_nonfinite_gradients_changes_nothing(optimizer_name: str, grad_clip: float,
                                                         injected: float) -> None:
    model, criterion, batch = tiny()
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if optimizer_name == "sgd"
                 else torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4))
    scaler, opts = torch.amp.GradScaler("cpu", enabled=False), StepOptions(CPU, grad_clip=grad_clip)
    assert train_step(model, criterion, optimizer, scaler, [batch], opts).finite  # momentum / moments to keep
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    state = copy.deepcopy(optimizer.state_dict())

    hook = poison(model, injected)
    stats = train_step(model, criterion, optimizer, scaler, [batch], opts)
    hook.remove()
    assert not stats.finite  # True before: the step was applied and counted as good
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]), name
        assert p.grad is None, name
    assert_same_state(optimizer.state_dict(), state)
    assert stats.nonfinite_grads and stats.nonfinite_params == (POISONED,) and not stats.scaler_skipped
    assert not torch.isfinite(torch.tensor(stats.grad_norm)) and torch.isfinite(torch.tensor(stats.loss))

    applied = train_step(model, criterion, optimizer, scaler, [batch], opts)  # the next step trains again
    assert applied.finite and not applied.nonfinite_grads
    assert not torch.equal(model.get_parameter(POISONED), params[POISONED])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fp16_keeps_the_grad_scalers_own_skip() -> None:
    """With a GradScaler the step is the scaler's to skip: counted as `scaler_skipped`, and its scale halves."""
    model, criterion, batch = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    hook = poison(model, float("inf"))
    stats = train_step(model, criterion, optimizer, scaler, [batch], StepOptions(CPU, grad_clip=10.0))
    hook.remove()
    assert (stats.finite, stats.scaler_skipped, stats.nonfinite_grads) == (False, True, False)
    assert scaler.get_scale() == 2.0**7
    assert all(torch.equal(p, params[name]) for name, p in model.named_parameters())


def test_every_rank_skips_when_another_ranks_gradients_are_not_finite(monkeypatch) -> None:
    """Rank 0 of 2, its own gradients finite: rank 1's non-finite flag, summed in, skips the step here too."""
    model, criterion, batch = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    reduced: list[torch.Tensor] = []

    def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
        reduced.append(tensor)
        return tensor + 1 if tensor.dim() == 0 else tensor  # rank 1: non-finite gradients, a zero share of the stats

    monkeypatch.setattr(distributed, "all_reduce_sum", all_reduce_sum)
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    stats = train_step(model, criterion, optimizer, torch.amp.GradScaler("cpu", enabled=False), [batch],
                       StepOptions(CPU, world_size=2))
    assert [t.dim() for t in reduced] == [1, 0]  # the stats, then the gradients' flag
    assert not stats.finite and stats.nonfinite_grads and stats.nonfinite_params == ()
    assert all(torch.equal(p, params[name]) for name, p in model.named_parameters())


class CountingEMA:
    def __init__(self) -> None:
        self.updates = 0

    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1


def recorder(max_nonfinite_steps: int) -> SimpleNamespace:
    """What Trainer.record reads: progress, ema, model, cfg.train.max_nonfinite_steps and out_dir."""
    cfg = SimpleNamespace(train=SimpleNamespace(max_nonfinite_steps=max_nonfinite_steps))
    return SimpleNamespace(progress=Progress(), ema=CountingEMA(), model=None, cfg=cfg, out_dir=Path("runs/x"))


def test_record_counts_a_gradient_skip_and_names_the_parameters(caplog) -> None:
    t = recorder(max_nonfinite_steps=3)
    good = StepStats(1.0, 0.5, 0.5, 4.0, 2.0, finite=True, images=2)
    names = ("fpn.p7.weight", "head.cls_logits.weight", "head.cls_logits.bias", "head.box_deltas.weight", "x.y")
    bad_grads = StepStats(1.0, 0.5, 0.5, 4.0, float("inf"), finite=False, images=2, nonfinite_grads=True,
                          nonfinite_params=names)
    with caplog.at_level(logging.WARNING, logger="retinanet"):
        Trainer.record(t, good, 0.1)
        Trainer.record(t, bad_grads, 0.1)
    assert (t.progress.iteration, t.progress.skipped_steps, t.progress.nonfinite_in_a_row) == (2, 1, 1)
    assert t.ema.updates == 1  # the EMA did not move on the skipped step
    assert caplog.messages == ["iteration 1: non-finite gradients in fpn.p7.weight, head.cls_logits.weight, "
                               "head.cls_logits.bias and 2 more, step skipped (1 in a row)"]
    Trainer.record(t, good, 0.1)
    assert t.progress.nonfinite_in_a_row == 0 and t.ema.updates == 2

    nan_loss = StepStats(*[float("nan")] * 3, 0.0, float("nan"), finite=False, images=0)
    Trainer.record(t, nan_loss, 0.1)
    Trainer.record(t, bad_grads, 0.1)
    with pytest.raises(FloatingPointError) as error:
        Trainer.record(t, StepStats(1.0, 0.5, 0.5, 4.0, float("nan"), finite=False, images=2, nonfinite_grads=True), 0.1)
    message = str(error.value)
    assert message == (f"3 steps in a row with a non-finite loss or gradients at iteration 5 (the last: non-finite "
                       f"gradient norm (its float32 sum overflowed, or another rank's gradients)); the last good "
                       f"checkpoint is {Path('runs/x/checkpoints/last.pt')}. Lower train.lr, raise "
                       f"train.warmup_iters or set train.grad_clip")
    assert (t.progress.skipped_steps, t.ema.updates) == (4, 2)


def test_fit_skips_and_counts_nonfinite_gradients_then_stops(synthetic: Path, tmp_path: Path, monkeypatch) -> None:
    """Through the loop: iteration 3 of 4 has an inf gradient; then every step from the third on has one."""
    backward = {"n": 0, "from": 3, "to": 3}
    real_build = trainer_module.build_model

    def build_poisoned(cfg, num_classes=None):
        model = real_build(cfg, num_classes)

        def hook(grad: torch.Tensor) -> torch.Tensor:
            backward["n"] += 1
            return torch.full_like(grad, float("inf")) if backward["from"] <= backward["n"] <= backward["to"] else grad

        model.get_parameter(POISONED).register_hook(hook)
        return model

    monkeypatch.setattr(trainer_module, "build_model", build_poisoned)
    sets = synthetic_overrides(synthetic) + ["train.eval_every=0", "train.checkpoint_every=1", "train.ema_decay=0.9"]
    assert run_train(tmp_path / "a", sets + ["train.max_iters=4"]) == 0
    lines = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if l["kind"] == "train"] == [1, 2, 4]  # a skipped step writes no train line
    ckpt = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    assert (ckpt["iteration"], ckpt["skipped_steps"]) == (4, 1)
    assert ckpt["scheduler"]["last_epoch"] == 3 and ckpt["ema_updates"] == 3  # neither moved on the skipped step
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert f"iteration 2: non-finite gradients in {POISONED}, step skipped (1 in a row)" in (
        tmp_path / "a" / "train.log").read_text()

    backward.update(n=0, to=10**9)
    with pytest.raises(FloatingPointError, match=r"^3 steps in a row with a non-finite loss or gradients at "
                                                 rf"iteration 4 \(the last: non-finite gradients in {POISONED}\); "
                                                 "the last good checkpoint is") as error:
        run_train(tmp_path / "b", sets + ["train.max_iters=8", "train.max_nonfinite_steps=3"])
    assert "\n" not in str(error.value)
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["iteration"] == 2

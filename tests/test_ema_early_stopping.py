"""Model EMA (hand-computed averages, exact resume) and early stopping (stops at the expected evaluation)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from retinanet.engine import trainer as trainer_module
from retinanet.engine.checkpoint import Checkpoint
from retinanet.engine.ema import ModelEMA
from tests.helpers import run_train, synthetic_overrides


def test_ema_equals_the_hand_computed_average() -> None:
    model = nn.Linear(1, 1, bias=False)
    model.weight.data.fill_(0.0)
    ema = ModelEMA(model, decay=0.5, warmup=1)
    expected = 0.0
    for k, weight in enumerate([1.0, 2.0, 3.0], start=1):
        model.weight.data.fill_(weight)
        ema.update(model)
        d = 0.5 * (1 - math.exp(-k))  # the warmed-up decay of update k
        expected = d * expected + (1 - d) * weight
        assert float(ema.module.weight) == pytest.approx(expected, rel=1e-6)
    assert ema.updates == 3
    assert expected == pytest.approx(2.2546, abs=1e-4)  # 0.6839 -> 1.4310 -> 2.2546, written out by hand
    assert not ema.module.weight.requires_grad


def test_ema_copies_integer_buffers() -> None:
    model = nn.BatchNorm1d(2)
    ema = ModelEMA(model, decay=0.9, warmup=10)
    model.num_batches_tracked.fill_(7)
    ema.update(model)
    assert int(ema.module.num_batches_tracked) == 7


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact_with_ema_and_repeat_factors(synthetic: Path, tmp_path: Path, workers: int) -> None:
    sets = synthetic_overrides(synthetic) + [
        "train.eval_every=0", "train.checkpoint_every=2", "train.ema_decay=0.9", "train.ema_warmup=2",
        "data.repeat_factor_threshold=0.5", f"data.num_workers={workers}", "train.deterministic=true",
    ]
    assert run_train(tmp_path / "full", sets + ["train.max_iters=4"]) == 0
    assert run_train(tmp_path / "half", sets + ["train.max_iters=2"]) == 0
    assert run_train(tmp_path / "half", sets + ["train.max_iters=4"], resume=True) == 0
    a = Checkpoint.load(tmp_path / "full" / "checkpoints" / "last.pt")
    b = Checkpoint.load(tmp_path / "half" / "checkpoints" / "last.pt")
    assert a.ema_updates == b.ema_updates == 4
    for name in a.model:
        assert torch.equal(a.model[name], b.model[name]), name
        assert torch.equal(a.ema[name], b.ema[name]), name
    assert any(not torch.equal(a.ema[n], a.model[n]) for n in a.model if a.model[n].is_floating_point())
    assert a.inference_weights is a.ema


@pytest.mark.slow
def test_early_stopping_stops_at_the_expected_evaluation(synthetic: Path, tmp_path: Path, monkeypatch) -> None:
    scripted = iter([0.10, 0.20, 0.22, 0.15, 0.30, 0.40])  # gains: +, +, 0.02 < min_delta, -, ...
    real_evaluate = trainer_module.evaluate

    def scripted_evaluate(*args, **kwargs):
        metrics, results, kept = real_evaluate(*args, **kwargs)
        return {**metrics, "AP": next(scripted)}, results, kept

    monkeypatch.setattr(trainer_module, "evaluate", scripted_evaluate)
    sets = synthetic_overrides(synthetic) + ["train.max_iters=6", "train.eval_every=1", "train.checkpoint_every=0",
                                             "train.patience=2", "train.min_delta=0.05", "eval.num_vis_images=0"]
    out = tmp_path / "run"
    assert run_train(out, sets) == 0
    last = Checkpoint.load(out / "checkpoints" / "last.pt")
    assert last.iteration == 4 and last.evals_without_gain == 2  # the 3rd and 4th evaluations gained too little
    assert Checkpoint.load(out / "checkpoints" / "best.pt").best_ap == pytest.approx(0.22)
    evals = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "eval"]
    assert evals == [1, 2, 3, 4]
    card = json.loads((out / "model_card.json").read_text())
    assert card["training"]["iterations"] == 4
    assert "stopping early at iteration 4" in (out / "train.log").read_text()


def test_fused_ema_update_gives_the_old_per_tensor_numbers(tiny_cfg) -> None:
    """One torch._foreach_lerp_ over all float tensors = the old loop of mul_(d).add_(x, alpha=1 - d), to rounding."""
    from retinanet.modeling.model import build_model

    model = build_model(tiny_cfg, num_classes=3).train()
    ema = ModelEMA(model, decay=0.9, warmup=2)
    reference = {k: v.clone() for k, v in ema.module.state_dict().items()}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model(torch.rand(2, 3, 64, 64))  # moves the BN statistics and num_batches_tracked
        d = ema.current_decay()
        ema.update(model)
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                reference[k].mul_(d).add_(v, alpha=1.0 - d)
            else:
                reference[k].copy_(v)
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, reference[k], rtol=1e-6, atol=1e-6, msg=k)
    counts = [int(v) for k, v in ema.module.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counts and set(counts) == {3}


def test_the_ema_copy_of_a_compiled_model_is_compiled_too(tiny_cfg) -> None:
    """Evaluation runs the EMA copy: without `compile` it would run eager (deepcopy drops the compiled call)."""
    from retinanet.engine.runtime import compile_model
    from retinanet.modeling.model import build_model

    model = compile_model(build_model(tiny_cfg, num_classes=3))
    assert ModelEMA(model, 0.9, 2).module.head._compiled_call_impl is None
    compiled = ModelEMA(model, 0.9, 2, compile=compile_model).module
    assert all(part._compiled_call_impl is not None for part in (compiled.backbone, compiled.fpn, compiled.head))

"""train.amp / train.compile: what `auto` resolves to (probes mocked), and that compiling changes nothing."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from retinanet.config import ConfigError, load_config
from retinanet.data.collate import collate
from retinanet.engine import runtime
from retinanet.engine.runtime import (
    COMPILE_BREAK_EVEN_ITERS, COMPILE_BREAK_EVEN_SECONDS,
    check_amp,
    compile_model,
    cpu_has_amx,
    resolve_amp,
    resolve_compile,
    resolve_runtime,
)
from retinanet.evaluation.model_card import load_model_card
from retinanet.modeling.model import build_criterion, build_model, build_postprocess
from retinanet.structures import Target
from tests.helpers import REPO, TINY_OVERRIDES, run_train, synthetic_overrides

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def amx(monkeypatch):
    """Set whether the CPU 'has' AMX."""
    def set_amx(value: bool) -> None:
        monkeypatch.setattr(runtime, "cpu_has_amx", lambda: value)
    return set_amx


@pytest.fixture
def cuda_bf16(monkeypatch):
    """Set whether the CUDA device 'has' bf16 (no GPU needed: only the probes are asked)."""
    def set_bf16(value: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: value)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    return set_bf16


def test_auto_amp_is_bf16_only_on_cpus_with_amx(amx) -> None:
    amx(True)
    assert resolve_amp("auto", CPU) == ("bf16", "auto: the CPU has AMX (amx_bf16)")
    amx(False)
    choice, why = resolve_amp("auto", CPU)
    assert choice == "none" and "no AMX" in why


def test_auto_amp_on_cuda_follows_bf16_support(amx, cuda_bf16) -> None:
    amx(False)  # the CPU does not matter for a CUDA run
    cuda_bf16(True)
    assert resolve_amp("auto", CUDA) == ("bf16", "auto: CUDA device Fake GPU has bf16 tensor cores")
    cuda_bf16(False)  # pre-Ampere (V100, T4): fp16 tensor cores only
    choice, why = resolve_amp("auto", CUDA)
    assert choice == "fp16" and "GradScaler" in why


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_explicit_amp_is_kept(amp: str, amx) -> None:
    amx(True)
    assert resolve_amp(amp, CPU) == (amp, f"train.amp={amp} as configured")


def test_fp16_on_cpu_is_still_an_error() -> None:
    with pytest.raises(ConfigError, match="x.yaml: train.amp: fp16 needs a CUDA device"):
        check_amp("fp16", CPU, "x.yaml")
    check_amp("auto", CPU, "x.yaml")


def test_amx_probe_reads_the_cpu_flags(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(runtime.AMX_ENV, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with_amx = tmp_path / "amx"
    with_amx.write_text("flags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n")
    without = tmp_path / "plain"
    without.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")  # bf16 vector ops alone are not AMX
    assert cpu_has_amx(with_amx) is True
    assert cpu_has_amx(without) is False
    assert cpu_has_amx(tmp_path / "missing") is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # torch's own probe as the fallback
    assert cpu_has_amx(without) is True


def test_auto_compile_only_where_it_repays_the_compile(amx, cuda_bf16, monkeypatch) -> None:
    monkeypatch.setattr(runtime.shutil, "which", lambda name: f"/usr/bin/{name}")
    long, short = COMPILE_BREAK_EVEN_ITERS, COMPILE_BREAK_EVEN_ITERS - 1
    amx(False)
    assert resolve_compile("auto", CPU, "none", 10 * long)[0] is False  # fp32 without AMX: never repays
    amx(True)
    assert resolve_compile("auto", CPU, "bf16", long)[0] is True
    assert resolve_compile("auto", CPU, "bf16", short)[0] is False
    assert resolve_compile("auto", CPU, "none", long)[0] is False  # AMX idles in fp32
    cuda_bf16(True)
    assert resolve_compile("auto", CUDA, "bf16", long)[0] is True
    assert resolve_compile("auto", CUDA, "bf16", short)[0] is False
    # A time budget: the same break-even in seconds, 936 steps of 1.4 - 0.141 s = 1178 s.
    assert COMPILE_BREAK_EVEN_SECONDS == pytest.approx(936 * 1.259)
    on, why = resolve_compile("auto", CUDA, "bf16", 10 * long, time_budget_s=15 * 60)
    assert on is False and why == "auto: a time budget of 15 min is shorter than the about 20 min that repay the compile time; eager"
    assert resolve_compile("auto", CUDA, "bf16", 10 * long, time_budget_s=3600)[0] is True
    assert resolve_compile("true", CPU, "none", 1) == (True, "train.compile=true as configured")
    assert resolve_compile("false", CUDA, "bf16", 10 * long) == (False, "train.compile=false as configured")
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    on, why = resolve_compile("auto", CPU, "bf16", long)
    assert on is False and "no C++ compiler" in why


def test_runtime_resolves_amp_before_compile(amx, monkeypatch) -> None:
    monkeypatch.setattr(runtime.shutil, "which", lambda name: f"/usr/bin/{name}")
    amx(True)
    chosen = resolve_runtime("auto", "auto", CPU, COMPILE_BREAK_EVEN_ITERS)
    assert (chosen.amp, chosen.compile) == ("bf16", True)
    assert chosen.to_dict() == {"amp": "bf16", "amp_reason": "auto: the CPU has AMX (amx_bf16)", "compile": True,
                                "compile_reason": chosen.compile_reason, "eval_amp": "none",
                                "eval_amp_reason": "eval.amp=none as configured",
                                "requested": {"train.amp": "auto", "train.compile": "auto", "eval.amp": "none"}}
    assert chosen.describe().startswith("mixed precision bf16 (auto: the CPU has AMX (amx_bf16)); torch.compile on")
    assert chosen.describe().endswith("evaluation precision none (eval.amp=none as configured)")
    assert resolve_runtime("auto", "auto", CPU, 10, "auto").eval_amp == "bf16"  # eval.amp=auto follows the hardware


def test_deterministic_algorithms_hold_for_the_run_only() -> None:
    before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              torch.are_deterministic_algorithms_enabled())
    with runtime.deterministic_algorithms(True):
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
            torch.are_deterministic_algorithms_enabled()) == before
    with runtime.deterministic_algorithms(False):
        assert torch.backends.cudnn.deterministic == before[0]


def test_compile_config_values() -> None:
    assert load_config(None).train.compile == "auto" and load_config(None).train.amp == "auto"
    assert load_config(None, ["train.compile=true"]).train.compile == "true"  # YAML's boolean, as the string
    assert load_config(None, ["train.compile=false"]).train.compile == "false"
    with pytest.raises(ConfigError, match="train.compile: 'yes please' is not one of auto, true, false"):
        load_config(None, ["train.compile=yes please"])


def test_compiled_model_stops_recompiling_over_many_input_sizes() -> None:
    """Dynamo's graph capture (backend eager: no kernels, fast) over 7 padded sizes in train and eval mode:
    the graphs stop growing once sizes are dynamic, and never reach the limit where dynamo runs eager."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = compile_model(build_model(load_config(None, TINY_OVERRIDES + ["model.num_classes=5"])), backend="eager")
    sizes = [(128, 128), (128, 256), (256, 128), (256, 256), (256, 384), (384, 256), (384, 384)]
    graphs = []
    with torch.no_grad():
        for train in (True, False):
            model.train(train)
            for h, w in sizes:
                model(torch.rand(2, 3, h, w))
                graphs.append(counters["stats"]["unique_graphs"])
    torch._dynamo.reset()
    train_graphs, eval_graphs = graphs[:7], graphs[7:]
    assert train_graphs[3:] == [train_graphs[3]] * 4 and eval_graphs[3:] == [eval_graphs[3]] * 4
    assert eval_graphs[-1] - train_graphs[-1] <= 12  # eval mode compiled too (at most 4 per part)


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    items = []
    for h, w in ((128, 128), (100, 128)):
        boxes = torch.tensor([[8.0, 10.0, 60.0, 50.0], [40.0, 30.0, 120.0, 90.0]])
        items.append((torch.rand(3, h, w, generator=gen), Target(boxes, torch.tensor([1, 3]), orig_size=(h, w))))
    return collate(items, size_divisible=128)


@pytest.mark.slow
def test_compiled_and_eager_give_the_same_loss_and_detections() -> None:
    cfg = load_config(None, TINY_OVERRIDES + ["model.num_classes=5", "model.postprocess.score_thresh=0.0",
                                              "model.postprocess.detections_per_img=20"])
    eager = build_model(cfg).to(memory_format=torch.channels_last)
    compiled = compile_model(copy.deepcopy(eager))
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no _orig_mod. prefixes
    criterion, postprocess = build_criterion(cfg, 5), build_postprocess(cfg)
    batch = _batch()
    losses = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        model.train()
        out = model(batch.images)
        losses[name] = criterion(out, batch.targets)
        losses[name]["loss"].backward()
    for key in ("loss", "loss_cls", "loss_box", "num_pos"):
        torch.testing.assert_close(losses["compiled"][key], losses["eager"][key], atol=1e-4, rtol=1e-4)
    assert losses["eager"]["num_pos"] > 0
    # Gradients: fp32 sums in another order, amplified through train-mode BN on random weights (stem ~0.6%).
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        if p.grad is not None:
            assert (q.grad - p.grad).norm() <= 2e-2 * p.grad.norm(), name
    dets = {}
    with torch.no_grad():
        for name, model in (("eager", eager), ("compiled", compiled)):
            model.eval()
            dets[name] = postprocess(model(batch.images), batch.image_sizes, [t.orig_size for t in batch.targets])
    for a, b in zip(dets["eager"], dets["compiled"]):
        assert len(a.scores) == 20
        torch.testing.assert_close(b.scores, a.scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(b.boxes_xyxy, a.boxes_xyxy, atol=1e-4, rtol=1e-4)
        assert torch.equal(b.labels, a.labels)


@pytest.mark.slow
def test_resume_continues_exactly_with_compile_on(synthetic: Path, tmp_path: Path) -> None:
    """4 compiled iterations equal 2 + --resume 2; the checkpoint holds the plain module's keys."""
    sets = synthetic_overrides(synthetic) + [
        "train.max_iters=4", "train.eval_every=0", "train.checkpoint_every=2", "train.compile=true", "model.num_classes=5",
        "train.deterministic=true",
    ]
    full = tmp_path / "full"
    assert run_train(full, sets) == 0
    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "checkpoints" / "last.prev.pt", interrupted / "checkpoints" / "last.pt")
    assert run_train(interrupted, sets, resume=True) == 0
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(interrupted / "checkpoints" / "last.pt", weights_only=True)
    assert b["iteration"] == 4
    assert not any(key.startswith("_orig_mod.") for key in a["model"])
    assert list(a["model"]) == list(build_model(load_config(REPO / "configs" / "demo_cpu.yaml", sets)).state_dict())
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, atol=1e-6, rtol=0, msg=key)
    card = load_model_card(full)
    assert card is not None and card.runtime["compile"] is True
    assert card.runtime["compile_reason"] == "train.compile=true as configured"
    assert "- torch.compile: on (train.compile=true as configured)" in (full / "MODEL_CARD.md").read_text()
    assert json.loads((full / "model_card.json").read_text())["runtime"]["amp"] in ("none", "bf16")


def test_sync_bn_is_eager_under_auto_and_refused_with_compile_true(tiny_cfg) -> None:
    from retinanet.config import replace
    from retinanet.engine.trainer import check_train_config

    long = 10 * COMPILE_BREAK_EVEN_ITERS
    eager, why = resolve_compile("auto", CUDA, "bf16", long, sync_bn=True)
    assert eager is False and "train.sync_bn" in why
    assert resolve_compile("auto", CUDA, "bf16", long, sync_bn=False)[0] is True
    assert resolve_compile("true", CUDA, "bf16", long, sync_bn=True)[0] is True  # refused by check_train_config
    cfg = replace(tiny_cfg, **{"train.sync_bn": True, "train.compile": "true", "train.amp": "none"})
    with pytest.raises(ConfigError, match="train.sync_bn with train.compile=true"):
        check_train_config(cfg, "run.yaml", CUDA, world=2)
    check_train_config(cfg, "run.yaml", CUDA, world=1)  # one process: no SyncBatchNorm, nothing to refuse


def test_deterministic_algorithms_hold_for_the_run_and_restore_after() -> None:
    from retinanet.engine.runtime import deterministic_algorithms

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    with deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is False
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before
    with deterministic_algorithms(False):
        assert torch.are_deterministic_algorithms_enabled() == before[0]
    assert load_config(None).train.deterministic is False

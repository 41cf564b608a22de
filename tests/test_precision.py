"""Precision: box arithmetic stays float32 under any autocast, bf16 runs on any CPU within stated tolerances,
eval.amp (not train.amp) decides the numbers of record, and RETINANET_CPU_AMX forces the AMX probe.

bf16 autocast runs on every CPU (only slower without AMX), so these tests run everywhere.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retinanet.cli import evaluate, predict
from retinanet.config import ConfigError, load_config
from retinanet.data.collate import collate
from retinanet.engine import runtime
from retinanet.engine.runtime import AMX_ENV, RUNTIME_FILE, autocast, cpu_has_amx, read_runtime_record
from retinanet.engine.trainer import StepOptions, train_step
from retinanet.engine.optim import build_optimizer
from retinanet.evaluation.evaluator import STAT_NAMES
from retinanet.evaluation.model_card import load_model_card
from retinanet.modeling.box_coder import BoxCoder
from retinanet.modeling.fpn import FPN
from retinanet.modeling.model import RetinaNet, build_criterion, build_model, build_postprocess
from retinanet.structures import Target
from tests.helpers import REPO, TINY_OVERRIDES

CPU = torch.device("cpu")
BF16 = torch.autocast("cpu", dtype=torch.bfloat16)
# 1280 x 1408: bf16 keeps 8 significant bits, so coordinates above 1024 px land on an 8 px grid.
LARGE = (1280, 1408)


class PooledBackbone(nn.Module):
    """C3-C5 by pooling and one 1x1 conv each: the real model's shapes at a fraction of ResNet's cost on a large input."""

    out_channels = [8, 8, 8]

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, 8, 1) for _ in range(3))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {f"c{i + 3}": conv(F.avg_pool2d(images, 2 ** (i + 3))) for i, conv in enumerate(self.convs)}


@pytest.fixture(scope="module")
def large_outputs():
    """One model's fp32 and bf16-autocast outputs on a large input, and targets spread over it."""
    torch.manual_seed(0)
    cfg = load_config(None, TINY_OVERRIDES + ["model.num_classes=3", "model.fpn.channels=16", "model.head.channels=16"])
    model = build_model(cfg)
    model = RetinaNet(PooledBackbone(), FPN([8, 8, 8], 16, "c5"), model.head, model.anchor_generator).eval()
    images = torch.randn(1, 3, *LARGE)
    with torch.no_grad():
        fp32 = model(images)
        with BF16:
            bf16 = model(images)
    boxes = torch.tensor([[1001.0, 1033.0, 1117.0, 1251.0], [613.0, 97.0, 655.0, 149.0], [1203.0, 8.0, 1397.0, 301.0],
                          [17.0, 1150.0, 530.0, 1279.0]])
    targets = [Target(boxes, torch.tensor([0, 1, 2, 0]), torch.zeros(4, dtype=torch.bool), 1, LARGE)]
    return cfg, fp32, bf16, targets


def test_anchors_are_float32_and_equal_under_bf16_autocast(large_outputs) -> None:
    _, fp32, bf16, _ = large_outputs
    assert bf16.box_deltas.dtype == torch.bfloat16  # the head did run in bf16
    assert bf16.anchors.dtype == torch.float32
    assert torch.equal(bf16.anchors, fp32.anchors)
    # The trap this guards: the same anchors rounded to bf16 are off by whole pixels at this size.
    assert (fp32.anchors.bfloat16().float() - fp32.anchors).abs().max() >= 3.0  # measured 3.93 px


def test_matcher_assignments_are_equal_under_bf16_autocast(large_outputs) -> None:
    cfg, fp32, bf16, targets = large_outputs
    criterion = build_criterion(cfg, 3)
    labels, matched = criterion.assign(fp32.anchors, targets)
    with BF16:
        labels_bf16, matched_bf16 = criterion.assign(bf16.anchors, targets)
        losses = criterion(bf16, targets)
    assert torch.equal(labels_bf16, labels) and torch.equal(matched_bf16, matched)
    assert matched_bf16.dtype == torch.float32
    assert int(losses["num_pos"]) == int((labels >= 0).logical_and(labels < 3).sum()) > 0
    assert losses["loss"].dtype == torch.float32


def test_decode_and_postprocess_are_float32_for_bf16_outputs(large_outputs) -> None:
    cfg, fp32, bf16, _ = large_outputs
    deltas = torch.randn(50, 4).bfloat16()
    anchors = fp32.anchors[-50:]
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0), 4.0)
    boxes = coder.decode(deltas, anchors)
    assert boxes.dtype == torch.float32 and torch.equal(boxes, coder.decode(deltas.float(), anchors))
    with BF16:
        dets = build_postprocess(cfg)(bf16, [LARGE])
    assert dets[0].boxes_xyxy.dtype == torch.float32


def _tiny_batch():
    gen = torch.Generator().manual_seed(3)
    items = []
    for h, w in ((128, 128), (96, 128)):
        boxes = torch.tensor([[8.0, 10.0, 60.0, 50.0], [40.0, 30.0, 120.0, 90.0]])
        items.append((torch.rand(3, h, w, generator=gen), Target(boxes, torch.tensor([1, 2]), orig_size=(h, w))))
    return collate(items, size_divisible=128)


def test_bf16_train_step_stays_close_to_fp32() -> None:
    """One bf16 step against one fp32 step from the same weights. Tolerances for bf16 (8 significant bits):
    the loss within 1 % (measured 0.06 %); the update points the same way, cosine >= 0.9 (measured 0.97; bf16
    gradients of a randomly initialized network differ by about 20 % in norm, mostly in near-zero entries)."""
    cfg = load_config(None, TINY_OVERRIDES + ["model.num_classes=3", "model.backbone.norm=gn"])
    batch = _tiny_batch()
    results = {}
    for amp in ("none", "bf16"):
        torch.manual_seed(0)
        model = build_model(cfg).train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = build_optimizer(cfg.train, model)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        stats = train_step(model, build_criterion(cfg, 3), optimizer, scaler, [batch], StepOptions(CPU, amp, 10.0))
        assert stats.finite and all(p.dtype == torch.float32 for p in model.parameters())
        results[amp] = (stats, {k: v - before[k] for k, v in model.state_dict().items() if v.is_floating_point()})
    (fp32, step_fp32), (bf16, step_bf16) = results["none"], results["bf16"]
    assert bf16.num_pos == fp32.num_pos  # float32 matching: the same positives
    assert bf16.loss == pytest.approx(fp32.loss, rel=1e-2)
    update = torch.cat([v.flatten() for v in step_fp32.values()])
    update_bf16 = torch.cat([step_bf16[k].flatten() for k in step_fp32])
    cosine = float(F.cosine_similarity(update, update_bf16, dim=0))
    assert cosine >= 0.9


def test_amx_probe_can_be_forced_either_way(monkeypatch) -> None:
    monkeypatch.setenv(AMX_ENV, "1")
    assert cpu_has_amx() is True and runtime.resolve_amp("auto", CPU)[0] == "bf16"
    monkeypatch.setenv(AMX_ENV, "0")
    assert cpu_has_amx() is False and runtime.resolve_amp("auto", CPU)[0] == "none"
    monkeypatch.setenv(AMX_ENV, "yes")
    with pytest.raises(ConfigError, match=f"{AMX_ENV}=yes: must be 0 .* or 1"):
        cpu_has_amx()


def test_eval_amp_defaults_to_fp32_and_fp16_needs_cuda() -> None:
    assert load_config(None).eval.amp == "none"
    assert load_config(REPO / "configs" / "demo_cpu.yaml").eval.amp == "none"
    assert runtime.resolve_eval_amp("none", CPU, "x.yaml") == ("none", "eval.amp=none as configured")
    with pytest.raises(ConfigError, match="x.yaml: eval.amp: fp16 needs a CUDA device"):
        runtime.resolve_eval_amp("fp16", CPU, "x.yaml")


def test_autocast_none_is_a_no_op() -> None:
    with autocast(CPU, "none"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


# ----------------------------------------------------------------------------- the numbers of record


def _evaluate(run: Path, out: Path, *sets: str) -> dict:
    args = ["--config", str(run / "config.yaml"), "--checkpoint", str(run / "checkpoints" / "last.pt"),
            "--output-dir", str(out)]
    assert evaluate.main(args + (["--set", *sets] if sets else [])) == 0
    return json.loads((out / "metrics.json").read_text())


def test_eval_amp_not_train_amp_decides_the_metrics(trained_run: Path, tmp_path: Path) -> None:
    """Defaults, eval.amp=none and a train.amp of bf16 give the same 12 numbers to the last digit; bf16 evaluation
    is recorded as such and stays close (tiny model: AP within 0.05)."""
    default = _evaluate(trained_run, tmp_path / "default")
    pinned = _evaluate(trained_run, tmp_path / "pinned", "eval.amp=none")
    trained_bf16 = _evaluate(trained_run, tmp_path / "train_bf16", "train.amp=bf16", "train.compile=false")
    fast = _evaluate(trained_run, tmp_path / "bf16", "eval.amp=bf16")
    assert default["amp"] == pinned["amp"] == trained_bf16["amp"] == "none" and fast["amp"] == "bf16"
    assert [default[k] for k in STAT_NAMES] == [pinned[k] for k in STAT_NAMES] == [trained_bf16[k] for k in STAT_NAMES]
    assert default["AP50"] is not None and fast["AP50"] == pytest.approx(default["AP50"], abs=0.05)


def test_run_records_what_it_used(trained_run: Path) -> None:
    record = read_runtime_record(trained_run)
    assert record is not None and (trained_run / RUNTIME_FILE).is_file()
    assert record["requested"] == {"train.amp": "none", "train.compile": "false", "eval.amp": "none"}
    assert (record["amp"], record["eval_amp"]) == ("none", "none")
    env = record["environment"]
    assert env["torch"] == torch.__version__ and env["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    assert "cpu_flags" in env and "torchvision" in env
    card = load_model_card(trained_run)
    assert card is not None and card.runtime["eval_amp"] == "none" and card.runtime["environment"]["torch"] == env["torch"]
    assert "- evaluation precision: none (eval.amp=none as configured)" in (trained_run / "MODEL_CARD.md").read_text()


def test_predict_records_its_precision(trained_run: Path, tmp_path: Path) -> None:
    source = load_config(trained_run / "config.yaml").data.val.images
    for amp in ("none", "bf16"):
        out = tmp_path / amp
        sets = [] if amp == "none" else ["--set", f"eval.amp={amp}"]
        assert predict.main(["--checkpoint", str(trained_run / "checkpoints" / "last.pt"), "--input", source,
                             "--output-dir", str(out), "--score-thresh", "0.0", "--device", "cpu", *sets]) == 0
        records = json.loads((out / "detections.json").read_text())
        assert records and {r["amp"] for r in records} == {amp}

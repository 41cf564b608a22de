"""Training and inference throughput of our RetinaNet against torchvision's, lever by lever, plus
data-loading and COCO-evaluation time. Prints a table and writes JSON.

    python scripts/benchmark.py [--device cpu|cuda] [--backbone resnet50] [--size 512] [--batch-size 4]
        [--iters 5] [--warmup 1] [--workers 2] [--amp auto|none|bf16] [--compile] [--rows LEVER,...]
        [--loader-batches 20] [--eval-images 300] [--peak-tflops T] [--json FILE] [--profile DIR]

Every row sees the same random size x size images with 1-8 random boxes each, and the same weights
(torchvision's random init, copied into ours). Both models are set up as for fine-tuning from
ImageNet: frozen BatchNorm, stem and layer1 frozen (torchvision's trainable_backbone_layers=3), P6
from P5 (torchvision v1), 256-channel 4-conv heads, 80 classes.

- `torchvision`: `torchvision.models.detection.RetinaNet` as `retinanet_resnet50_fpn` builds it with a
  backbone checkpoint (min_size = max_size = size, so its transform does not resize), fp32, default
  memory format, SGD momentum 0.9 (its references). Train step: model(images, targets), losses
  summed, backward, step. Inference: model.eval()(images). Its transform normalizes inside the step;
  ours does that in the data loader (`loader` row).
- `torchvision_best`: the same torchvision model at its own best on this hardware, what a torchvision
  user gets in two lines: bf16 autocast where the hardware has bf16 units (CUDA, AMX; fp32 elsewhere),
  channels_last, and torch.compile with --compile. The table gives every row against both.
- `ours_*`: build_model / build_criterion / build_postprocess from the paper's recipe config, the
  optimizer of `engine.build_optimizer` (fused SGD), `engine.autocast` and `engine.place_model`.
  Train step: `engine.trainer.train_step`, the step training runs. Inference: `engine.predict` (forward and
  the batched PostProcess). One row per lever: fp32 or bf16 autocast, NCHW or channels_last, and
  with --compile torch.compile on the recommended setting (its JSON adds compile_s and
  compile_break_even_steps: the train steps whose gain over `ours` repays the compile).
- `ours`: the recommended setting, channels_last plus `--amp` (auto: bf16 on CUDA and on CPUs with
  AMX; fp32 on other CPUs, where oneDNN's bf16 convolutions are slower than fp32 ones).
- `onnxruntime` (--device cpu, inference only): the `ours_fp32` weights exported by
  `deploy.export.export_onnx` (static graph, NMS inside) and run by onnxruntime's CPU execution
  provider with all graph optimizations, on the same prepared batch and as many threads as torch.
- `openvino_f32`, `openvino_bf16` (only where OpenVINO lists bf16 units), `openvino_int8` (--device cpu,
  inference only): the same file run by OpenVINO's CPU plugin at that precision; INT8 is NNCF's
  post-training quantization (`deploy.quantize`) calibrated on the timed batch (random weights: a
  speed figure, not an accuracy one), its other layers at the `auto` precision.

Timing interleaves the rows: every round runs one train step of each row, then one inference of
each, so load from other processes spreads over all rows alike. A figure is the median over
`--iters` rounds after `--warmup` rounds (CUDA synchronized around every step). The first warm-up
train step counts FLOPs (torch.utils.flop_counter, forward + backward); on CUDA the table adds MFU
against the GPU's dense bf16 peak and the peak memory of a step (model and optimizer state plus
what the step allocates).

`loader`: images/s of `data.loaders.build_train_loader` with `--workers` workers over a synthetic
set at size x size (PNG decode, flip, resize, normalize, pad), from the first batch to the last.
With `--loader-config CONFIG [--set KEY=VALUE ...]` the benchmark times only the loader, on that
config's training data and settings (sizes, augmentations, workers, batch), for `--loader-epochs`
epochs in each of `--loader-modes`: `full` decodes every image in full (the loader before reduced
decoding), `none`, `ram` and `disk` are `data.cache` (disk in a new temporary folder, so the first
epoch builds it). Epoch 1 counts from building the loader (the cache's fill, the workers' start) to
its last batch; the modes take turns epoch by epoch, so load from other processes spreads over all.
`coco_eval`: seconds for `CocoEvaluator` update + compute on 100 generated detections per image
of a synthetic val set, per backend (pycocotools, faster-coco-eval when installed).

`--profile DIR`: after the timing, one train step and one inference of `ours` and of
`torchvision_best` (when eager) under torch.profiler (`engine.profiling`): the time of each phase
(forward with backbone, FPN and head inside it, loss, backward, optimizer; postprocess) is printed
and goes to the JSON, the op tables to DIR/<row>_profile.txt, Chrome traces beside them.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torchvision
from pycocotools.coco import COCO
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

REPO = Path(__file__).resolve().parents[2]

from retinanet.data.collate import collate
from retinanet.structures import Batch
from retinanet.data.loaders import build_dataset, build_train_loader
from retinanet.data.synthetic import make_dataset
from retinanet.modeling.compat import load_torchvision_state_dict
from retinanet.config import Config, ConfigError, load_config, replace
from retinanet.engine.runtime import autocast, compile_model, place_model, resolve_amp
from retinanet.engine.optim import build_optimizer
from retinanet.engine.profiling import PREDICT_PHASES, TRAIN_PHASES, phase, profile_call
from retinanet.engine.inference import predict
from retinanet.engine.trainer import StepOptions, train_step
from retinanet.evaluation.evaluator import STAT_NAMES, CocoEvaluator
from retinanet.deploy.export import DEFAULT_OPSET, ModelMetadata, export_onnx, require
from retinanet.deploy.exported_detector import ExportedDetector
from retinanet.deploy.openvino_detector import OpenVinoDetector
from retinanet.deploy.openvino_export import read_onnx, save_ir
from retinanet.deploy.quantize import quantize_int8
from retinanet.modeling.model import build_criterion, build_model, build_postprocess
from retinanet.deploy.onnx_detector import OnnxDetector
from retinanet.modeling.preprocess import IMAGENET_MEAN, IMAGENET_STD
from retinanet.evaluation.model_card import cpu_name
from retinanet.structures import Target

RECIPE = REPO / "configs" / "retinanet_r50_fpn_1x_coco.yaml"
NUM_CLASSES = 80
# Dense bf16 tensor-core peaks (TFLOPS) by a substring of torch.cuda.get_device_name(); first match wins,
# so each PCIe/NVL name comes before the bare name, which is the SXM card's peak (NVIDIA data sheets).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("A100", 312.0),
)
ONNX_ROW = "onnxruntime"  # inference only, --device cpu
OPENVINO_ROWS = ("openvino_f32", "openvino_bf16", "openvino_int8")  # inference only, --device cpu
# The optional packages each exported row needs: exporting (onnx, onnxscript) and running the file.
ROW_MODULES: dict[str, tuple[str, ...]] = {
    ONNX_ROW: ("onnx", "onnxscript", "onnxruntime"),
    "openvino_f32": ("onnx", "onnxscript", "openvino"),
    "openvino_bf16": ("onnx", "onnxscript", "openvino"),
    "openvino_int8": ("onnx", "onnxscript", "openvino", "nncf"),
}
LEVER_ROWS: tuple[tuple[str, str, bool], ...] = (  # name, amp, channels_last
    ("ours_fp32", "none", False),
    ("ours_fp32_channels_last", "none", True),
    ("ours_bf16", "bf16", False),
    ("ours_bf16_channels_last", "bf16", True),
)


@dataclass
class Row:
    """One setting: its train and inference steps, and what timing them gave."""

    name: str
    label: str
    train_step: Callable[[], None] | None  # None: an inference-only row (onnxruntime, OpenVINO)
    infer_step: Callable[[], None]
    state_bytes: Callable[[], tuple[int, int]]  # (train: params + buffers + optimizer state, inference: params + buffers)
    settings: dict[str, Any]
    # Its gradients are freed before each timed train step, so the step's peak above what was resident
    # counts them (allocated in backward) for every row alike, whenever a row's step frees its old ones.
    optimizer: torch.optim.Optimizer | None = None
    train_times: list[float] = field(default_factory=list)
    infer_times: list[float] = field(default_factory=list)
    train_extra_bytes: int = 0
    infer_extra_bytes: int = 0
    train_flops: float = 0.0
    first_call_s: float = 0.0  # compiled rows: the first train step plus the first inference, compiling both
    parts: dict[str, nn.Module] = field(default_factory=dict)  # backbone, FPN, head, for --profile (eager rows)
    train_phases: tuple[str, ...] = ()  # the phase scopes its train step marks
    infer_phases: tuple[str, ...] = ()  # and its inference


def recommended_amp(device: torch.device, amp: str) -> str:
    """bf16 where the hardware has bf16 matrix units (CUDA, AMX); on AVX-512 alone bf16 convs lose to fp32."""
    return resolve_amp(amp, device)[0]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_inputs(size: int, batch_size: int, seed: int = 0) -> tuple[list[torch.Tensor], list[Target]]:
    """Images in [0, 1] and 1-8 random boxes per image with labels 0..79."""
    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch_size):
        images.append(torch.rand(3, size, size, generator=gen))
        m = int(torch.randint(1, 9, (1,), generator=gen))
        xy = torch.rand(m, 2, generator=gen) * size * 0.7
        wh = (0.05 + 0.3 * torch.rand(m, 2, generator=gen)) * size
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        targets.append(Target(boxes, torch.randint(0, NUM_CLASSES, (m,), generator=gen)))
    return images, targets


def build_torchvision(backbone: str, size: int) -> TorchvisionRetinaNet:
    """What retinanet_resnet50_fpn(weights_backbone=...) builds (frozen BN, 3 trainable stages), without a download."""
    body = resnet_fpn_backbone(
        backbone_name=backbone,
        weights=None,
        norm_layer=FrozenBatchNorm2d,
        trainable_layers=3,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    return TorchvisionRetinaNet(body, NUM_CLASSES, min_size=size, max_size=size)


def ours_config(args: argparse.Namespace, backbone_weights: Path, amp: str, channels_last: bool) -> Config:
    """The paper's recipe with the backbone, size and classes of this benchmark and torchvision v1's P6."""
    return load_config(
        RECIPE,
        [
            f"model.backbone.name={args.backbone}",
            f"model.backbone.weights={backbone_weights}",
            "model.fpn.p6_from=p5",
            f"model.num_classes={NUM_CLASSES}",
            f"input.min_size=[{args.size}]",
            f"input.max_size={args.size}",
            f"train.batch_size={args.batch_size}",
            f"train.amp={amp}",
            f"train.channels_last={str(channels_last).lower()}",
            f"train.device={args.device}",
        ],
    )


def tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def model_bytes(model: nn.Module) -> int:
    return tensor_bytes(model.parameters()) + tensor_bytes(model.buffers())


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(tensor_bytes(state.values()) for state in optimizer.state.values())


def torchvision_row(
    tv: TorchvisionRetinaNet, images: list[torch.Tensor], targets: list[Target], lr: float, device: torch.device,
    name: str = "torchvision", amp: str = "none", channels_last: bool = False, compiled: bool = False,
) -> Row:
    """torchvision's RetinaNet as its references train it (the defaults), or at its best setting: `amp`
    autocast around its forward (losses included, as a user adds it), channels_last, torch.compile."""
    tv = tv.to(device, memory_format=torch.channels_last) if channels_last else tv.to(device)
    net = torch.compile(tv) if compiled else tv
    images = [im.to(device) for im in images]
    tv_targets = [{"boxes": t.boxes_xyxy.to(device), "labels": t.labels.to(device)} for t in targets]
    optimizer = torch.optim.SGD([p for p in tv.parameters() if p.requires_grad], lr=lr, momentum=0.9, weight_decay=1e-4)

    def train_step() -> None:
        tv.train()
        with phase("forward"), autocast(device, amp):  # torchvision computes its loss inside forward
            loss = sum(net(images, tv_targets).values())
        optimizer.zero_grad(set_to_none=True)
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            optimizer.step()

    @torch.no_grad()
    def infer_step() -> None:
        tv.eval()
        with autocast(device, amp):
            net(images)
        tv.train()

    label = (f"torchvision {'bf16' if amp == 'bf16' else 'fp32'} {'channels_last' if channels_last else 'NCHW'}"
             + (" compiled" if compiled else ""))
    parts = {} if compiled else {"backbone": tv.backbone.body, "fpn": tv.backbone.fpn, "head": tv.head}
    return Row(
        name, label, train_step, infer_step,
        lambda: (model_bytes(tv) + optimizer_bytes(optimizer), model_bytes(tv)),
        {"amp": amp, "channels_last": channels_last, "compiled": compiled}, optimizer=optimizer,
        parts=parts, train_phases=("forward", "backward", "optimizer"),
    )


def torchvision_best_row(
    args: argparse.Namespace, tv_state: dict[str, torch.Tensor], images: list[torch.Tensor], targets: list[Target],
    lr: float, device: torch.device,
) -> Row:
    """torchvision at its own best on this hardware: bf16 autocast where it has bf16 units (what `auto`
    picks), channels_last, and torch.compile with --compile; same initial weights as every row."""
    tv = build_torchvision(args.backbone, args.size)
    tv.load_state_dict(tv_state)
    amp = resolve_amp("auto", device)[0]
    return torchvision_row(tv, images, targets, lr, device, "torchvision_best", amp, True, args.compile)


def ours_row(
    name: str, cfg: Config, tv_state: dict[str, torch.Tensor], batch: Batch, device: torch.device, compiled: bool
) -> Row:
    model = build_model(cfg)
    load_torchvision_state_dict(model, tv_state)
    model = place_model(model, device, cfg.train.channels_last)
    net = compile_model(model) if compiled else model  # as training compiles it
    criterion = build_criterion(cfg, NUM_CLASSES)
    postprocess = build_postprocess(cfg)
    optimizer = build_optimizer(cfg.train, model)
    batch = batch.to(device)
    amp = cfg.train.amp

    scaler = torch.amp.GradScaler(device.type, enabled=False)
    options = StepOptions(device, amp, cfg.train.grad_clip)

    def step() -> None:
        """The training loop's own step (engine.trainer.train_step), not a copy of it."""
        net.train()
        train_step(net, criterion, optimizer, scaler, [batch], options)

    def infer_step() -> None:
        for _ in predict(net, postprocess, [batch], device, amp):
            pass

    label = f"ours {'bf16' if amp == 'bf16' else 'fp32'} {'channels_last' if cfg.train.channels_last else 'NCHW'}"
    parts = {} if compiled else {"backbone": model.backbone, "fpn": model.fpn, "head": model.head}
    return Row(
        name, label + (" compiled" if compiled else ""), step, infer_step,
        lambda: (model_bytes(model) + optimizer_bytes(optimizer), model_bytes(model)),
        {"amp": amp, "channels_last": cfg.train.channels_last, "compiled": compiled}, optimizer=optimizer,
        parts=parts, train_phases=TRAIN_PHASES, infer_phases=PREDICT_PHASES,
    )


def runnable_exported_rows(rows: set[str], by_default: bool) -> set[str]:
    """The exported rows whose packages are installed: without the `export` extra a default run skips
    them with a note; a row asked for by --rows with a missing package is a one-line error."""
    runnable = set()
    for row in sorted(rows):
        missing = [name for name in ROW_MODULES[row] if importlib.util.find_spec(name) is None]
        if not missing:
            runnable.add(row)
        elif by_default:
            print(f"note: the {row} row is skipped: {', '.join(missing)} not installed (`pip install -e .[export]`)")
        else:
            require(missing[0])
    return runnable


def export_for_rows(cfg: Config, tv_state: dict[str, torch.Tensor], batch: Batch, path: Path) -> tuple[ModelMetadata, int]:
    """The `ours_fp32` weights exported (static, this batch's shape, constants folded) to `path`: the
    file the onnxruntime and OpenVINO rows run. Returns its metadata and the model's bytes."""
    model = build_model(cfg).eval()
    load_torchvision_state_dict(model, tv_state)
    categories = [{"id": i + 1, "name": str(i)} for i in range(NUM_CLASSES)]
    metadata = ModelMetadata.from_config(cfg, categories, IMAGENET_MEAN, IMAGENET_STD)
    export_onnx(model, build_postprocess(cfg), metadata, path, batch_size=batch.images.shape[0])
    return metadata, model_bytes(model)


def exported_row(name: str, detector: ExportedDetector, batch: Batch, size: int) -> Row:
    """An inference-only row: `detector.run`, the graph (network, decoding, NMS) on the prepared batch."""

    def infer_step() -> None:
        detector.run(batch.images, batch.image_sizes)

    settings = {"amp": "none" if detector.precision == "f32" else detector.precision, "channels_last": False, "compiled": False, "onnx_opset": DEFAULT_OPSET,
                "runtime": detector.describe()}
    return Row(name, detector.label, None, infer_step, lambda: (0, size), settings)


def openvino_rows(path: Path, metadata: ModelMetadata, batch: Batch, size: int, wanted: set[str]) -> list[Row]:
    """OpenVINO on the exported file: f32, bf16 where the CPU has bf16 units, and INT8 (NNCF post-training
    quantization calibrated on this batch; its other layers at `auto` precision). Same threads as torch."""
    ov = require("openvino")
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    threads = torch.get_num_threads()
    rows = []
    for name, precision in (("openvino_f32", "f32"), ("openvino_bf16", "bf16")):
        if name in wanted and (precision == "f32" or "BF16" in capabilities):
            rows.append(exported_row(name, OpenVinoDetector(path, precision, threads), batch, size))
    if "openvino_int8" in wanted:
        inputs = [{"images": batch.images.numpy(), "image_sizes": np.asarray(batch.image_sizes, dtype=np.int64)}]
        quantized, method = quantize_int8(read_onnx(path), inputs)
        int8_meta = dataclasses.replace(metadata, precision="int8", calibration={"images": "the benchmark batch", **method})
        int8_path = save_ir(quantized, int8_meta, path.with_name("model_int8.xml"))
        rows.append(exported_row("openvino_int8", OpenVinoDetector(int8_path, "auto", threads), batch, size))
    return rows


def timed(fn: Callable[[], None], device: torch.device) -> tuple[float, int]:
    """Seconds of one call, and on CUDA the memory it allocated above what was resident before."""
    synchronize(device)
    before = 0
    if device.type == "cuda":
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    extra = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else 0
    return seconds, extra


def count_flops(fn: Callable[[], None]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def run_rows(rows: list[Row], warmup: int, iters: int, device: torch.device) -> None:
    """Interleaved rounds: each round one train step of every row, then one inference of every row."""
    for round_index in range(warmup + iters):
        for row in rows:
            if row.train_step is None:
                continue
            if round_index == 0 and not row.settings["compiled"]:
                row.train_flops = count_flops(row.train_step)
                continue
            if round_index == 0:  # compile both modes, then once more: the filled anchor cache recompiles once
                row.first_call_s = timed(row.train_step, device)[0] + timed(row.infer_step, device)[0]
            if row.optimizer is not None:
                row.optimizer.zero_grad(set_to_none=True)
            seconds, extra = timed(row.train_step, device)
            if round_index >= warmup:
                row.train_times.append(seconds)
                row.train_extra_bytes = max(row.train_extra_bytes, extra)
        for row in rows:
            seconds, extra = timed(row.infer_step, device)
            if round_index >= warmup:
                row.infer_times.append(seconds)
                row.infer_extra_bytes = max(row.infer_extra_bytes, extra)
        print(f"round {round_index + 1}/{warmup + iters} done", file=sys.stderr, flush=True)


def profile_rows(rows: list[Row], out_dir: Path, device: torch.device) -> dict[str, Any]:
    """One profiled train step and inference of each eager row given: phase times, op tables, Chrome traces.

    `out_dir` exists (the command line creates it before the timing starts)."""
    figures: dict[str, Any] = {}
    for row in rows:
        train = profile_call(f"{row.name} train step", row.train_step, row.train_phases, row.parts, device,
                             trace=out_dir / f"{row.name}_train_trace.json")
        infer = profile_call(f"{row.name} inference", row.infer_step, row.infer_phases, row.parts, device,
                             trace=out_dir / f"{row.name}_infer_trace.json")
        text = "\n\n".join([train.format(), infer.format(), "train step ops:\n" + train.op_table,
                             "inference ops:\n" + infer.op_table])
        (out_dir / f"{row.name}_profile.txt").write_text(text + "\n")
        print(train.format() + "\n" + infer.format())
        figures[row.name] = {"train_ms": train.wall_ms, "train_phases_ms": train.phases,
                             "infer_ms": infer.wall_ms, "infer_phases_ms": infer.phases}
    print(f"profiles: {out_dir}")
    return figures


def compile_break_even(compiled: dict[str, Any], eager: dict[str, Any]) -> dict[str, Any]:
    """Compile seconds (first calls less one step of each mode) and the train steps whose gain repays them."""
    compile_s = compiled["first_call_s"] - compiled["train_step_s"] - compiled["infer_step_s"]
    gain_s = eager["train_step_s"] - compiled["train_step_s"]
    return {"compile_s": compile_s, "train_step_gain_s": gain_s,
            "compile_break_even_steps": compile_s / gain_s if gain_s > 0 else None}


def peak_tflops(device: torch.device, override: float) -> float | None:
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def row_figures(row: Row, batch_size: int, device: torch.device, peak: float | None) -> dict[str, Any]:
    infer_s = statistics.median(row.infer_times)
    out: dict[str, Any] = {
        "label": row.label,
        **row.settings,
        "infer_step_s": infer_s,
        "infer_images_per_s": batch_size / infer_s,
        "infer_step_s_min": min(row.infer_times),  # on a busy machine noise only adds: the min is the cleaner figure
        "infer_step_s_all": row.infer_times,
    }
    if row.train_times:
        train_s = statistics.median(row.train_times)
        out.update({"train_step_s": train_s, "train_images_per_s": batch_size / train_s,
                    "train_step_s_min": min(row.train_times), "train_step_s_all": row.train_times})
    if row.first_call_s:
        out["first_call_s"] = row.first_call_s
    if row.train_flops:
        out["train_flops_per_step"] = row.train_flops
        out["train_tflops_per_s"] = row.train_flops / train_s / 1e12
        if peak:
            out["train_mfu"] = row.train_flops / train_s / (peak * 1e12)
    if device.type == "cuda" and row.train_times:
        train_state, infer_state = row.state_bytes()
        out["train_peak_memory_gb"] = (train_state + row.train_extra_bytes) / 1e9
        out["infer_peak_memory_gb"] = (infer_state + row.infer_extra_bytes) / 1e9
    return out


def bench_loader(args: argparse.Namespace, root: Path, backbone_weights: Path) -> dict[str, Any]:
    """Images/s out of the training DataLoader, from the first batch (workers started) to the last."""
    make_dataset(root, seed=0, num_train=max(32, args.batch_size * 4), num_val=1, image_size=args.size)
    cfg = load_config(
        RECIPE,
        [
            f"data.train.images={root / 'train'}",
            f"data.train.annotations={root / 'annotations' / 'instances_train.json'}",
            f"data.num_workers={args.workers}",
            f"train.batch_size={args.batch_size}",
            f"input.min_size=[{args.size}]",
            f"input.max_size={args.size}",
            f"model.backbone.weights={backbone_weights}",
        ],
    )
    loader = build_train_loader(cfg, build_dataset(cfg, "train", "benchmark"))
    batches = iter(loader)
    next(batches)
    start = time.perf_counter()
    for _ in range(args.loader_batches):
        next(batches)
    seconds = time.perf_counter() - start
    del batches
    return {
        "images_per_s": args.loader_batches * args.batch_size / seconds,
        "workers": args.workers,
        "batches": args.loader_batches,
        "dataset": f"synthetic PNG {args.size}x{args.size}",
    }


LOADER_MODES = ("full", "none", "ram", "disk")
LOADER_LABELS = {"full": "full decode, no cache (before reduced decoding)", "none": "data.cache=none (reduced decode)",
                 "ram": "data.cache=ram", "disk": "data.cache=disk"}


def bench_loader_config(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Images/s of the training loader on a config's data, per epoch, for each loader mode, epochs taking turns."""
    cfg = load_config(args.loader_config, args.set)
    source = str(args.loader_config)
    modes = [m.strip() for m in args.loader_modes.split(",") if m.strip()]
    loaders, figures = {}, {}
    for mode in modes:
        mode_cfg = replace(cfg, **{"data.cache": "none" if mode == "full" else mode,
                                   "data.cache_dir": str(tmp / f"cache_{mode}")})
        dataset = build_dataset(mode_cfg, "train", source)
        if mode == "full":
            dataset.decode_size = None  # every image decoded in full, as before reduced decoding
        loaders[mode] = (mode_cfg, dataset)
        figures[mode] = {"label": LOADER_LABELS[mode], "epoch_s": [], "epoch_images": [], "images_per_s": []}
    iterators: dict[str, Any] = {}
    for epoch in range(args.loader_epochs):
        for mode in modes:
            mode_cfg, dataset = loaders[mode]
            start = time.perf_counter()
            if epoch == 0:
                loader = build_train_loader(mode_cfg, dataset)
                iterators[mode] = (loader, iter(loader))
            loader, batches = iterators[mode]
            images = 0
            for _ in range(len(loader.batch_sampler.epoch_batches(epoch))):
                images += len(next(batches).targets)
            seconds = time.perf_counter() - start
            fig = figures[mode]
            fig["epoch_s"].append(seconds)
            fig["epoch_images"].append(images)
            fig["images_per_s"].append(images / seconds)
            if dataset.cache is not None:
                fig["cache_mb"] = dataset.cache.nbytes / 1e6
                fig["cache_mb_per_1000_images"] = dataset.cache.nbytes / len(dataset) * 1000 / 1e6
            print(f"loader {mode} epoch {epoch + 1}: {images / seconds:.1f} img/s", file=sys.stderr, flush=True)
    del iterators
    return {
        "config": source, "overrides": list(args.set), "images": len(loaders[modes[0]][1]),
        "batch_size": cfg.train.batch_size, "workers": cfg.data.num_workers,
        "min_size": list(cfg.input.min_size), "max_size": cfg.input.max_size, "modes": figures,
    }


def format_loader_table(result: dict[str, Any]) -> str:
    epochs = len(next(iter(result["modes"].values()))["images_per_s"])
    lines = [f"training loader on {result['config']} {' '.join(result['overrides'])}: {result['images']} images, "
             f"batch {result['batch_size']}, {result['workers']} workers, min_size {result['min_size']}, "
             f"max_size {result['max_size']}; images/s",
             f"{'mode':<50}" + "".join(f"{f'epoch {e + 1}':>10}" for e in range(epochs)) + f"{'cache MB':>10}"]
    for fig in result["modes"].values():
        cache = f"{fig['cache_mb']:.0f}" if "cache_mb" in fig else "-"
        lines.append(f"{fig['label']:<50}" + "".join(f"{v:>10.1f}" for v in fig["images_per_s"]) + f"{cache:>10}")
    return "\n".join(lines)


def loader_environment() -> dict[str, Any]:
    return {"device_name": cpu_name(), "torch": torch.__version__, "opencv": cv2.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average_1m_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def run_loader_benchmark(args: argparse.Namespace) -> int:
    """--loader-config: the loader alone, on a config's data; prints the table and writes the JSON."""
    report: dict[str, Any] = {"environment": loader_environment()}
    with tempfile.TemporaryDirectory() as tmp_dir:
        report["loader_config"] = bench_loader_config(args, Path(tmp_dir))
    report["environment"]["load_average_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(format_loader_table(report["loader_config"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"figures: {args.json}")
    return 0


def fake_results(coco: Any, per_image: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """`per_image` detections per image: a jittered copy of every ground-truth box, the rest random."""
    rng = np.random.default_rng(seed)
    category_ids = sorted(coco.getCatIds())
    records = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        width, height = info["width"], info["height"]
        boxes = []
        for ann in coco.imgToAnns.get(image_id, [])[:per_image]:
            x, y, w, h = ann["bbox"]
            jitter = rng.normal(0, 0.1, size=4) * [w, h, w, h]
            boxes.append(([x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]], ann["category_id"], rng.uniform(0.3, 1)))
        while len(boxes) < per_image:
            w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
            box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
            boxes.append((box, int(rng.choice(category_ids)), rng.uniform(0.01, 0.6)))
        for box, category_id, score in boxes:
            records.append(
                {
                    "image_id": image_id,
                    "category_id": int(category_id),
                    "bbox": [round(float(v), 2) for v in box],
                    "score": round(float(score), 5),
                }
            )
    return records


def bench_coco_eval(num_images: int, root: Path, repeats: int = 3) -> dict[str, Any]:
    """Seconds of CocoEvaluator update + compute per backend (median of interleaved repeats)."""
    make_dataset(root, seed=0, num_train=0, num_val=num_images, image_size=128)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(root / "annotations" / "instances_val.json"))
    records = fake_results(coco)
    evaluators: dict[str, CocoEvaluator] = {"pycocotools": CocoEvaluator(coco)}
    out: dict[str, Any] = {"images": num_images, "detections": len(records), "faster_coco_eval_s": None}
    try:
        evaluators["faster_coco_eval"] = CocoEvaluator(coco, backend="faster_coco_eval")
    except ConfigError as exc:  # faster-coco-eval not installed
        out["faster_coco_eval_note"] = str(exc)
    times: dict[str, list[float]] = {name: [] for name in evaluators}
    stats: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, evaluator in evaluators.items():
            evaluator.reset()
            start = time.perf_counter()
            evaluator.update(records)
            metrics = evaluator.compute()
            times[name].append(time.perf_counter() - start)
            stats[name] = [metrics[k] for k in STAT_NAMES]
    for name, values in times.items():
        out[f"{name}_s"] = statistics.median(values)
    if "faster_coco_eval" in stats:
        out["max_abs_stat_difference"] = max(abs(a - b) for a, b in zip(stats["pycocotools"], stats["faster_coco_eval"]))
    return out


def environment(args: argparse.Namespace, device: torch.device, amp: str) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "device": args.device,
        "device_name": name,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1m_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "backbone": args.backbone,
        "size": args.size,
        "batch_size": args.batch_size,
        "iters": args.iters,
        "warmup": args.warmup,
        "ours_amp": amp,
    }


def format_table(report: dict[str, Any], names: list[str], device: torch.device) -> str:
    tv = report["torchvision"]
    header = (f"{'setting':<36} {'train img/s':>11} {'infer img/s':>11} {'train x tv':>10} {'infer x tv':>10} "
              f"{'train x best':>12} {'infer x best':>12}")
    cuda = device.type == "cuda"
    if cuda:
        header += f" {'MFU':>6} {'train GB':>8}"
    lines = [header]
    for name in names:
        row = report[name]
        label = row["label"] + ("  [ours]" if name == report["ours"]["row"] else "")
        if "train_images_per_s" not in row:  # inference-only row
            lines.append(f"{label:<36} {'-':>11} {row['infer_images_per_s']:>11.3f} {'-':>10} "
                         f"{row['infer_images_per_s'] / tv['infer_images_per_s']:>10.2f} {'-':>12} "
                         f"{row['infer_speedup_vs_torchvision_best']:>12.2f}")
            continue
        line = (
            f"{label:<36} {row['train_images_per_s']:>11.3f} {row['infer_images_per_s']:>11.3f} "
            f"{row['train_images_per_s'] / tv['train_images_per_s']:>10.2f} "
            f"{row['infer_images_per_s'] / tv['infer_images_per_s']:>10.2f} "
            f"{row['train_speedup_vs_torchvision_best']:>12.2f} {row['infer_speedup_vs_torchvision_best']:>12.2f}"
        )
        if cuda:
            mfu = row.get("train_mfu")
            line += f" {'-' if mfu is None else f'{100 * mfu:.1f}%':>6} {row['train_peak_memory_gb']:>8.2f}"
        lines.append(line)
    if "ours_compiled" in report:
        oc = report["ours_compiled"]
        steps = oc["compile_break_even_steps"]
        lines.append(f"torch.compile: {oc['compile_s']:.0f} s to compile, {oc['train_step_gain_s']:+.3f} s per train step "
                     f"vs {report['ours']['row']}; break-even " + ("never" if steps is None else f"after {steps:.0f} steps"))
    if "loader" in report:
        lines.append(f"data loader ({report['loader']['workers']} workers): {report['loader']['images_per_s']:.1f} img/s")
    if "coco_eval" in report:
        ce = report["coco_eval"]
        fast = ce.get("faster_coco_eval_s")
        lines.append(
            f"COCO eval, {ce['images']} images x 100 dets: pycocotools {ce['pycocotools_s']:.2f} s, faster-coco-eval "
            + ("not installed" if fast is None else f"{fast:.2f} s")
        )
    return "\n".join(lines)


def run_benchmark(args: argparse.Namespace) -> int:
    """Every row on the same weights and images, interleaved; prints the table and writes the JSON."""
    if args.loader_config is not None:
        return run_loader_benchmark(args)
    device = torch.device(args.device)
    amp = recommended_amp(device, args.amp)
    ours_name = next(name for name, a, cl in LEVER_ROWS if a == amp and cl)
    wanted = {r.strip() for r in args.rows.split(",") if r.strip()} or None
    known = {"ours_compiled", ONNX_ROW, *OPENVINO_ROWS, *(name for name, _, _ in LEVER_ROWS)}
    if wanted and not wanted <= known:
        raise SystemExit(f"--rows: unknown {sorted(wanted - known)}; choose from {sorted(known)}")

    torch.manual_seed(0)
    images, targets = make_inputs(args.size, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        tv = build_torchvision(args.backbone, args.size)
        tv_state = tv.state_dict()
        backbone_weights = tmp / "backbone.pt"  # a weights file, so the recipe's frozen stages apply as in fine-tuning
        torch.save(tv.backbone.body.state_dict(), backbone_weights)

        cfg0 = ours_config(args, backbone_weights, "none", False)
        batch = collate(list(zip(images, targets)), size_divisible=cfg0.input.size_divisible)
        rows = [torchvision_row(tv, images, targets, cfg0.train.lr, device),
                torchvision_best_row(args, tv_state, images, targets, cfg0.train.lr, device)]
        for name, row_amp, channels_last in LEVER_ROWS:
            if wanted is None or name in wanted or name in ("ours_fp32", ours_name):
                cfg = ours_config(args, backbone_weights, row_amp, channels_last)
                rows.append(ours_row(name, cfg, tv_state, batch, device, compiled=False))
        if args.compile and (wanted is None or "ours_compiled" in wanted):
            cfg = ours_config(args, backbone_weights, amp, True)
            rows.append(ours_row("ours_compiled", cfg, tv_state, batch, device, compiled=True))
        exported = {ONNX_ROW, *OPENVINO_ROWS} if wanted is None else wanted & {ONNX_ROW, *OPENVINO_ROWS}
        exported = runnable_exported_rows(exported, wanted is None) if device.type == "cpu" else set()
        if exported:
            onnx_path = tmp / "model.onnx"
            metadata, size = export_for_rows(ours_config(args, backbone_weights, "none", False), tv_state, batch, onnx_path)
            if ONNX_ROW in exported:
                rows.append(exported_row(ONNX_ROW, OnnxDetector(onnx_path, threads=torch.get_num_threads()), batch, size))
            if exported & set(OPENVINO_ROWS):
                rows += openvino_rows(onnx_path, metadata, batch, size, exported)

        report: dict[str, Any] = {"environment": environment(args, device, amp)}
        run_rows(rows, args.warmup, args.iters, device)
        if args.profile is not None:
            profiled = [row for row in rows if row.name in (ours_name, "torchvision_best") and row.parts and row.train_step]
            report["profile"] = profile_rows(profiled, args.profile, device)
        peak = peak_tflops(device, args.peak_tflops)
        for row in rows:
            report[row.name] = row_figures(row, args.batch_size, device, peak)
        for row in rows:
            if row.name == "ours_compiled":  # FLOPs are not counted through torch.compile: same model as `ours`
                figures = report[row.name]
                flops = report[ours_name].get("train_flops_per_step", 0.0)
                figures["train_flops_per_step"] = flops
                figures["train_tflops_per_s"] = flops / figures["train_step_s"] / 1e12
                if peak:
                    figures["train_mfu"] = flops / figures["train_step_s"] / (peak * 1e12)
        tv_fig, best_fig = report["torchvision"], report["torchvision_best"]
        for row in rows:
            fig = report[row.name]
            if "train_images_per_s" in fig:  # the exported-file rows are inference only
                fig["train_speedup_vs_torchvision"] = fig["train_images_per_s"] / tv_fig["train_images_per_s"]
                fig["train_speedup_vs_torchvision_best"] = fig["train_images_per_s"] / best_fig["train_images_per_s"]
            fig["infer_speedup_vs_torchvision"] = fig["infer_images_per_s"] / tv_fig["infer_images_per_s"]
            fig["infer_speedup_vs_torchvision_best"] = fig["infer_images_per_s"] / best_fig["infer_images_per_s"]
        if "ours_compiled" in report:
            report["ours_compiled"].update(compile_break_even(report["ours_compiled"], report[ours_name]))
        report["ours"] = {"row": ours_name, **report[ours_name]}
        report["environment"]["peak_tflops"] = peak
        names = [row.name for row in rows]
        del rows, tv, tv_state

        if args.loader_batches > 0:
            report["loader"] = bench_loader(args, tmp / "loader_set", backbone_weights)
        if args.eval_images > 0:
            report["coco_eval"] = bench_coco_eval(args.eval_images, tmp / "eval_set")
    report["environment"]["load_average_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    print(format_table(report, names, device))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"figures: {args.json}")
    return 0

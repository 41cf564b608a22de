"""Training pieces: optimizer, schedule, AMP, checkpoints, RNG state, and the evaluation loop."""
from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed
from .config import ConfigError, TrainConfig
from .evaluator import CocoEvaluator, detections_to_coco
from .postprocess import PostProcess
from .types import Detections


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_amp(amp: str, device: torch.device, source: str) -> None:
    """bf16 works on CPU and GPU; fp16 needs a GPU (and a GradScaler). Checked once at start-up."""
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"{source}: train.amp: fp16 needs a CUDA device, this run is on {device}; use bf16")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the model's forward pass; losses stay float32 regardless."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def place_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Move to the device and, when asked, to NHWC; convolutions then keep NHWC from input to head."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for module in model.modules():
        is_norm = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (no_decay if cfg.no_decay_norm_bias and (is_norm or name == "bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    # The fused kernels update all parameters in one pass (AdamW: ~5x faster than the per-tensor loop on CPU).
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


class LRFactor:
    """Multiplier of the base lr at an iteration: linear warmup, then multistep, cosine or constant."""

    def __init__(self, cfg: TrainConfig):
        self.warmup_iters = cfg.warmup_iters
        self.warmup_factor = cfg.warmup_factor
        self.schedule = cfg.schedule
        self.steps = tuple(cfg.steps)
        self.lr_decay = cfg.lr_decay
        self.max_iters = cfg.max_iters

    def __call__(self, it: int) -> float:
        if self.schedule == "multistep":
            factor = self.lr_decay ** sum(it >= s for s in self.steps)
        elif self.schedule == "cosine":
            factor = 0.5 * (1 + math.cos(math.pi * min(it, self.max_iters) / self.max_iters))
        else:
            factor = 1.0
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRFactor(cfg))


# ----------------------------------------------------------------------------- checkpoints


def rng_state() -> dict[str, Any]:
    """Every RNG the loop touches, in types that torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], path: Path, keep_previous: bool = True) -> None:
    """Write atomically: temp file, fsync, rename. The previous file survives as `<name>.prev.pt`.

    A crash at any moment leaves either the old or the new checkpoint complete at `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"{path}: could not write the checkpoint ({str(exc).splitlines()[0][:100]}); the previous checkpoint "
            "is intact; free disk space and continue with --resume"
        ) from None
    if keep_previous and path.exists():
        prev = path.with_name(path.stem + ".prev.pt")
        prev_tmp = path.with_name(f".{prev.name}.tmp")
        shutil.copyfile(path, prev_tmp)
        os.replace(prev_tmp, prev)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file (model card, operating point) so a crash leaves the old or the new one, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load with weights_only=True (no code runs from the file), with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check the path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or corrupt files all end here
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            "the file may be truncated or not written by train.py"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: no 'model' entry; this is not a checkpoint written by train.py")
    return state


def load_model_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Load weights with a message that says which part differs (classes, backbone, head)."""
    own = model.state_dict()
    cls_key = "head.cls_logits.weight"
    if cls_key in state_dict and cls_key in own and state_dict[cls_key].shape != own[cls_key].shape:
        raise CheckpointError(
            f"{path}: checkpoint head has {state_dict[cls_key].shape[0]} outputs, this model "
            f"{own[cls_key].shape[0]} (different num_classes); to fine-tune on new classes pass it as "
            f"--set train.init_from={path}, which loads everything but the classification output"
        )
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or mismatched:
        example = (mismatched or missing or unexpected)[0]
        raise CheckpointError(
            f"{path}: weights do not fit this model ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} with other shapes, e.g. '{example}'); use the config the checkpoint was trained "
            "with (model.backbone.name, model.fpn.channels, model.head.*)"
        )
    model.load_state_dict(state_dict)


def load_for_finetune(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load every weight whose name and shape fit; returns the skipped names (e.g. a new class head)."""
    own = model.state_dict()
    usable = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return sorted(k for k in own if k not in usable)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(
    model: nn.Module,
    postprocess: PostProcess,
    loader: Iterable,
    device: torch.device,
    amp: str = "none",
) -> Iterable[tuple[Any, list[Detections]]]:
    """Yields (batch, detections in original-image pixels) for every batch of an evaluation loader."""
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            images = batch.images.to(device, non_blocking=True)
            with autocast(device, amp):
                outputs = model(images)
            orig = [t.orig_size for t in batch.targets]
            yield batch, postprocess(outputs, batch.image_sizes, orig)
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module,
    postprocess: PostProcess,
    loader: Iterable,
    evaluator: CocoEvaluator,
    label_to_category_id: Sequence[int],
    device: torch.device,
    amp: str = "none",
    keep_images: int = 0,
) -> tuple[dict[str, Any], list[dict], list[tuple[Any, Detections, Any]]]:
    """COCO metrics, the COCO result records, and up to `keep_images` (image, detections, target) for drawing.

    Under torchrun `loader` holds this rank's contiguous shard of the val set: the records and image
    ids of all shards are gathered in rank order (the dataset's order), rank 0 runs the one COCO
    evaluation and sends its metrics to every rank. Rank 0 returns all records, the other ranks their
    shard's; only rank 0's `evaluator` has computed.
    """
    sharded = distributed.is_distributed()
    evaluator.reset()
    results: list[dict] = []
    image_ids: list[int] = []
    kept: list[tuple[Any, Detections, Any]] = []
    for batch, dets in predict(model, postprocess, loader, device, amp):
        batch_records: list[dict] = []
        for i, (det, target) in enumerate(zip(dets, batch.targets)):
            det = Detections(det.boxes_xyxy.cpu(), det.scores.cpu(), det.labels.cpu())
            batch_records.extend(detections_to_coco(target.image_id, det, label_to_category_id))
            if len(kept) < keep_images:
                h, w = batch.image_sizes[i]
                kept.append((batch.images[i, :, :h, :w], det, target))
        batch_ids = [t.image_id for t in batch.targets]
        if not sharded:
            evaluator.update(batch_records, image_ids=batch_ids)
        results.extend(batch_records)
        image_ids.extend(batch_ids)
    if not sharded:
        return evaluator.compute(), results, kept
    shards = distributed.gather_object((results, image_ids))  # None except on rank 0
    metrics = None
    if shards is not None:
        results = [record for shard_records, _ in shards for record in shard_records]
        evaluator.update(results, image_ids=[i for _, shard_ids in shards for i in shard_ids])
        metrics = evaluator.compute()
    return distributed.broadcast_object(metrics), results, kept

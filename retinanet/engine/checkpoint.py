"""The checkpoint: one schema (`Checkpoint`), written and read here and nowhere else.

A checkpoint file is a plain dict of tensors, numbers, strings and lists, so it loads with
`torch.load(path, weights_only=True)` and no code from the file runs. `Checkpoint.save` writes it
atomically and keeps the previous file; `Checkpoint.load` checks its keys and gives a one-line
error for a file of another schema.
"""
from __future__ import annotations

import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retinanet.config import Config, deep_merge, from_dict, parse_overrides
from retinanet.fileio import RunFileError


class CheckpointError(RunFileError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


SCHEMA_VERSION = 3  # 1: without "version", 2: without "budget" (both read as 3)


@dataclass
class Checkpoint:
    """Everything a run needs to resume exactly, and an application needs to run the model.

    `config` is the resolved config as a dict (`to_dict`), `categories` the dataset's
    `{"id", "name"}` in label order (label i is category `categories[i]["id"]`). The training
    state (`optimizer` ... `rng`) is None in a checkpoint made for inference only.
    """

    model: dict[str, torch.Tensor]
    config: dict[str, Any]
    categories: list[dict[str, Any]]
    iteration: int = 0
    best_ap: float = -1.0
    train_seconds: float = 0.0
    skipped_steps: int = 0  # non-finite steps skipped over the whole run, across --resume
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    criterion: dict[str, Any] | None = None  # DetectionLoss state (the EMA normalizer)
    rng: dict[str, Any] | None = None  # rng_state()
    ema: dict[str, torch.Tensor] | None = None  # the EMA weights (train.ema_decay > 0)
    ema_updates: int = 0
    evals_without_gain: int = 0  # early stopping's count (train.patience)
    # train.time_budget: the plan followed (engine.budget.Plan.to_dict) and Budget.state_dict (time spent,
    # measured times); None without a budget
    budget: dict[str, Any] | None = None
    version: int = SCHEMA_VERSION

    def build_config(self, source: str = "checkpoint", overrides: Sequence[str] = ()) -> Config:
        """The run's config as a frozen Config (with `model.num_classes` set), with `--set` overrides."""
        tree = parse_overrides(overrides)
        return from_dict(deep_merge(self.config, tree) if tree else self.config, f"{source} + --set" if tree else source)

    @property
    def inference_weights(self) -> dict[str, torch.Tensor]:
        """What evaluation and deployment run: the EMA weights when the run kept them, else the model's."""
        return self.ema if self.ema is not None else self.model

    @property
    def category_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.categories]

    @property
    def category_names(self) -> list[str]:
        return [str(c["name"]) for c in self.categories]

    def save(self, path: Path, keep_previous: bool = True) -> None:
        save_checkpoint(asdict(self), Path(path), keep_previous)

    @classmethod
    def load(cls, path: Path, map_location: str | torch.device = "cpu") -> "Checkpoint":
        """Read and check a checkpoint; a missing file, a foreign file or another schema is a CheckpointError."""
        path = Path(path)
        state = load_checkpoint(path, map_location)
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.name in ("model", "config", "categories")}
        missing, unknown = sorted(required - set(state)), sorted(set(state) - names)
        version = state.get("version", 1)
        too_new = not isinstance(version, int) or version > SCHEMA_VERSION
        if missing or unknown or too_new:
            problems = [f"missing {', '.join(missing)}" if missing else "",
                        f"unknown {', '.join(unknown)}" if unknown else "",
                        f"schema version {version}, this code reads up to {SCHEMA_VERSION}" if too_new else ""]
            detail = "; ".join(p for p in problems if p)
            raise CheckpointError(
                f"{path}: not a checkpoint of this code's schema ({detail}); use the version of the code that wrote "
                "it, or retrain"
            )
        state["version"] = SCHEMA_VERSION
        return cls(**state)


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
        state["cuda"] = [torch.cuda.get_rng_state()]  # this process's device only: see set_rng_state
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`. CUDA RNG state is per device and a process trains on one (its
    LOCAL_RANK's), so its state is saved as a one-element list and restored to the current device:
    a run resumes on any number of visible GPUs. Rank 0 writes the checkpoint and every rank starts
    from the same seed, so every rank restores rank 0's state. Checkpoints of older code hold one state
    per GPU visible at save time; the first is cuda:0's, the device rank 0 (and a one-GPU run) used."""
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])


def previous_path(path: Path) -> Path:
    """Where save_checkpoint keeps the file it replaces: `last.pt` -> `last.prev.pt`."""
    return path.with_name(path.stem + ".prev.pt")


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
        prev = previous_path(path)
        prev_tmp = path.with_name(f".{prev.name}.tmp")
        shutil.copyfile(path, prev_tmp)
        os.replace(prev_tmp, prev)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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

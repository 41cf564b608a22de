"""Where and how the model runs: device choice, mixed precision, memory layout."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from retinanet.config import ConfigError


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

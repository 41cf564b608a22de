"""Where and how the model runs: device choice, mixed precision, memory layout."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """AMX tiles with bf16 (Intel Sapphire Rapids and later): the kernel's CPU flag, else torch's own probe."""
    try:
        if re.search(r"\bamx_bf16\b", cpuinfo.read_text()):
            return True
    except OSError:
        pass
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_amp(amp: str, device: torch.device) -> tuple[str, str]:
    """`train.amp` -> ("none" | "bf16" | "fp16", why). auto picks bf16 only where the hardware has bf16
    matrix units: on a CPU without AMX oneDNN's bf16 convolutions are slower than fp32 ones. A GPU
    before Ampere (V100, T4) has fp16 tensor cores only: auto takes fp16 there, with the GradScaler."""
    if amp != "auto":
        return amp, f"train.amp={amp} as configured"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"auto: CUDA device {name} has bf16 tensor cores"
        return "fp16", f"auto: CUDA device {name} has fp16 but no bf16 tensor cores (compute capability < 8.0); fp16 with a GradScaler"
    if device.type == "cpu":
        if cpu_has_amx():
            return "bf16", "auto: the CPU has AMX (amx_bf16)"
        return "none", "auto: the CPU has no AMX, where bf16 convolutions are slower than fp32; fp32"
    return "none", f"auto: no bf16 rule for device {device}, fp32"


# Iterations after which torch.compile has repaid its compile time, where it gains per step at all
# (CUDA; CPUs with AMX running bf16). Measured: docs/speed.md.
COMPILE_BREAK_EVEN_ITERS = 2000


def resolve_compile(compile: str, device: torch.device, amp: str, max_iters: int) -> tuple[bool, str]:
    """`train.compile` -> (on, why). auto compiles where a step gains and the run is long enough to repay
    the compile (minutes on a CPU); an fp32 step on a CPU without AMX gains too little to ever repay it."""
    if compile != "auto":
        return compile == "true", f"train.compile={compile} as configured"
    if device.type == "cpu" and shutil.which("c++") is None and shutil.which("g++") is None:
        return False, "auto: no C++ compiler on PATH for torch.compile's CPU kernels; eager"
    gains = device.type == "cuda" or (device.type == "cpu" and amp == "bf16" and cpu_has_amx())
    if not gains:
        return False, f"auto: a {amp if amp != 'none' else 'fp32'} step on {device.type} without AMX gains too little to repay the compile time; eager"
    if max_iters < COMPILE_BREAK_EVEN_ITERS:
        return False, (f"auto: {max_iters} iterations are fewer than the {COMPILE_BREAK_EVEN_ITERS} that repay "
                       "the compile time; eager")
    return True, f"auto: {max_iters} iterations repay the compile time (break-even about {COMPILE_BREAK_EVEN_ITERS})"


@dataclass(frozen=True)
class Runtime:
    """What `auto` resolved to on this machine, and why: the log line and the model card say it."""

    amp: str  # "none" | "bf16" | "fp16"
    amp_reason: str
    compile: bool
    compile_reason: str

    def describe(self) -> str:
        return (f"mixed precision {self.amp} ({self.amp_reason}); torch.compile {'on' if self.compile else 'off'} "
                f"({self.compile_reason})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_runtime(amp: str, compile: str, device: torch.device, max_iters: int) -> Runtime:
    """`train.amp` and `train.compile` resolved once for a run."""
    amp_choice, amp_reason = resolve_amp(amp, device)
    on, compile_reason = resolve_compile(compile, device, amp_choice, max_iters)
    return Runtime(amp_choice, amp_reason, on, compile_reason)


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """torch.compile of the dense part (backbone, FPN, head) in place (`nn.Module.compile`).

    In place: the state dict keeps plain keys (no `_orig_mod.`) and DDP wraps the module as before.
    The anchor generator stays eager: its per-shape cache made dynamo recompile the whole model for
    every new input size until its limit of 8, after which it silently ran eager (evaluation included).
    The dense part under dynamo's automatic dynamic shapes recompiles when a size first changes and
    then reuses the dynamic graph: at most 4 graphs per part and mode over any number of padded sizes
    (multi-scale training, aspect-ratio groups), where dynamic=False compiled one per size (docs/speed.md).
    """
    for part in (model.backbone, model.fpn, model.head):
        part.compile(backend=backend)
    return model


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the model's forward pass; losses stay float32 regardless."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def place_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Move to the device and, when asked, to NHWC; convolutions then keep NHWC from input to head."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


@contextlib.contextmanager
def deterministic_algorithms(on: bool) -> Iterator[None]:
    """`train.deterministic`: deterministic kernels for the duration of a run, the previous settings after it.

    cuDNN picks a deterministic algorithm and stops autotuning; cuBLAS gets the fixed workspace it
    needs to be deterministic; `torch.use_deterministic_algorithms` warns (warn_only) at an op with
    no deterministic kernel rather than stopping a run hours in. Without it a GPU run resumes to the
    same loss curve but not to the same bits: atomics in cuDNN's backward sum in varying order.
    """
    if not on:
        yield
        return
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])

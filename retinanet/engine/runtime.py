"""Where and how the model runs: device choice, mixed precision, memory layout."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retinanet.config import ConfigError
from retinanet.evaluation.model_card import cpu_name
from retinanet.fileio import RunFileError, write_text_atomic


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_amp(amp: str, device: torch.device, source: str, key: str = "train.amp") -> None:
    """bf16 works on CPU and GPU; fp16 needs a GPU (and a GradScaler). Checked once at start-up."""
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"{source}: {key}: fp16 needs a CUDA device, this run is on {device}; use bf16")


# Forces the AMX probe: 1 = behave as a CPU with AMX (auto picks bf16), 0 = as one without. Lets the
# suite (and a user) run as the other kind of machine would; bf16 autocast runs on any CPU, only slower.
AMX_ENV = "RETINANET_CPU_AMX"


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """AMX tiles with bf16 (Intel Sapphire Rapids and later): $RETINANET_CPU_AMX when set, else the
    kernel's CPU flag, else torch's own probe."""
    forced = os.environ.get(AMX_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ConfigError(f"{AMX_ENV}={forced}: must be 0 (no AMX) or 1 (AMX); unset it to probe the CPU")
        return forced == "1"
    try:
        if re.search(r"\bamx_bf16\b", cpuinfo.read_text()):
            return True
    except OSError:
        pass
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_amp(amp: str, device: torch.device, key: str = "train.amp") -> tuple[str, str]:
    """`train.amp` or `eval.amp` -> ("none" | "bf16" | "fp16", why). auto picks bf16 only where the hardware
    has bf16 matrix units: on a CPU without AMX oneDNN's bf16 convolutions are slower than fp32 ones. A GPU
    before Ampere (V100, T4) has fp16 tensor cores only: auto takes fp16 there, with the GradScaler."""
    if amp != "auto":
        return amp, f"{key}={amp} as configured"
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


def resolve_eval_amp(amp: str, device: torch.device, source: str) -> tuple[str, str]:
    """`eval.amp` -> (precision, why): the precision of every evaluation and prediction of record.

    Its default, none, gives a checkpoint the same detections on every machine whatever `train.amp`
    resolved to where it trained; auto or bf16 trade that for speed (docs/speed.md).
    """
    check_amp(amp, device, source, "eval.amp")
    return resolve_amp(amp, device, "eval.amp")


# torch.compile's break-even, from the benchmark (docs/speed.md#where-torchcompile-pays): R50-FPN, 512 px,
# batch 4, bf16 on a 2-core Xeon with AMX took 44 s to compile backbone, FPN and head and gained 0.141 s
# per train step, 313 steps. A run compiles every part again in eval mode and once more when input sizes
# first change (automatic dynamic shapes), so it pays about three compiles: 3 x 44 / 0.141 = 936 steps.
COMPILE_SECONDS = 44.0
COMPILE_STEP_GAIN_SECONDS = 0.141
COMPILES_PER_RUN = 3
COMPILE_BREAK_EVEN_ITERS = round(COMPILES_PER_RUN * COMPILE_SECONDS / COMPILE_STEP_GAIN_SECONDS)
# With train.time_budget the iterations are not known at start-up: the break-even in seconds is those
# iterations at the compiled step of the same benchmark (1.4 s eager, less the gain), about 20 minutes.
COMPILE_EAGER_STEP_SECONDS = 1.4
COMPILE_BREAK_EVEN_SECONDS = COMPILE_BREAK_EVEN_ITERS * (COMPILE_EAGER_STEP_SECONDS - COMPILE_STEP_GAIN_SECONDS)


def resolve_compile(
    compile: str, device: torch.device, amp: str, max_iters: int, sync_bn: bool = False,
    time_budget_s: float | None = None,
) -> tuple[bool, str]:
    """`train.compile` -> (on, why). auto compiles where a step gains and the run is long enough to repay
    the compile (minutes on a CPU); an fp32 step on a CPU without AMX gains too little to ever repay it.
    SyncBatchNorm (`sync_bn`: train.sync_bn under torchrun) all-reduces inside the forward, which
    torch.compile has never been verified to trace: auto stays eager (true is refused at start-up)."""
    if compile != "auto":
        return compile == "true", f"train.compile={compile} as configured"
    if sync_bn:
        return False, "auto: train.sync_bn runs eager (SyncBatchNorm is not supported under torch.compile here)"
    if device.type == "cpu" and shutil.which("c++") is None and shutil.which("g++") is None:
        return False, "auto: no C++ compiler on PATH for torch.compile's CPU kernels; eager"
    gains = device.type == "cuda" or (device.type == "cpu" and amp == "bf16" and cpu_has_amx())
    if not gains:
        return False, f"auto: a {amp if amp != 'none' else 'fp32'} step on {device.type} without AMX gains too little to repay the compile time; eager"
    if time_budget_s is not None and time_budget_s < COMPILE_BREAK_EVEN_SECONDS:
        return False, (f"auto: a time budget of {time_budget_s / 60:.0f} min is shorter than the about "
                       f"{COMPILE_BREAK_EVEN_SECONDS / 60:.0f} min that repay the compile time; eager")
    if max_iters < COMPILE_BREAK_EVEN_ITERS:
        return False, (f"auto: {max_iters} iterations are fewer than the {COMPILE_BREAK_EVEN_ITERS} that repay "
                       "the compile time; eager")
    return True, f"auto: {max_iters} iterations repay the compile time (break-even about {COMPILE_BREAK_EVEN_ITERS})"


@dataclass(frozen=True)
class Runtime:
    """What `auto` resolved to on this machine, and why: the log line, runtime.json and the model card say it."""

    amp: str  # train.amp as resolved: "none" | "bf16" | "fp16" (training steps only)
    amp_reason: str
    compile: bool
    compile_reason: str
    eval_amp: str = "none"  # eval.amp as resolved: evaluations during training
    eval_amp_reason: str = "eval.amp=none as configured"
    requested: dict[str, str] | None = None  # train.amp, train.compile, eval.amp as configured

    def describe(self) -> str:
        return (f"mixed precision {self.amp} ({self.amp_reason}); torch.compile {'on' if self.compile else 'off'} "
                f"({self.compile_reason}); evaluation precision {self.eval_amp} ({self.eval_amp_reason})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_runtime(
    amp: str, compile: str, device: torch.device, max_iters: int, eval_amp: str = "none", source: str = "<config>",
    sync_bn: bool = False, time_budget_s: float | None = None,
) -> Runtime:
    """`train.amp`, `train.compile` and `eval.amp` resolved once for a run."""
    amp_choice, amp_reason = resolve_amp(amp, device)
    on, compile_reason = resolve_compile(compile, device, amp_choice, max_iters, sync_bn, time_budget_s)
    eval_choice, eval_reason = resolve_eval_amp(eval_amp, device, source)
    requested = {"train.amp": amp, "train.compile": compile, "eval.amp": eval_amp}
    return Runtime(amp_choice, amp_reason, on, compile_reason, eval_choice, eval_reason, requested)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The CPU flags that decide bf16 speed (AMX tiles, AVX-512 bf16/fp16, VNNI), as the kernel lists them."""
    wanted = ("amx_bf16", "amx_tile", "amx_int8", "amx_fp16", "avx512_bf16", "avx512_fp16", "avx512f", "avx512_vnni",
              "avx_vnni", "avx2")
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return [f for f in wanted if f in flags]


def environment(device: torch.device) -> dict[str, Any]:
    """What a number depends on besides the config (detectron2's collect_env, in short): library
    versions, the float32 matmul/conv precision settings (TF32, oneDNN), and the CPU's bf16 units or the GPU."""
    import torchvision

    mkldnn = torch.backends.mkldnn
    onednn = re.search(r"(?:oneDNN|MKL-DNN) v(\S+)", torch.__config__.show())
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "onednn": onednn.group(1) if onednn and mkldnn.is_available() else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "onednn_fp32_precision": getattr(getattr(mkldnn, "matmul", None), "fp32_precision", None),
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "amx_override": os.environ.get(AMX_ENV) or None,
        "cpu_has_amx": cpu_has_amx(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return env


RUNTIME_FILE = "runtime.json"


def write_runtime_record(run_dir: Path, runtime: Runtime, device: torch.device) -> Path:
    """runtime.json in the run folder, at start-up: what the run resolved and where it ran, so a number
    can be reproduced from the folder even when the run died before its model card."""
    path = Path(run_dir) / RUNTIME_FILE
    write_text_atomic(path, json.dumps(runtime_record(runtime, device), indent=2))
    return path


def runtime_record(runtime: Runtime, device: torch.device) -> dict[str, Any]:
    """The runtime.json content (also the model card's `runtime`): the choices and the environment."""
    return {**runtime.to_dict(), "device": str(device), "environment": environment(device)}


def read_runtime_record(run_dir: Path) -> dict[str, Any] | None:
    """runtime.json of a run folder, None for a run from before it existed."""
    path = Path(run_dir) / RUNTIME_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunFileError(f"{path}: not valid JSON ({exc.msg}); delete it, the run rewrites it on --resume") from None


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

"""Where a step's time goes: the engine's steps mark their phases, `profile_call` measures them.

`train_step` marks forward, loss, backward and optimizer; `predict` marks forward and postprocess.
A mark is a `torch.profiler.record_function` scope, which costs a few microseconds when no profiler
runs. `profile_call` runs one call under torch.profiler with the model's parts (backbone, FPN,
head) marked as well, and returns each phase's milliseconds and the op table, so a user can see
on their own hardware what dominates (`scripts/benchmark.py --profile DIR`, docs/speed.md).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

PREFIX = "phase/"
TRAIN_PHASES = ("forward", "loss", "backward", "optimizer")
PREDICT_PHASES = ("forward", "postprocess")


def phase(name: str) -> record_function:
    """A named phase of a step, visible in torch.profiler's tables and traces as `phase/<name>`."""
    return record_function(PREFIX + name)


@dataclass
class StepProfile:
    """One profiled call: its wall time, the time of each phase and part, and the op table."""

    title: str
    wall_ms: float
    phases: dict[str, float]  # phase or part -> ms (CPU time of the scope; on CUDA the device time of its kernels)
    parts: tuple[str, ...]  # the model parts, which run inside the forward phase
    op_table: str

    def format(self) -> str:
        lines = [f"{self.title}: {self.wall_ms:.1f} ms (wall, under the profiler)"]
        for name, ms in self.phases.items():
            indent = "    " if name in self.parts else "  "
            lines.append(f"{indent}{name:<{24 - len(indent)}} {ms:>10.1f} ms {100 * ms / self.wall_ms:>6.1f} %")
        return "\n".join(lines)


def _mark_parts(parts: dict[str, nn.Module]) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward hooks that open a phase scope when a part starts and close it when it returns."""
    handles = []
    for name, module in parts.items():
        open_scopes: list[record_function] = []

        def enter(_module: nn.Module, _args: tuple, name: str = name, scopes: list = open_scopes) -> None:
            scopes.append(phase(name).__enter__())

        def leave(_module: nn.Module, _args: tuple, _output: object, scopes: list = open_scopes) -> None:
            scopes.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return handles


def profile_call(
    title: str,
    fn: Callable[[], None],
    phases: tuple[str, ...],
    parts: dict[str, nn.Module],
    device: torch.device,
    trace: Path | None = None,
    row_limit: int = 25,
) -> StepProfile:
    """Run `fn` once under torch.profiler; `phases` are the scopes `fn` marks itself, `parts` get marked here.

    Times are the scopes' CPU time on a CPU and, on CUDA, their kernels' device time where the
    profiler attributes kernels to the scope (the CPU only launches there), else their CPU time.
    `trace` writes a Chrome trace (open it in https://ui.perfetto.dev).
    """
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    handles = _mark_parts(parts)
    try:
        with profile(activities=activities) as prof:
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            wall_ms = 1e3 * (time.perf_counter() - start)
    finally:
        for handle in handles:
            handle.remove()
    averages = prof.key_averages()
    events = {event.key: event for event in averages}
    measured: dict[str, float] = {}
    for name in (*phases[:1], *parts, *phases[1:]):  # the parts listed under the first phase (forward)
        event = events.get(PREFIX + name)
        if event is not None:
            device_us = event.device_time_total if cuda else 0.0
            measured[name] = (device_us or event.cpu_time_total) / 1e3
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = averages.table(sort_by=sort, row_limit=row_limit, max_name_column_width=60)
    return StepProfile(title, wall_ms, measured, tuple(parts), table)

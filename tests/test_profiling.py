"""engine.profiling: phase scopes and model parts measured as they ran (train_step's own phases: test_train_step)."""
from __future__ import annotations

import time

import torch
from torch import nn

from retinanet.engine.profiling import phase, profile_call


class Sleeper(nn.Module):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x


def test_phases_and_parts_take_the_time_they_ran() -> None:
    model = nn.Sequential(Sleeper(0.05), Sleeper(0.03))

    def step() -> None:
        with phase("forward"):
            model(torch.zeros(1))
        with phase("loss"):
            time.sleep(0.02)

    profiled = profile_call("toy", step, ("forward", "loss"), {"first": model[0], "second": model[1]}, torch.device("cpu"))
    p = profiled.phases
    assert list(p) == ["forward", "first", "second", "loss"]  # the parts listed under forward
    assert p["first"] >= 50 and p["second"] >= 30 and p["loss"] >= 20  # no upper bounds: a busy machine oversleeps
    assert p["first"] + p["second"] <= p["forward"]  # each part closes when it returns: first holds none of second
    assert p["forward"] + p["loss"] <= profiled.wall_ms
    text = profiled.format()
    assert text.splitlines()[2].startswith("    first") and "loss" in text
    assert not model[0]._forward_pre_hooks and not model[0]._forward_hooks  # the marks are removed afterwards

"""Model EMA: an exponential moving average of the weights, evaluated instead of the raw model.

The decay warms up as decay * (1 - exp(-updates / warmup)), as in ultralytics and timm, so the
average follows the fast early changes of training and smooths the late ones. Float tensors
(weights and BN statistics) are averaged in one fused pass over all of them (`torch._foreach_lerp_`,
ema + (1 - d) * (model - ema): the old mul-and-add to within float rounding); integer buffers are copied.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class ModelEMA:
    def __init__(
        self, model: nn.Module, decay: float, warmup: int, compile: Callable[[nn.Module], nn.Module] | None = None
    ) -> None:
        """`compile` (the trainer's `compile_model` when train.compile is on) compiles the copy, which the
        evaluation runs: deepcopy drops a module's compiled call, so the copy would otherwise run eager."""
        self.module = copy.deepcopy(model).eval()
        if compile is not None:
            self.module = compile(self.module)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        """The decay of the next update."""
        return self.decay * (1.0 - math.exp(-(self.updates + 1) / self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.updates += 1
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        floats = [(e, v.detach()) for e, v in pairs if e.dtype.is_floating_point]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [v for _, v in floats], 1.0 - d)
        for ema_value, value in pairs:
            if not ema_value.dtype.is_floating_point:
                ema_value.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any], updates: int) -> None:
        self.module.load_state_dict(state)
        self.updates = updates

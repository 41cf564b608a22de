"""Model EMA: an exponential moving average of the weights, evaluated instead of the raw model.

The decay warms up as decay * (1 - exp(-updates / warmup)), as in ultralytics and timm, so the
average follows the fast early changes of training and smooths the late ones. Float tensors
(weights and BN statistics) are averaged; integer buffers are copied.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float, warmup: int) -> None:
        self.module = copy.deepcopy(model).eval()
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
        for ema_value, value in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_value.dtype.is_floating_point:
                ema_value.mul_(d).add_(value.detach(), alpha=1.0 - d)
            else:
                ema_value.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any], updates: int) -> None:
        self.module.load_state_dict(state)
        self.updates = updates

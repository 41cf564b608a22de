"""Feature pyramid: P3-P5 from lateral 1x1 and top-down paths, then P6 and P7."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def stride2_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """`conv(x)` for P6 and P7, in float32 outside autocast where oneDNN's bf16 weight gradient is wrong.

    oneDNN's bf16 weight gradient of a 3x3, stride-2, padding-1 conv whose input is 1 wide (kernel
    `jit_bf16:avx512_core_bf16 backward_weights`, torch 2.14.1) comes back with nan, inf or ~1e36 in the
    off-centre taps, different on each call; the forward and every wider input are right. P6's input
    is 1 wide when the padded image is at most 32 px wide, P7's at most 64 px. Only a CPU bf16 autocast
    step that computes gradients takes the fp32 path, so other inputs, evaluation and CUDA run as before.
    tests/test_kernel_bugs.py fails once the installed torch is fixed: then remove this guard.
    """
    if x.shape[-1] == 1 and x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.is_grad_enabled():
        with torch.autocast("cpu", enabled=False):
            return conv(x.float())
    return conv(x)


class FPN(nn.Module):
    """{"c3","c4","c5"} -> [P3, P4, P5, P6, P7], each with `channels` channels.

    P6 is a stride-2 3x3 conv on C5 (the paper, torchvision v2) or on P5 (torchvision v1);
    P7 is a stride-2 3x3 conv on ReLU(P6). Both go through `stride2_conv` (a oneDNN bf16 bug).
    """

    def __init__(self, in_channels: Sequence[int], channels: int, p6_from: str):
        super().__init__()
        if p6_from not in ("c5", "p5"):
            raise ValueError(f"p6_from must be c5 or p5, got {p6_from!r}")
        self.p6_from = p6_from
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        self.p6 = nn.Conv2d(in_channels[-1] if p6_from == "c5" else channels, channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: dict[str, Tensor]) -> list[Tensor]:
        c3, c4, c5 = feats["c3"], feats["c4"], feats["c5"]
        inner = self.lateral[2](c5)
        p5 = self.output[2](inner)
        inner = self.lateral[1](c4) + F.interpolate(inner, size=c4.shape[-2:], mode="nearest")
        p4 = self.output[1](inner)
        inner = self.lateral[0](c3) + F.interpolate(inner, size=c3.shape[-2:], mode="nearest")
        p3 = self.output[0](inner)
        p6 = stride2_conv(self.p6, c5 if self.p6_from == "c5" else p5)
        p7 = stride2_conv(self.p7, F.relu(p6))
        return [p3, p4, p5, p6, p7]

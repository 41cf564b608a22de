"""Classification and box subnets shared over all pyramid levels."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _tower(num_convs: int, channels: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, 3, padding=1, bias=norm == "none"))
        if norm == "gn":
            layers.append(nn.GroupNorm(32 if channels % 32 == 0 else math.gcd(channels, 32), channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class RetinaNetHead(nn.Module):
    """Per level: `num_convs` conv3x3+ReLU (optionally GroupNorm) then a conv3x3 predictor.

    The classification output's bias starts at -log((1 - pi) / pi), so every anchor begins
    with foreground probability pi and the many easy negatives do not swamp the first steps.
    The box subnet is class-agnostic: 4 deltas per anchor.
    """

    def __init__(
        self,
        channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int,
        norm: str,
        prior_prob: float,
    ):
        super().__init__()
        if norm not in ("none", "gn"):
            raise ValueError(f"head norm must be none or gn, got {norm!r}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.cls_tower = _tower(num_convs, channels, norm)
        self.box_tower = _tower(num_convs, channels, norm)
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.box_deltas = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Returns cls_logits (N, R, K) and box_deltas (N, R, 4), levels concatenated."""
        logits, deltas = [], []
        for f in features:
            n, _, h, w = f.shape
            c = self.cls_logits(self.cls_tower(f))  # (N, A*K, H, W)
            c = c.view(n, self.num_anchors, self.num_classes, h, w).permute(0, 3, 4, 1, 2)  # (N, H, W, A, K)
            logits.append(c.reshape(n, -1, self.num_classes))  # (N, H*W*A, K)
            b = self.box_deltas(self.box_tower(f))  # (N, A*4, H, W)
            b = b.view(n, self.num_anchors, 4, h, w).permute(0, 3, 4, 1, 2)  # (N, H, W, A, 4)
            deltas.append(b.reshape(n, -1, 4))  # (N, H*W*A, 4)
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)

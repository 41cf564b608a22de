"""Anchor-relative box deltas (dx, dy, dw, dh), as in Faster R-CNN and torchvision."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class BoxCoder:
    """Encodes boxes_xyxy against anchors and decodes deltas back.

    Widths are x2 - x1 (no +1). dw and dh are clamped at `scale_clamp` before exp so a wild
    prediction cannot overflow.
    """

    def __init__(self, weights: Sequence[float], scale_clamp: float):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    def encode(self, boxes_xyxy: Tensor, anchors_xyxy: Tensor) -> Tensor:
        """(..., 4) target boxes and anchors -> (..., 4) deltas, in float32 whatever the inputs' dtype."""
        boxes_xyxy, anchors_xyxy = boxes_xyxy.float(), anchors_xyxy.float()
        wx, wy, ww, wh = self.weights
        aw = anchors_xyxy[..., 2] - anchors_xyxy[..., 0]
        ah = anchors_xyxy[..., 3] - anchors_xyxy[..., 1]
        ax = anchors_xyxy[..., 0] + 0.5 * aw
        ay = anchors_xyxy[..., 1] + 0.5 * ah
        gw = boxes_xyxy[..., 2] - boxes_xyxy[..., 0]
        gh = boxes_xyxy[..., 3] - boxes_xyxy[..., 1]
        gx = boxes_xyxy[..., 0] + 0.5 * gw
        gy = boxes_xyxy[..., 1] + 0.5 * gh
        return torch.stack(
            [wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * torch.log(gw / aw), wh * torch.log(gh / ah)], dim=-1
        )

    def decode(self, deltas: Tensor, anchors_xyxy: Tensor) -> Tensor:
        """(..., 4) deltas and anchors -> (..., 4) boxes_xyxy, in float32 whatever the inputs' dtype
        (deltas from a bf16 head are widened before they meet the anchors)."""
        deltas, anchors_xyxy = deltas.float(), anchors_xyxy.float()
        wx, wy, ww, wh = self.weights
        aw = anchors_xyxy[..., 2] - anchors_xyxy[..., 0]
        ah = anchors_xyxy[..., 3] - anchors_xyxy[..., 1]
        ax = anchors_xyxy[..., 0] + 0.5 * aw
        ay = anchors_xyxy[..., 1] + 0.5 * ah
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = torch.clamp(deltas[..., 2] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.scale_clamp)
        cx = dx * aw + ax
        cy = dy * ah + ay
        half_w = 0.5 * torch.exp(dw) * aw
        half_h = 0.5 * torch.exp(dh) * ah
        return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)

"""Anchor boxes for every pyramid level.

Order of the R anchors: level by level (P3 first); inside a level, row-major over
feature-map locations; inside a location, ratio-major then scale (torchvision's order).
The head's outputs are flattened in the same order.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def cell_anchors(sizes: Sequence[float], ratios: Sequence[float], round_to_int: bool = False) -> Tensor:
    """(A, 4) xyxy anchors centred on (0, 0) for one level; A = len(ratios) * len(sizes).

    ratio = height / width, and every anchor of one size keeps the area size**2.
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios_t = torch.as_tensor(ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1.0 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # (A,)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)  # (A,)
    base = torch.stack([-ws, -hs, ws, hs], dim=1) / 2  # (A, 4)
    return base.round() if round_to_int else base


class AnchorGenerator(nn.Module):
    """Anchors on each feature map, cached per (image size, feature sizes, device, dtype).

    The stride of a level is `padded image size // feature size`, as in torchvision; with
    inputs padded to a multiple of the largest stride (128) that is exactly 2**level.
    Anchors are centred on `i * stride` (offset 0), as in torchvision and detectron2.
    """

    def __init__(self, sizes_per_level: Sequence[Sequence[float]], ratios: Sequence[float], round_to_int: bool = False):
        super().__init__()
        self.sizes_per_level = [tuple(float(s) for s in sizes) for sizes in sizes_per_level]
        self.ratios = tuple(float(r) for r in ratios)
        self.round_to_int = round_to_int
        self.cell = [cell_anchors(s, self.ratios, round_to_int) for s in self.sizes_per_level]
        self._cache: dict[tuple, tuple[Tensor, list[int]]] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.ratios) * len(self.sizes_per_level[0])

    def forward(
        self, image_size: tuple[int, int], feature_sizes: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, list[int]]:
        """Returns anchors (R, 4) xyxy in padded-input pixels and the anchor count of every level."""
        key = (tuple(image_size), tuple(tuple(s) for s in feature_sizes), str(device), dtype)
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = self.generate(image_size, feature_sizes, device, dtype)
        return self._cache[key]

    def generate(
        self, image_size: tuple[int, int], feature_sizes: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, list[int]]:
        """`forward` without the cache: for tracing, where the sizes are symbolic (ONNX export)."""
        if len(feature_sizes) != len(self.cell):
            raise ValueError(f"got {len(feature_sizes)} feature maps for {len(self.cell)} anchor levels")
        per_level = []
        for (fh, fw), base in zip(feature_sizes, self.cell):
            stride_h, stride_w = image_size[0] // fh, image_size[1] // fw
            ys = torch.arange(fh, dtype=torch.int32, device=device) * stride_h
            xs = torch.arange(fw, dtype=torch.int32, device=device) * stride_w
            shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=1)  # (H*W, 4)
            anchors = shifts[:, None, :] + base.to(device)[None, :, :]  # (H*W, A, 4)
            per_level.append(anchors.reshape(-1, 4).to(dtype))
        return torch.cat(per_level), [a.shape[0] for a in per_level]


def sizes_per_level(sizes: Sequence[float], scales: Sequence[float]) -> list[list[float]]:
    """The paper's parameterization: base size per level times octave scales."""
    return [[s * k for k in scales] for s in sizes]

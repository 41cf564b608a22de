"""Plain data containers passed between components.

Shape legend: N images, R anchors over all levels, K classes (no background),
M boxes in one image, D detections in one image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Target:
    """Ground truth of one image, in the pixel frame of the (resized) network input.

    Labels are contiguous 0..K-1; the dataset maps them back to category ids.
    """

    boxes_xyxy: Tensor  # (M, 4) float32 pixels
    labels: Tensor  # (M,) int64 contiguous
    iscrowd: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))  # (M,) bool
    image_id: int = -1
    orig_size: tuple[int, int] = (0, 0)  # (H, W) of the image file

    def __post_init__(self) -> None:
        if self.iscrowd.numel() != self.labels.numel():
            self.iscrowd = torch.zeros(self.labels.shape[0], dtype=torch.bool, device=self.labels.device)

    def to(self, device: torch.device | str) -> "Target":
        return Target(
            self.boxes_xyxy.to(device), self.labels.to(device), self.iscrowd.to(device), self.image_id, self.orig_size
        )


@dataclass
class HeadOutputs:
    """What RetinaNet.forward returns, in train and eval mode alike."""

    cls_logits: Tensor  # (N, R, K)
    box_deltas: Tensor  # (N, R, 4)
    anchors: Tensor  # (R, 4) xyxy in padded-input pixels
    num_anchors_per_level: list[int]  # sums to R


@dataclass
class Detections:
    """Detections of one image."""

    boxes_xyxy: Tensor  # (D, 4) float pixels
    scores: Tensor  # (D,)
    labels: Tensor  # (D,) int64 contiguous

    def as_dict(self) -> dict[str, Tensor]:
        """torchvision's eval-mode contract."""
        return {"boxes": self.boxes_xyxy, "scores": self.scores, "labels": self.labels}

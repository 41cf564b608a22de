"""Plain data containers passed between components.

Shape legend: N images, R anchors over all levels, K classes (no background),
M boxes in one image, D detections in one image.

The data flow: dataset -> (image, Target) -> collate -> Batch -> model -> HeadOutputs -> loss
(a dict of scalars) / postprocess -> list[Detections] -> evaluator.
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

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Target":
        """From pinned memory with non_blocking=True the copy overlaps compute (the step's images and boxes)."""
        return Target(
            self.boxes_xyxy.to(device, non_blocking=non_blocking), self.labels.to(device, non_blocking=non_blocking),
            self.iscrowd.to(device, non_blocking=non_blocking), self.image_id, self.orig_size,
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


@dataclass
class Batch:
    """What the training and evaluation loops consume.

    `image_sizes` are the resized, unpadded (H, W); target boxes are in that same pixel frame.
    """

    images: Tensor  # (N, 3, H, W) normalized, zero-padded bottom/right to a multiple of size_divisible
    image_sizes: list[tuple[int, int]]
    targets: list[Target]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(
            self.images.to(device, non_blocking=non_blocking),
            list(self.image_sizes),
            [t.to(device, non_blocking) for t in self.targets],
        )

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True) for custom batch types."""
        targets = [
            Target(t.boxes_xyxy.pin_memory(), t.labels.pin_memory(), t.iscrowd.pin_memory(), t.image_id, t.orig_size)
            for t in self.targets
        ]
        return Batch(self.images.pin_memory(), list(self.image_sizes), targets)

    def __len__(self) -> int:
        return len(self.targets)

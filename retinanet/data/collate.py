"""Batching: normalize + pad into one tensor (`prepare_batch`, as `Detector` does), aspect-ratio group ids, worker seeding."""
from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from retinanet.modeling.preprocess import prepare_batch
from retinanet.structures import Target


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
            [t.to(device) for t in self.targets],
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


def collate(items: Sequence[tuple[Tensor, Target]], size_divisible: int) -> Batch:
    """[(image (3,H,W) in [0,1], Target)] -> Batch; use functools.partial to set size_divisible."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    images, sizes = prepare_batch([image for image, _ in items], size_divisible)
    return Batch(images, sizes, [target for _, target in items])


def aspect_ratio_group_ids(aspect_ratios: Sequence[float]) -> list[int]:
    """Width / height -> group 0 for portrait (w < h), 1 for landscape or square (w >= h)."""
    return [bisect.bisect_right([1.0], float(r)) for r in aspect_ratios]


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed python `random` and numpy from the worker's torch seed.

    DataLoader already seeds each worker's torch RNG with base_seed + worker_id (base_seed drawn from
    its generator each epoch), so deriving the other seeds from it makes workers distinct and runs
    reproducible under a seeded generator. albumentations 2.x keeps
    its own RNG; `data.transforms.DetectionTransform` reseeds that from the same torch seed.
    """
    seed = torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)

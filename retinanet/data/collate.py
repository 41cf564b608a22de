"""Batching: normalize + pad into one tensor (`prepare_batch`, as `Detector` does), aspect-ratio group ids, worker seeding."""
from __future__ import annotations

import bisect
import random
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from retinanet.modeling.preprocess import prepare_batch
from retinanet.structures import Batch, Target


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

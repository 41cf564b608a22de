"""Deterministic, resumable training batches, with optional repeat-factor sampling.

Epoch e shuffles with a generator seeded from (seed, e), and every sample carries its own
augmentation seed drawn from the same generator. The batch sequence therefore depends only
on the seed, never on worker count or on where a run was interrupted: resuming at batch b
rebuilds the sequence and skips the first b batches without loading them.

Repeat-factor sampling (LVIS, Gupta et al. 2019) repeats image i r_i times per epoch, r_i = the
largest max(1, sqrt(t / f_c)) over the classes c in the image, f_c the fraction of images that
contain c. The fractional part is rounded stochastically, again from the (seed, e) generator,
so an epoch's copies are as reproducible as its order.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

Key = tuple[int, int]  # (dataset index, augmentation seed)


def repeat_factors(image_labels: Sequence[Sequence[int]], threshold: float) -> np.ndarray:
    """(num_images,) float64 r_i = max(1, max over the image's classes c of sqrt(threshold / f_c)).

    image_labels: the classes (contiguous labels, repeats allowed) of each image's non-crowd boxes;
    an image without boxes gets 1. f_c counts images, not boxes (LVIS).
    """
    num_images = len(image_labels)
    per_image = [set(int(c) for c in labels) for labels in image_labels]
    images_with: dict[int, int] = {}
    for classes in per_image:
        for c in classes:
            images_with[c] = images_with.get(c, 0) + 1
    class_factor = {c: max(1.0, math.sqrt(threshold / (n / num_images))) for c, n in images_with.items()}
    return np.array([max((class_factor[c] for c in classes), default=1.0) for classes in per_image], dtype=np.float64)


@dataclass(frozen=True)
class SamplingSummary:
    """What repeat-factor sampling does to an epoch, in expectation (stochastic rounding is unbiased)."""

    num_images: int
    epoch_size: float  # expected images per epoch: sum of r_i
    share_before: np.ndarray  # (K,) fraction of the images drawn in an epoch that contain class c, uniform
    share_after: np.ndarray  # (K,) the same with repeat factors: sum over images with c of r_i / sum of r_i


def sampling_summary(image_labels: Sequence[Sequence[int]], factors: np.ndarray, num_classes: int) -> SamplingSummary:
    """Effective epoch size and each class's expected image share before and after repeat factors."""
    has = np.zeros((len(image_labels), num_classes), dtype=bool)  # (num_images, K)
    for i, labels in enumerate(image_labels):
        has[i, np.asarray(labels, dtype=np.int64)] = True
    total = float(factors.sum())
    return SamplingSummary(
        num_images=len(image_labels),
        epoch_size=total,
        share_before=has.mean(axis=0) if len(image_labels) else np.zeros(num_classes),
        share_after=(factors[:, None] * has).sum(axis=0) / max(total, 1e-12),
    )


def format_sampling_summary(summary: SamplingSummary, names: Sequence[str], threshold: float) -> str:
    """The log record: epoch size and per-class image shares before -> after."""
    shares = ", ".join(
        f"{name} {100 * b:.1f}% -> {100 * a:.1f}%" for name, b, a in zip(names, summary.share_before, summary.share_after)
    )
    return (
        f"repeat-factor sampling (data.repeat_factor_threshold={threshold:g}): an epoch draws "
        f"{summary.epoch_size:.1f} images in expectation instead of {summary.num_images} "
        f"(x{summary.epoch_size / max(summary.num_images, 1):.2f}); share of drawn images containing each class: {shares}"
    )


class TrainBatchSampler(Sampler[list[Key]]):
    """Infinite batches of (index, seed) keys; optional aspect-ratio grouping.

    With `group_ids`, a batch only holds items of one group (portrait or landscape), so padding
    wastes less; items left over at the end of an epoch are batched together regardless of group.
    For distributed training, every rank builds the same global batch of batch_size * world_size
    keys and takes its own slice.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        group_ids: Sequence[int] | None = None,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        repeat_factors: Sequence[float] | None = None,
    ):
        if num_items <= 0:
            raise ValueError("the training set is empty")
        if repeat_factors is not None and len(repeat_factors) != num_items:
            raise ValueError(f"{len(repeat_factors)} repeat factors for {num_items} items")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.group_ids = list(group_ids) if group_ids is not None else [0] * num_items
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size
        self.repeat_factors = (
            torch.as_tensor(np.asarray(repeat_factors, dtype=np.float64)) if repeat_factors is not None else None
        )

    def epoch_indices(self, g: torch.Generator) -> list[int]:
        """This epoch's dataset indices in order: a permutation, or of the repeated copies with repeat factors."""
        if self.repeat_factors is None:
            return torch.randperm(self.num_items, generator=g).tolist()
        whole = self.repeat_factors.floor()
        extra = torch.rand(self.num_items, generator=g, dtype=torch.float64) < self.repeat_factors - whole
        copies = torch.repeat_interleave(torch.arange(self.num_items), (whole + extra).long())
        return copies[torch.randperm(copies.numel(), generator=g)].tolist()

    def epoch_batches(self, epoch: int) -> list[list[Key]]:
        """Global batches of one epoch (deterministic)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = self.epoch_indices(g)
        aug_seeds = torch.randint(0, 2**31 - 1, (len(order),), generator=g).tolist()
        size = self.batch_size * self.world_size
        buckets: dict[int, list[Key]] = {}
        batches: list[list[Key]] = []
        for idx, s in zip(order, aug_seeds):
            bucket = buckets.setdefault(self.group_ids[idx], [])
            bucket.append((idx, s))
            if len(bucket) == size:
                batches.append(list(bucket))
                bucket.clear()
        leftovers = [k for b in buckets.values() for k in b]
        for i in range(0, len(leftovers) - size + 1, size):
            batches.append(leftovers[i : i + size])
        if not batches:  # fewer items than one batch: repeat them to fill it
            batches.append([leftovers[i % len(leftovers)] for i in range(size)])
        return batches

    def __iter__(self) -> Iterator[list[Key]]:
        produced = 0
        epoch = 0
        while True:
            batches = self.epoch_batches(epoch)
            if produced + len(batches) <= self.start_batch:
                produced += len(batches)
                epoch += 1
                continue
            for batch in batches:
                if produced >= self.start_batch:
                    yield batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
                produced += 1
            epoch += 1

    def __len__(self) -> int:
        """Batches per epoch, approximately (grouping changes it slightly)."""
        size = self.num_items if self.repeat_factors is None else float(self.repeat_factors.sum())
        return max(1, int(size) // (self.batch_size * self.world_size))


class SeededDataset(Dataset):
    """Wraps a dataset whose `transforms` has `set_seed`; items are fetched by (index, seed) keys."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Key):
        index, seed = key
        self.dataset.transforms.set_seed(seed)
        return self.dataset[index]

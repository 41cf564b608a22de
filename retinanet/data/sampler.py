"""Deterministic, resumable training batches.

Epoch e shuffles with a generator seeded from (seed, e), and every sample carries its own
augmentation seed drawn from the same generator. The batch sequence therefore depends only
on the seed, never on worker count or on where a run was interrupted: resuming at batch b
rebuilds the sequence and skips the first b batches without loading them.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

Key = tuple[int, int]  # (dataset index, augmentation seed)


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
    ):
        if num_items <= 0:
            raise ValueError("the training set is empty")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.group_ids = list(group_ids) if group_ids is not None else [0] * num_items
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size

    def epoch_batches(self, epoch: int) -> list[list[Key]]:
        """Global batches of one epoch (deterministic)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_items, generator=g).tolist()
        aug_seeds = torch.randint(0, 2**31 - 1, (self.num_items,), generator=g).tolist()
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
        return max(1, self.num_items // (self.batch_size * self.world_size))


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

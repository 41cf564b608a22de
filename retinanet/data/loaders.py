"""Datasets and DataLoaders built from the config: the only place that reads `cfg.data` and `cfg.input`."""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Subset

from retinanet.config import Config, ConfigError, SplitConfig

from retinanet.data.coco import CocoDetection
from retinanet.data.collate import aspect_ratio_group_ids, collate, seed_worker
from retinanet.data.image_cache import default_cache_dir
from retinanet.data.sampler import (
    SeededDataset,
    TrainBatchSampler,
    format_sampling_summary,
    repeat_factors,
    sampling_summary,
)
from retinanet.data.transforms import build_transforms
from retinanet.data.validate import DatasetError

__all__ = ["DatasetError", "build_dataset", "build_train_loader", "build_val_loader", "train_repeat_factors"]

logger = logging.getLogger("retinanet.data")


def build_dataset(cfg: Config, split: str, source: str = "config") -> CocoDetection:
    """The train or val dataset; path and augmentation mistakes are ConfigErrors naming `source` and the key."""
    paths: SplitConfig = getattr(cfg.data, split)
    for key, value in (("images", paths.images), ("annotations", paths.annotations)):
        if not value:
            raise ConfigError(f"{source}: data.{split}.{key} is not set; set it or pass --set data.{split}.{key}=PATH")
        if not Path(value).exists():
            raise ConfigError(f"{source}: data.{split}.{key}: {value} does not exist; check the path")
    train = split == "train"
    try:
        transforms = build_transforms(
            train=train,
            min_size=cfg.input.min_size if train else cfg.input.test_min_size,
            max_size=cfg.input.max_size,
            augmentations=cfg.data.augmentations,
            min_visibility=cfg.data.min_visibility,
        )
    except ValueError as exc:
        raise ConfigError(f"{source}: data.augmentations: {exc}") from None
    # The largest resize the split asks for: reduced decoding and the cache keep images at least this large.
    decode_size = (max(cfg.input.min_size) if train else cfg.input.test_min_size, cfg.input.max_size)
    return CocoDetection(
        paths.images,
        paths.annotations,
        transforms,
        keep_empty=cfg.data.keep_empty or not train,
        on_invalid=cfg.data.on_invalid,
        decode_size=decode_size,
        cache=cfg.data.cache,
        cache_dir=Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir(),
    )


def build_train_loader(
    cfg: Config, dataset: CocoDetection, start_batch: int = 0, rank: int = 0, world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """This rank's slice of every global batch of `cfg.train.batch_size` (the same batches at any world size).

    `pin_memory` (for a CUDA device) puts each batch in page-locked memory (`Batch.pin_memory`), so the
    step's `non_blocking` copy to the GPU is asynchronous instead of a synchronous pageable copy.
    """
    if cfg.train.batch_size % world_size:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by world_size={world_size}")
    dataset.fill_cache()  # here, before the workers fork: they share what the main process decoded
    groups = aspect_ratio_group_ids(dataset.aspect_ratios()) if cfg.data.aspect_ratio_grouping else None
    sampler = TrainBatchSampler(
        len(dataset), cfg.train.batch_size // world_size, cfg.train.seed, groups, start_batch=start_batch, rank=rank,
        world_size=world_size, repeat_factors=train_repeat_factors(cfg, dataset),
    )
    return DataLoader(
        SeededDataset(dataset),
        batch_sampler=sampler,
        num_workers=cfg.data.num_workers,
        collate_fn=functools.partial(collate, size_divisible=cfg.input.size_divisible),
        worker_init_fn=seed_worker,
        persistent_workers=cfg.data.num_workers > 0,
        prefetch_factor=4 if cfg.data.num_workers > 0 else None,
        pin_memory=pin_memory,
    )


def train_repeat_factors(cfg: Config, dataset: CocoDetection) -> np.ndarray | None:
    """Per-item repeat factors of `data.repeat_factor_threshold` (None when 0), logged with the class shares."""
    threshold = cfg.data.repeat_factor_threshold
    if threshold <= 0:
        return None
    labels = dataset.image_labels()
    factors = repeat_factors(labels, threshold)
    summary = sampling_summary(labels, factors, dataset.category_map.num_classes)
    logger.info("%s: %s", dataset.annotations_file.name, format_sampling_summary(summary, dataset.category_map.names, threshold))
    if (factors == 1.0).all():
        rarest = float(summary.share_before[summary.share_before > 0].min(initial=1.0))
        logger.warning(
            "data.repeat_factor_threshold=%g repeats no image: every class is in at least %.3g of the train images; "
            "set it above that to oversample the rarest class", threshold, rarest,
        )
    return factors


def build_val_loader(
    cfg: Config, dataset: CocoDetection, rank: int = 0, world_size: int = 1, pin_memory: bool = False
) -> DataLoader:
    """Batches in dataset order over this rank's contiguous shard; the shards in rank order are the dataset.

    `pin_memory` as in `build_train_loader`."""
    dataset.fill_cache()
    shard = -(-len(dataset) // world_size)
    return DataLoader(
        dataset if world_size == 1 else Subset(dataset, range(rank * shard, min(len(dataset), (rank + 1) * shard))),
        batch_size=cfg.eval.batch_size,
        shuffle=False,
        num_workers=cfg.data.num_workers,
        collate_fn=functools.partial(collate, size_divisible=cfg.input.size_divisible),
        pin_memory=pin_memory,
    )

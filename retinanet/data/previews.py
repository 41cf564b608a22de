"""Training images as the training loop receives them: after the augmentations, the resize and the batching.

The previews come from the training DataLoader itself (`build_train_loader`, the same sampler,
seeds and collate as training), un-normalized and cropped to each image's resized size, so
feeding them back through `prepare_batch` gives the training batch bit for bit (tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retinanet.config import Config
from retinanet.data.coco import CocoDetection
from retinanet.data.loaders import build_train_loader
from retinanet.modeling.preprocess import denormalize, to_uint8_hwc


@dataclass(frozen=True)
class Preview:
    image_id: int
    image_uint8_hwc: np.ndarray  # (H, W, 3): the resized, augmented image without padding
    boxes_xyxy: np.ndarray  # (M, 4) in the same pixels
    labels: np.ndarray  # (M,) contiguous
    iscrowd: np.ndarray  # (M,) bool


def training_previews(cfg: Config, dataset: CocoDetection, count: int) -> list[Preview]:
    """The first `count` items of the training stream (batch after batch, in order)."""
    previews: list[Preview] = []
    for batch in build_train_loader(cfg, dataset):
        for image, (h, w), target in zip(batch.images, batch.image_sizes, batch.targets):
            if len(previews) == count:
                return previews
            previews.append(Preview(
                image_id=int(target.image_id),
                image_uint8_hwc=to_uint8_hwc(denormalize(image[:, :h, :w])),
                boxes_xyxy=target.boxes_xyxy.numpy().copy(),
                labels=target.labels.numpy().copy(),
                iscrowd=target.iscrowd.numpy().copy(),
            ))
        if len(previews) == count:
            return previews
    return previews

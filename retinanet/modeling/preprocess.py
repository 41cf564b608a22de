"""Resize, normalize and pad: the one place where network inputs are prepared.

The training data pipeline (data/collate.py) and `retinanet.Detector` both call these
functions, so train and inference see the same pixel statistics and padding.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """torchvision's rule: the short side becomes min_size unless the long side would pass max_size."""
    short, long = float(min(height, width)), float(max(height, width))
    return min(min_size / short, max_size / long)


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Output (H, W) of the resize: floor(side * scale), which is what torchvision's interpolate gives."""
    scale = resize_scale(height, width, min_size, max_size)
    return max(1, int(math.floor(height * scale))), max(1, int(math.floor(width * scale)))


def resize_image(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """Bilinear resize of a (3, H, W) float image, exactly as torchvision's GeneralizedRCNNTransform."""
    h, w = image.shape[-2:]
    scale = resize_scale(h, w, min_size, max_size)
    return F.interpolate(
        image[None], size=None, scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
    )[0]


def normalize(image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """(3, H, W) float in [0, 1] -> standardized; returns a new tensor."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device)[:, None, None]
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device)[:, None, None]
    return (image - m) / s


def denormalize(image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """The inverse of `normalize`, for drawing network inputs."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device)[:, None, None]
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device)[:, None, None]
    return image * s + m


def pad_batch(images: Sequence[Tensor], size_divisible: int = 32) -> tuple[Tensor, list[tuple[int, int]]]:
    """Zero-pad (3, H, W) images bottom/right into one (N, 3, Hp, Wp) tensor, Hp/Wp multiples of size_divisible.

    Returns the batch and each image's unpadded (H, W).
    """
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    hp = int(math.ceil(max(h for h, _ in sizes) / size_divisible) * size_divisible)
    wp = int(math.ceil(max(w for _, w in sizes) / size_divisible) * size_divisible)
    batch = images[0].new_zeros((len(images), images[0].shape[0], hp, wp))
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch, sizes

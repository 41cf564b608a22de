"""albumentations pipelines: augmentations by name, then torchvision's resize rule.

Boxes go through albumentations with their labels and crowd flags as label fields, so a box that an
augmentation drops takes its label and flag with it. Normalization and padding are not done here
(see `retinanet.modeling.preprocess`, called by `retinanet.data.collate`).

Randomness: albumentations 2.x ignores the global `random` / `numpy` seeds and keeps its own
generators. `DetectionTransform` reseeds them from `torch.initial_seed()` whenever that changes, so
augmentations follow `torch.manual_seed` in the main process and the per-worker seeds a DataLoader
hands out (base seed + worker id), differing across workers and epochs yet reproducible.
"""
from __future__ import annotations

import difflib
import random
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from retinanet.modeling.preprocess import resize_uint8, resized_size, to_float_chw

class ResizeShortSide(A.DualTransform):
    """torchvision's resize: scale = min(min_size / short side, max_size / long side), bilinear.

    With several `min_sizes` one is drawn uniformly per image (scale jitter) from the pipeline's RNG.
    The output size is `resized_size` and the pixels come from `resize_uint8` (floor, as torchvision's interpolate), the
    functions `retinanet.Detector` uses, so evaluation and the Detector see the same pixels; boxes scale by new_w / w and new_h / h.

    The output size is computed in original pixels: when the pipeline started from a reduced or
    cached frame of the image, the call passes `frame_scale` (original pixels per frame pixel, (y, x)),
    and the image's current size is first scaled back by it. A pipeline that leaves the size alone
    thus resizes every frame of an image to the size the full image would get.
    """

    def __init__(self, min_sizes: Sequence[int], max_size: int, p: float = 1.0) -> None:
        super().__init__(p=p)
        if not min_sizes or any(int(s) <= 0 for s in min_sizes) or max_size <= 0:
            raise ValueError(f"min_sizes {list(min_sizes)} and max_size {max_size} must be positive")
        self.min_sizes = tuple(int(s) for s in min_sizes)
        self.max_size = int(max_size)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        frame_scale = data.get("frame_scale")
        if frame_scale is not None:
            height, width = round(height * frame_scale[0]), round(width * frame_scale[1])
        min_size = self.min_sizes[0] if len(self.min_sizes) == 1 else self.py_random.choice(self.min_sizes)
        return {"out_hw": resized_size(height, width, min_size, self.max_size)}

    def apply(self, img: np.ndarray, out_hw: tuple[int, int], **params: Any) -> np.ndarray:
        return resize_uint8(img, out_hw)

    def apply_to_mask(self, mask: np.ndarray, out_hw: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(mask, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_NEAREST)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        """albumentations keeps boxes normalized to [0, 1], so a resize leaves them unchanged."""
        return bboxes

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_sizes", "max_size")


def to_tensors(
    image: np.ndarray, boxes_xyxy: np.ndarray, labels: np.ndarray, iscrowd: np.ndarray,
    orig_hw: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """uint8 (H, W, 3) + numpy targets -> float (3, H, W) in [0, 1] and new float32 / int64 / bool tensors (no resize)."""
    return (
        to_float_chw(image),
        torch.tensor(np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)),
        torch.tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
        torch.tensor(np.asarray(iscrowd, dtype=bool).reshape(-1)),
    )


def build_augmentation(spec: Mapping[str, Any]) -> A.BasicTransform | A.BaseCompose:
    """{"name": "HorizontalFlip", "p": 0.5} -> albumentations.HorizontalFlip(p=0.5).

    The name is looked up on the albumentations module; nested `transforms` lists (OneOf, SomeOf,
    Sequential) are built recursively. Unknown names and unknown arguments raise ValueError.
    """
    kwargs = dict(spec)
    name = kwargs.pop("name", None)
    if not isinstance(name, str):
        raise ValueError(f"augmentation {dict(spec)} needs a 'name' (an albumentations transform)")
    cls = getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, (A.BasicTransform, A.BaseCompose))) or cls is A.Compose:
        choices = [
            n
            for n in dir(A)
            if isinstance(getattr(A, n), type) and issubclass(getattr(A, n), (A.BasicTransform, A.BaseCompose))
        ]
        close = difflib.get_close_matches(name, choices, n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown augmentation {name!r}: not an albumentations transform{hint}")
    try:
        if issubclass(cls, A.BaseCompose):
            kwargs["transforms"] = [build_augmentation(s) for s in kwargs.get("transforms", ())]
        else:
            kwargs.setdefault("strict", True)
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"augmentation {name!r}: {err}") from err


class DetectionTransform:
    """Callable (image uint8 HWC, boxes_xyxy, labels, iscrowd) -> tensors; never writes to its inputs."""

    def __init__(self, compose: A.Compose) -> None:
        self.compose = compose
        self._seed: int | None = None

    def _sync_seed(self) -> None:
        seed = torch.initial_seed()
        if seed != self._seed:
            # One shared stream for all transforms: Compose(seed=...) would give every transform the
            # same seed, correlating their decisions (e.g. flip and color jitter always together).
            self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
            self._seed = seed

    def set_seed(self, seed: int) -> None:
        """Seed the augmentation RNG for the next item (the training sampler gives every item its own seed)."""
        self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        self._seed = torch.initial_seed()

    def __call__(
        self, image: np.ndarray, boxes_xyxy: np.ndarray, labels: np.ndarray, iscrowd: np.ndarray,
        orig_hw: tuple[int, int] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`orig_hw`: the original (H, W) that `image` (a reduced or cached frame, boxes in its pixels) stands for."""
        self._sync_seed()
        frame = {}
        if orig_hw is not None and tuple(image.shape[:2]) != tuple(orig_hw):
            frame["frame_scale"] = (orig_hw[0] / image.shape[0], orig_hw[1] / image.shape[1])
        out = self.compose(
            image=image,
            bboxes=np.array(boxes_xyxy, dtype=np.float32).reshape(-1, 4),
            labels=np.array(labels, dtype=np.int64).reshape(-1),
            iscrowd=np.array(iscrowd, dtype=bool).reshape(-1),
            **frame,
        )
        return to_tensors(out["image"], out["bboxes"], out["labels"], out["iscrowd"])

    def __repr__(self) -> str:
        return f"DetectionTransform({self.compose.transforms})"


def build_transforms(
    train: bool,
    min_size: int | Sequence[int],
    max_size: int,
    augmentations: Sequence[Mapping[str, Any]],
    min_visibility: float,
) -> DetectionTransform:
    """Train: augmentations, then resize with scale jitter over `min_size`. Eval: resize only.

    Eval resizes to the largest `min_size` (matching the config's `test_min_size`) and ignores
    `augmentations`. Boxes whose visible fraction falls below `min_visibility`, or with zero area,
    are dropped together with their labels and crowd flags.
    """
    min_sizes = [int(min_size)] if isinstance(min_size, (int, np.integer)) else [int(s) for s in min_size]
    if not min_sizes:
        raise ValueError("min_size must be an int or a non-empty sequence of ints")
    if train:
        steps = [build_augmentation(spec) for spec in augmentations]
        steps.append(ResizeShortSide(min_sizes, max_size))
    else:
        steps = [ResizeShortSide([max(min_sizes)], max_size)]
    compose = A.Compose(
        steps,
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["labels", "iscrowd"],
            min_visibility=min_visibility,
            clip=True,
            filter_invalid_bboxes=True,
        ),
    )
    return DetectionTransform(compose)

"""`Detector`: the inference object users call, with torchvision's eval contract."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from retinanet.config import Config
from retinanet.modeling.model import RetinaNet, build_model, build_postprocess
from retinanet.modeling.postprocess import PostProcess
from retinanet.modeling.preprocess import IMAGENET_MEAN, IMAGENET_STD, prepare_images


class Detector(nn.Module):
    """Preprocessing + RetinaNet + postprocess.

    `detector(images)` takes a list of (3, H, W) tensors, float in [0, 1] or uint8, and returns one
    dict per image with `boxes` (xyxy, input-image pixels), `scores` and `labels` (contiguous 0..K-1),
    like a torchvision detector in eval mode. Inputs are prepared by `prepare_images`, the code the
    evaluation loader uses: the same image gives the same network input, so the same detections.

    `detector(images, orig_sizes)`: images decoded smaller than their files (`data.decode.decode_for_input`,
    as scripts/predict.py and the evaluation loader read them); the resize and the boxes are in the
    original sizes given.
    """

    def __init__(
        self,
        model: RetinaNet,
        postprocess: PostProcess,
        min_size: int,
        max_size: int,
        size_divisible: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__()
        self.model = model
        self.postprocess = postprocess
        self.min_size = min_size
        self.max_size = max_size
        self.size_divisible = size_divisible
        self.mean = tuple(mean)
        self.std = tuple(std)

    @classmethod
    def from_config(cls, cfg: Config, num_classes: int | None = None, model: RetinaNet | None = None) -> "Detector":
        return cls(
            model if model is not None else build_model(cfg, num_classes),
            build_postprocess(cfg),
            min_size=cfg.input.test_min_size,
            max_size=cfg.input.max_size,
            size_divisible=cfg.input.size_divisible,
        )

    def preprocess(
        self, images: Sequence[Tensor], orig_sizes: Sequence[tuple[int, int]] | None = None
    ) -> tuple[Tensor, list[tuple[int, int]]]:
        """Resize, normalize and pad: (N, 3, H, W) batch and each resized (H, W)."""
        return prepare_images(images, self.min_size, self.max_size, self.size_divisible, self.mean, self.std, orig_sizes)

    @torch.no_grad()
    def forward(
        self, images: Sequence[Tensor], orig_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[dict[str, Tensor]]:
        for im in images:
            if im.dim() != 3 or im.shape[0] != 3 or not (im.is_floating_point() or im.dtype == torch.uint8):
                raise ValueError(
                    f"Detector expects (3, H, W) images, float in [0, 1] or uint8, got {tuple(im.shape)} {im.dtype}"
                )
        was_training = self.model.training
        self.model.eval()
        try:
            batch, sizes = self.preprocess(images, orig_sizes)
            batch = batch.to(next(self.model.parameters()).device)
            outputs = self.model(batch)
            orig = orig_sizes or [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
            return [d.as_dict() for d in self.postprocess(outputs, sizes, [tuple(hw) for hw in orig])]
        finally:
            self.model.train(was_training)

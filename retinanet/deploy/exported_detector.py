"""`ExportedDetector`: `Detector`'s contract for an exported file, whatever engine runs its graph.

Built from the file alone: its metadata (`export.ModelMetadata`) gives the classes, the
preprocessing and the thresholds. Inputs go through `prepare_images`, the code `Detector` and the
evaluation loader use, and boxes come back to original-image pixels with `rescale_boxes`, as
`PostProcess` does, so the same image gives the same detections as the PyTorch `Detector`.
A runtime (onnxruntime, OpenVINO) subclasses it and supplies `infer` and `input_shape`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from retinanet.deploy.export import ModelMetadata
from retinanet.fileio import RunFileError
from retinanet.modeling.postprocess import rescale_boxes
from retinanet.modeling.preprocess import prepare_images
from retinanet.structures import Detections


class ExportedDetector:
    """`detector(images)`: list of (3, H, W) tensors (float in [0, 1] or uint8) -> one dict per image with
    `boxes` (xyxy, input-image pixels), `scores` and `labels` (contiguous 0..K-1), like `Detector`.

    Subclasses set `path`, `metadata`, `input_shape` (ints where static, anything else where
    dynamic) and implement `infer` on one batch the graph takes.
    """

    path: Path
    metadata: ModelMetadata
    input_shape: list[Any]
    precision: str  # f32, bf16 or int8: what the graph runs in

    def _read_preprocess(self) -> None:
        pre = self.metadata.preprocess
        self.min_size, self.max_size = int(pre["min_size"]), int(pre["max_size"])
        self.size_divisible = int(pre["size_divisible"])
        self.mean, self.std = tuple(pre["mean"]), tuple(pre["std"])

    @property
    def label(self) -> str:
        """The runtime, its version and precision in a few words (a table row)."""
        raise NotImplementedError

    def describe(self) -> str:
        """What it runs under and why (printed by predict and evaluate)."""
        return self.label

    @property
    def amp(self) -> str:
        """The precision as the files of record name it (`eval.amp`'s values; int8 for a quantized graph)."""
        return "none" if self.precision == "f32" else self.precision

    def infer(self, images: np.ndarray, image_sizes: np.ndarray) -> list[np.ndarray]:
        """The graph's four outputs for one batch of the graph's shape (arrays the caller may keep)."""
        raise NotImplementedError

    @property
    def categories(self) -> list[dict[str, Any]]:
        return self.metadata.categories

    @property
    def category_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.categories]

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def preprocess(
        self, images: Sequence[Tensor], orig_sizes: Sequence[tuple[int, int]] | None = None
    ) -> tuple[Tensor, list[tuple[int, int]]]:
        """Resize, normalize and pad with the file's settings: (N, 3, H, W) batch and each resized (H, W)."""
        return prepare_images(images, self.min_size, self.max_size, self.size_divisible, self.mean, self.std, orig_sizes)

    def __call__(
        self, images: Sequence[Tensor], orig_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[dict[str, Tensor]]:
        """`orig_sizes` as in `Detector`: the sizes of the files that images decoded smaller stand for."""
        for im in images:
            if im.dim() != 3 or im.shape[0] != 3 or not (im.is_floating_point() or im.dtype == torch.uint8):
                raise RunFileError(f"{self.path}: expects (3, H, W) images, float in [0, 1] or uint8, got "
                                   f"{tuple(im.shape)} {im.dtype}; convert the image to RGB CHW")
        batch, sizes = self.preprocess(images, orig_sizes)
        orig = orig_sizes or [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        return [d.as_dict() for d in self.detect_prepared(batch, sizes, [tuple(hw) for hw in orig])]

    def run(self, batch: Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """The raw graph outputs (boxes, scores, labels, num_detections) for a prepared batch.

        A graph exported without --dynamic runs only its traced (H, W); its batch size may be
        smaller than N, then the batch runs in chunks (the last one filled with blank images).
        """
        self.check_shape(batch)
        static_n = self.input_shape[0] if isinstance(self.input_shape[0], int) else batch.shape[0]
        images = batch.detach().cpu().float().numpy()
        sizes = np.asarray(image_sizes, dtype=np.int64).reshape(-1, 2)
        chunks = []
        for start in range(0, images.shape[0], static_n):
            part, part_sizes = images[start : start + static_n], sizes[start : start + static_n]
            fill = static_n - part.shape[0]
            if fill:
                part = np.concatenate([part, np.zeros((fill, *part.shape[1:]), part.dtype)])
                part_sizes = np.concatenate([part_sizes, np.repeat(part_sizes[-1:], fill, axis=0)])
            chunks.append([o[: static_n - fill] for o in self.infer(part, part_sizes)])
        return [np.concatenate(parts) for parts in zip(*chunks)]

    def check_shape(self, batch: Tensor) -> None:
        """A one-line error for a batch the graph cannot take (channels, or the traced size of a static export)."""
        expected = self.input_shape
        wrong = batch.dim() != 4 or any(
            isinstance(e, int) and i > 0 and e != batch.shape[i] for i, e in enumerate(expected)
        )
        if not wrong:
            return
        shown = "(" + ", ".join(str(e) if isinstance(e, int) else "?" for e in expected) + ")"
        raise RunFileError(
            f"{self.path}: takes input batches of shape {shown}, got {tuple(batch.shape)}; export with --dynamic "
            "for other sizes (scripts/export.py --checkpoint CKPT --dynamic)"
        )

    def detect_prepared(
        self,
        batch: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        orig_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[Detections]:
        """A prepared batch (`prepare_images`, or an evaluation loader's) -> detections per image.

        Boxes in original-image pixels when `orig_sizes` is given, else in input pixels. This has
        `PostProcess`'s signature, so `engine.inference.evaluate(nn.Identity(), detector.detect_prepared, ...)`
        evaluates the file with the loop that evaluates checkpoints.
        """
        boxes, scores, labels, counts = self.run(batch, image_sizes)
        results = []
        for i, count in enumerate(counts.tolist()):
            b = torch.from_numpy(boxes[i, :count].copy())
            if orig_sizes is not None:
                b = rescale_boxes(b, tuple(image_sizes[i]), tuple(orig_sizes[i]))
            results.append(Detections(b, torch.from_numpy(scores[i, :count].copy()),
                                      torch.from_numpy(labels[i, :count].copy())))
        return results

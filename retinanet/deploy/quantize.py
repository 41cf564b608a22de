"""INT8 by post-training quantization (NNCF) of an OpenVINO model, calibrated on training images.

Calibration images are a config's data.train images, prepared by `prepare_images` with the
file's own preprocessing (the input path of every runtime), evenly spaced over the split. The
quantizer sees constant convolution weights only because export folded BatchNorm into them
(`fold.fold_constants`). The graph's postprocessing (decoding, clipping, NMS) stays in float:
quantization is restricted to the convolutions and their inputs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from retinanet.config import ConfigError, load_config
from retinanet.data.coco import load_image
from retinanet.data.loaders import build_dataset
from retinanet.deploy.export import INPUT_NAMES, ModelMetadata, quiet_library_logs, require
from retinanet.modeling.preprocess import prepare_images

DEFAULT_CALIBRATION_IMAGES = 100


@dataclass(frozen=True)
class Calibration:
    """Where the calibration images come from: `config`'s data.train split, `images` of them."""

    config: Path
    images: int = DEFAULT_CALIBRATION_IMAGES

    def check(self) -> None:
        if self.images < 1:
            raise ConfigError(f"--calibration-images {self.images}: must be >= 1")
        if not Path(self.config).is_file():
            raise ConfigError(f"--calibration-config {self.config}: file not found")


def calibration_inputs(
    calibration: Calibration, metadata: ModelMetadata, input_shape: list[Any]
) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """Graph inputs for NNCF (batches of the graph's static N, H, W where it has them) and the record of what was used."""
    cfg = load_config(str(calibration.config))
    dataset = build_dataset(cfg, "train", str(calibration.config))
    ids = dataset.ids
    if not ids:
        raise ConfigError(f"--calibration-config {calibration.config}: data.train has no images to calibrate on")
    step = max(1, len(ids) // calibration.images)
    picked = ids[::step][: calibration.images]
    pre = metadata.preprocess
    batch_n = input_shape[0] if isinstance(input_shape[0], int) else 1
    inputs = []
    for start in range(0, len(picked), batch_n):
        group = picked[start : start + batch_n]
        group += [group[-1]] * (batch_n - len(group))  # a static batch is filled with repeats
        photos = [torch.from_numpy(load_image(dataset.images_dir / dataset.coco.imgs[i]["file_name"])).permute(2, 0, 1)
                  for i in group]
        batch, sizes = prepare_images(photos, int(pre["min_size"]), int(pre["max_size"]), int(pre["size_divisible"]),
                                      tuple(pre["mean"]), tuple(pre["std"]))
        if isinstance(input_shape[2], int) and isinstance(input_shape[3], int):  # a static graph: zero padding, as prepare_images pads
            batch = F.pad(batch, (0, input_shape[3] - batch.shape[3], 0, input_shape[2] - batch.shape[2]))
        inputs.append({INPUT_NAMES[0]: batch.numpy(), INPUT_NAMES[1]: np.asarray(sizes, dtype=np.int64)})
    record = {"config": str(calibration.config), "split": "train", "annotations": str(cfg.data.train.annotations),
              "images": len(picked)}
    return inputs, record


def quantize_int8(model: Any, inputs: list[dict[str, np.ndarray]]) -> tuple[Any, dict[str, Any]]:
    """NNCF's default post-training quantization of the convolutions; returns the model and what was done."""
    with quiet_library_logs():
        nncf = require("nncf")
        nncf.set_log_level(logging.WARNING)  # its per-node INFO lines are not for users
        ignored = ["Add", "Multiply", "Subtract", "Divide", "MatMul", "Maximum", "Minimum"]  # the graph's box arithmetic
        quantized = nncf.quantize(
            model, nncf.Dataset(inputs), subset_size=len(inputs), preset=nncf.QuantizationPreset.PERFORMANCE,
            ignored_scope=nncf.IgnoredScope(types=ignored, validate=False),
        )
    method = "post-training (min-max, performance preset, fast bias correction)"
    return quantized, {"tool": f"nncf {nncf.__version__}", "method": method, "ignored_types": ignored}

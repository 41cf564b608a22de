"""Checkpoint -> self-contained ONNX file with the run's classes, preprocessing and operating point."""
from __future__ import annotations

import logging
from pathlib import Path

from retinanet.config import replace
from retinanet.engine.checkpoint import Checkpoint, load_model_weights
from retinanet.evaluation.operating_point import load_report
from retinanet.modeling.export import DEFAULT_OPSET, ModelMetadata, check_opset, export_onnx
from retinanet.modeling.model import build_model, build_postprocess
from retinanet.modeling.preprocess import IMAGENET_MEAN, IMAGENET_STD


def export_checkpoint(
    checkpoint: Path,
    output: Path | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = False,
    batch_size: int = 1,
) -> Path:
    """Export `checkpoint` to `output` (default: beside it, `.onnx`); returns the path written.

    The run folder's operating_point.json (the checkpoint's parent's parent, where train.py and
    evaluate.py --target-* write it) goes into the metadata when there is one.
    """
    check_opset(opset)  # before the slow part: loading and tracing
    checkpoint = Path(checkpoint)
    ckpt = Checkpoint.load(checkpoint)
    cfg = ckpt.build_config(f"{checkpoint} (config)")
    cfg = replace(cfg, **{"model.num_classes": len(ckpt.categories) or cfg.model.num_classes,
                          "model.backbone.weights": "none"})  # the checkpoint holds every weight
    log = logging.getLogger("retinanet")
    level = log.level
    log.setLevel(logging.ERROR)  # build_model warns about frozen BN on random weights: these are trained ones
    try:
        model = build_model(cfg)
    finally:
        log.setLevel(level)
    load_model_weights(model, ckpt.inference_weights, checkpoint)
    report = load_report(checkpoint.parent.parent) if checkpoint.parent.name == "checkpoints" else None
    metadata = ModelMetadata.from_config(
        cfg, ckpt.categories, IMAGENET_MEAN, IMAGENET_STD,
        operating_point=report.to_dict() if report is not None else None,
        source={"checkpoint": str(checkpoint), "iteration": ckpt.iteration},
    )
    output = Path(output) if output is not None else checkpoint.with_suffix(".onnx")
    return export_onnx(model.eval(), build_postprocess(cfg), metadata, output, opset, dynamic, batch_size)

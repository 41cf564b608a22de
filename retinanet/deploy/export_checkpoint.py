"""Checkpoint -> a self-contained ONNX file or OpenVINO IR (f32, or INT8 by post-training quantization)
with the run's classes, preprocessing and operating point."""
from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

from retinanet.config import ConfigError, replace
from retinanet.deploy.export import DEFAULT_OPSET, ModelMetadata, check_opset, export_onnx, require
from retinanet.deploy.openvino_export import read_onnx, save_ir
from retinanet.deploy.quantize import Calibration, calibration_inputs, quantize_int8
from retinanet.engine.checkpoint import Checkpoint, load_model_weights
from retinanet.evaluation.operating_point import load_report
from retinanet.modeling.model import build_model, build_postprocess
from retinanet.modeling.preprocess import IMAGENET_MEAN, IMAGENET_STD

FORMATS = ("onnx", "openvino")


def check_request(fmt: str, calibration: Calibration | None, int8: bool) -> None:
    """One-line errors for a format/INT8 request that cannot be met, before the slow part."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
    if int8 and calibration is None:
        raise ConfigError("--int8: post-training quantization needs calibration images; add --calibration-config "
                          "CONFIG (its data.train images) [--calibration-images N]")
    if int8 and fmt != "openvino":
        raise ConfigError("--int8 writes an OpenVINO IR: use --format openvino (or leave --format out)")
    if calibration is not None and not int8:
        raise ConfigError("--calibration-config: only used with --int8; add --int8 or drop it")
    if calibration is not None:
        calibration.check()
    if fmt == "openvino":
        require("openvino")
        if int8:
            require("nncf")


def export_checkpoint(
    checkpoint: Path,
    output: Path | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = False,
    batch_size: int = 1,
    fmt: str = "onnx",
    calibration: Calibration | None = None,
) -> Path:
    """Export `checkpoint` to `output` (default: beside it, `.onnx`, `.xml` or `_int8.xml`); returns the path written.

    The run folder's operating_point.json (the checkpoint's parent's parent, where train.py and
    evaluate.py --target-* write it) goes into the metadata when there is one. `calibration`
    (OpenVINO only) quantizes to INT8 and records the calibration in the metadata.
    """
    check_opset(opset)  # before the slow part: loading and tracing
    check_request(fmt, calibration, calibration is not None)
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
    suffix = ".onnx" if fmt == "onnx" else "_int8.xml" if calibration is not None else ".xml"
    output = Path(output) if output is not None else checkpoint.with_name(checkpoint.stem + suffix)
    postprocess = build_postprocess(cfg)
    if fmt == "onnx":
        return export_onnx(model.eval(), postprocess, metadata, output, opset, dynamic, batch_size)
    with tempfile.TemporaryDirectory() as tmp:  # the IR is converted from the ONNX file, then written on its own
        onnx_path = export_onnx(model.eval(), postprocess, metadata, Path(tmp) / "model.onnx", opset, dynamic, batch_size)
        ov_model = read_onnx(onnx_path)
        if calibration is not None:
            shape = [d.get_length() if d.is_static else "?" for d in ov_model.inputs[0].get_partial_shape()]
            inputs, record = calibration_inputs(calibration, metadata, shape)
            ov_model, method = quantize_int8(ov_model, inputs)
            metadata = dataclasses.replace(metadata, precision="int8", calibration={**record, **method})
        return save_ir(ov_model, metadata, output)

"""An exported .onnx file -> OpenVINO IR (.xml + .bin) with the same `ModelMetadata` in its rt_info.

The IR keeps f32 weights (OpenVINO's save_model would halve them to f16 by default, which breaks
parity with the PyTorch model); precision is chosen when the file is run (`OpenVinoDetector`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from retinanet.deploy.export import ModelMetadata, require
from retinanet.deploy.openvino_detector import RT_INFO_SECTION


def read_onnx(path: Path) -> Any:
    """The .onnx file as an `openvino.Model` (no metadata: `save_ir` writes it)."""
    return require("openvino").convert_model(str(path))


def save_ir(model: Any, metadata: ModelMetadata, output: Path) -> Path:
    """Write `model` with `metadata` to `output` (.xml) and its weights beside it (.bin); returns the .xml path."""
    ov = require("openvino")
    for key, value in metadata.to_props().items():
        section, name = key.split(".", 1)
        assert section == RT_INFO_SECTION, key
        model.set_rt_info(value, [section, name])
    output = Path(output).with_suffix(".xml")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp.xml")
    try:
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), output.with_suffix(".bin"))
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)
    return output

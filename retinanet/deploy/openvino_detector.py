"""`OpenVinoDetector`: an exported .onnx file or OpenVINO IR (.xml) run by OpenVINO on the CPU, with `Detector`'s contract.

Precision: `f32`, `bf16` (the CPU's bf16 units; `auto` picks it where the CPU has AMX, the probe of
`engine.runtime.cpu_has_amx`, which RETINANET_CPU_AMX overrides) for the float layers; an IR that
`export.py --int8` wrote runs its quantized layers in int8 and the rest at that float precision.
`describe()` says what it runs under. The metadata is read from the .onnx file's `metadata_props`
or from the IR's `rt_info` (section `retinanet`, the same keys), so both go through `ModelMetadata`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retinanet.config import ConfigError
from retinanet.deploy.export import INPUT_NAMES, ModelMetadata, require
from retinanet.deploy.exported_detector import ExportedDetector
from retinanet.engine.runtime import cpu_has_amx
from retinanet.fileio import RunFileError

PRECISIONS = ("auto", "f32", "bf16")
RT_INFO_SECTION = "retinanet"


def resolve_precision(requested: str, capabilities: list[str]) -> tuple[str, str]:
    """(f32 | bf16, why) for the float layers; `capabilities` is OpenVINO's CPU OPTIMIZATION_CAPABILITIES."""
    if requested not in PRECISIONS:
        raise ConfigError(f"--precision {requested}: must be one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        if cpu_has_amx():
            return "bf16", "auto: the CPU has AMX (amx_bf16)"
        return "f32", "auto: no AMX on this CPU"
    if requested == "bf16" and "BF16" not in capabilities:
        raise ConfigError("--precision bf16: this CPU has no bf16 units (OpenVINO lists no BF16 capability); "
                          "use --precision f32")
    return requested, "requested"


def read_props(path: Path, model: Any) -> dict[str, str]:
    """The `retinanet.*` metadata of an IR (rt_info) or of an .onnx file (metadata_props)."""
    if path.suffix == ".onnx":
        onnx = require("onnx")
        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    info = model.get_rt_info()
    if RT_INFO_SECTION not in info:
        return {}
    return {f"{RT_INFO_SECTION}.{key}": model.get_rt_info([RT_INFO_SECTION, key]).astype(str)
            for key in info[RT_INFO_SECTION]}


class OpenVinoDetector(ExportedDetector):
    """The file on OpenVINO's CPU plugin; `threads` sets its inference threads (0: its default)."""

    runtime = "openvino"

    def __init__(self, path: str | Path, precision: str = "auto", threads: int = 0):
        ov = require("openvino")
        self.path = Path(path)
        if not self.path.is_file():
            raise RunFileError(f"{self.path}: model not found; check the path, or export one with "
                               "scripts/export.py --checkpoint CKPT [--format openvino]")
        core = ov.Core()
        self.float_precision, self.why = resolve_precision(precision, core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses for every unreadable file
            raise RunFileError(f"{self.path}: not a readable ONNX or OpenVINO IR model "
                               f"({str(exc).strip().splitlines()[0][:120]}); export it again with scripts/export.py") from None
        self.metadata = ModelMetadata.from_props(read_props(self.path, model), self.path)
        names = tuple(i.get_any_name() for i in model.inputs)
        if names != INPUT_NAMES:
            raise RunFileError(f"{self.path}: graph inputs {names}, expected {INPUT_NAMES}; export it again with "
                               "scripts/export.py")
        shape = model.inputs[0].get_partial_shape()
        self.input_shape: list[Any] = [d.get_length() if d.is_static else "?" for d in shape]
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.float_precision}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = "int8" if self.metadata.precision == "int8" else self.float_precision
        self.version = ov.get_version().split("-")[0]
        self._read_preprocess()

    @property
    def label(self) -> str:
        """Short: `OpenVINO 2026.4.1 CPU bf16`, or `... CPU int8+bf16` (the other layers' precision after the +)."""
        shown = f"int8+{self.float_precision}" if self.precision == "int8" else self.float_precision
        return f"OpenVINO {self.version} CPU {shown}"

    def describe(self) -> str:
        """What it runs under, e.g. `OpenVINO 2026.4.1 CPU int8 (other layers bf16: auto: the CPU has AMX (amx_bf16))`."""
        if self.precision == "int8":
            return f"OpenVINO {self.version} CPU int8 (other layers {self.float_precision}: {self.why})"
        return f"OpenVINO {self.version} CPU {self.float_precision} ({self.why})"

    def infer(self, images: np.ndarray, image_sizes: np.ndarray) -> list[np.ndarray]:
        result = self.request.infer({INPUT_NAMES[0]: images, INPUT_NAMES[1]: image_sizes})
        return [np.array(result[output], copy=True) for output in self.compiled.outputs]  # the request reuses its buffers

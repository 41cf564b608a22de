"""Open an exported file on the runtime the user asked for: onnxruntime (the default for .onnx) or OpenVINO (.xml IRs)."""
from __future__ import annotations

from pathlib import Path

from retinanet.config import ConfigError
from retinanet.deploy.exported_detector import ExportedDetector
from retinanet.deploy.onnx_detector import OnnxDetector
from retinanet.deploy.openvino_detector import OpenVinoDetector

RUNTIMES = ("onnxruntime", "openvino")


def open_model(path: str | Path, runtime: str | None = None, precision: str = "auto", threads: int = 0) -> ExportedDetector:
    """The detector for `path`; `runtime` None picks by suffix, `precision` applies to OpenVINO only."""
    path = Path(path)
    runtime = runtime or ("openvino" if path.suffix == ".xml" else "onnxruntime")
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime}: must be one of {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime":
        if path.suffix == ".xml":
            raise ConfigError(f"--runtime onnxruntime: {path} is an OpenVINO IR; use --runtime openvino")
        if precision != "auto":
            raise ConfigError(f"--precision {precision}: onnxruntime runs f32 only; use --runtime openvino")
        return OnnxDetector(path, threads=threads)
    return OpenVinoDetector(path, precision=precision, threads=threads)

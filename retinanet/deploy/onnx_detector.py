"""`OnnxDetector`: an exported .onnx file run by onnxruntime, with `Detector`'s contract (`ExportedDetector`)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retinanet.deploy.export import INPUT_NAMES, ModelMetadata, require
from retinanet.deploy.exported_detector import ExportedDetector
from retinanet.fileio import RunFileError


class OnnxDetector(ExportedDetector):
    """The file on onnxruntime. `threads` sets its intra-op threads (0: its default); graph optimizations are all on."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 0, providers: Sequence[str] = ("CPUExecutionProvider",)):
        ort = require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise RunFileError(f"{self.path}: ONNX model not found; check the path, or export one with "
                               "scripts/export.py --checkpoint CKPT")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: its constant-folding notes are not for users
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for every unreadable file
            raise RunFileError(f"{self.path}: not a readable ONNX model ({str(exc).splitlines()[0][:120]}); "
                               "export it again with scripts/export.py") from None
        self.metadata = ModelMetadata.from_props(self.session.get_modelmeta().custom_metadata_map, self.path)
        names = tuple(i.name for i in self.session.get_inputs())
        if names != INPUT_NAMES:
            raise RunFileError(f"{self.path}: graph inputs {names}, expected {INPUT_NAMES}; export it again with "
                               "scripts/export.py")
        self.input_shape: list[Any] = list(self.session.get_inputs()[0].shape)  # ints where static, names where dynamic
        self.precision = "f32"
        self._read_preprocess()

    @property
    def label(self) -> str:
        return f"onnxruntime {require('onnxruntime').__version__} CPU fp32"


    def infer(self, images: np.ndarray, image_sizes: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {INPUT_NAMES[0]: images, INPUT_NAMES[1]: image_sizes})

"""Run logging: `metrics.jsonl` plus TensorBoard, fed with plain dicts by the training loop.

Every call writes one JSON line `{"kind", "step", "wall_time", ...}` and flushes it, so the
file is complete up to the last call even if the run dies. Undefined numbers (nan, inf)
become JSON `null` there and are left out of TensorBoard.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retinanet.evaluation.evaluator import STAT_NAMES

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
# What SummaryWriter writes into the run folder: the main run's events and the hparams sub-run.
TENSORBOARD_FILES = ("events.out.tfevents.*", "hparams/")


def setup_file_logging(path: Path) -> None:
    """Send the "retinanet" logger to `path` too, once per path, at INFO level."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("retinanet")
    target = str(path.resolve())
    if any(isinstance(h, logging.FileHandler) and h.baseFilename == target for h in logger.handlers):
        return
    handler = logging.FileHandler(target)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a run's metrics.jsonl (what `RunLogger` writes), skipping a half-written last line."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value))


def _json_safe(value: Any) -> Any:
    """nan/inf -> None and numpy scalars/arrays -> Python, so every line is strict JSON."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _hparam_value(value: Any) -> bool | int | float | str:
    """add_hparams accepts bool/int/float/str only; anything else is shown as text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return str(value)


def _render_pr_curve(recall: np.ndarray, precision: np.ndarray, title: str) -> np.ndarray:
    """Draw precision over recall with matplotlib's Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4, 4), dpi=80)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(recall, precision, color="tab:blue")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.05)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(title, fontsize=9)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8


class RunLogger:
    """Writes `metrics.jsonl` and TensorBoard events under `output_dir`.

    With `enabled=False` (non-zero ranks) it creates nothing and every method is a no-op,
    so callers need no rank checks.
    """

    def __init__(self, output_dir: Path, enabled: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self._writer: Any = None
        self._jsonl: Any = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.output_dir / METRICS_FILE, "a", encoding="utf-8")
        self._writer = SummaryWriter(log_dir=str(self.output_dir))

    def _write_line(self, kind: str, step: int | None, payload: Mapping[str, Any]) -> None:
        record = {"kind": kind, "step": step, "wall_time": round(time.time(), 3), **payload}
        self._jsonl.write(json.dumps(_json_safe(record), allow_nan=False) + "\n")
        self._jsonl.flush()

    def log_record(self, kind: str, step: int, payload: Mapping[str, Any]) -> None:
        """One JSON line and nothing in TensorBoard (e.g. a time budget's plan: lists and nested values)."""
        if self.enabled:
            self._write_line(kind, step, payload)

    def log_scalars(
        self, step: int, values: Mapping[str, float], prefix: str | None = None, kind: str = "train"
    ) -> None:
        """One JSON line with the raw keys; TensorBoard tags `<prefix>/<key>` (prefix defaults to kind)."""
        if not self.enabled:
            return
        self._write_line(kind, step, values)
        tag_prefix = kind if prefix is None else prefix
        for key, value in values.items():
            if _finite(value):
                self._writer.add_scalar(f"{tag_prefix}/{key}" if tag_prefix else key, float(value), step)

    def log_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
        """COCO metrics: `eval/<stat>` and `eval_per_class/<name>` (AP@[.5:.95]); undefined skipped."""
        if not self.enabled:
            return
        per_class = metrics.get("per_class") or {}
        payload = {key: value for key, value in metrics.items() if key != "per_class"}
        payload["per_class"] = {name: entry.get("AP") for name, entry in per_class.items()}
        self._write_line("eval", step, payload)
        for name in (*STAT_NAMES, "loss", "loss_cls", "loss_box"):  # the val loss, when it was computed
            value = metrics.get(name)
            if _finite(value):
                self._writer.add_scalar(f"eval/{name}", float(value), step)
        for name, entry in per_class.items():
            value = entry.get("AP")
            if _finite(value):
                self._writer.add_scalar(f"eval_per_class/{name}", float(value), step)
        self._writer.flush()

    def log_pr_curve(self, step: int, tag: str, recall: np.ndarray, precision: np.ndarray) -> None:
        """A COCO precision/recall curve, as an image in TensorBoard and raw arrays in the JSON line.

        `add_pr_curve_raw` expects TP/FP/TN/FN counts per score threshold; COCO's curve is
        interpolated precision at fixed recall points and has no such counts, so faked
        counts would show wrong numbers. A drawn plot shows exactly what COCO computed.
        """
        if not self.enabled:
            return
        recall = np.asarray(recall, dtype=np.float64)
        precision = np.asarray(precision, dtype=np.float64)
        self._write_line("pr_curve", step, {"tag": tag, "recall": recall, "precision": precision})
        image = _render_pr_curve(recall, np.nan_to_num(precision, nan=0.0), f"{tag} (step {step})")
        self._writer.add_image(tag, image, step, dataformats="HWC")
        self._writer.flush()

    def log_images(self, step: int, tag: str, images: Sequence[np.ndarray]) -> None:
        """HWC uint8 images as `<tag>/<i>` (one tag each, since sizes differ)."""
        if not self.enabled:
            return
        for index, image in enumerate(images):
            self._writer.add_image(f"{tag}/{index}", np.asarray(image, dtype=np.uint8), step, dataformats="HWC")
        self._write_line("images", step, {"tag": tag, "count": len(images)})
        self._writer.flush()

    def log_hparams(
        self, hparams: Mapping[str, Any], metrics: Mapping[str, Any], step: int | None = None, run_name: str = "hparams"
    ) -> None:
        """Hyperparameters (nested dicts flattened with '.') against final metrics.

        TensorBoard writes these to the `<run_name>/` sub-run, so the metric scalars do not
        duplicate the main run's curves; one writer can hold several entries under distinct names.
        """
        if not self.enabled:
            return
        flat_hparams = {key: _hparam_value(value) for key, value in _flatten(hparams).items()}
        flat_metrics = {key: float(value) for key, value in _flatten(metrics).items() if _finite(value)}
        self._write_line("hparams", step, {"hparams": flat_hparams, "metrics": flat_metrics})
        self._writer.add_hparams(flat_hparams, flat_metrics, run_name=run_name, global_step=step)
        self._writer.flush()

    def flush(self) -> None:
        if self.enabled:
            self._writer.flush()
            self._jsonl.flush()

    def close(self) -> None:
        """Flush and close both outputs; safe to call twice."""
        if not self.enabled:
            return
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        self.enabled = False

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

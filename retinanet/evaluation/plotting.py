"""matplotlib figures without pyplot (no global backend, safe in training and in workers).

Every report figure is drawn on an Agg canvas and either returned as an (H, W, 3) uint8 array
(for TensorBoard) or written as a PNG (atomically: a crash leaves the old file or the new one).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width_in: float, height_in: float, dpi: int = 100) -> Figure:
    figure = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def figure_to_array(figure: Figure) -> np.ndarray:
    """The rendered figure as (H, W, 3) uint8."""
    canvas = figure.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def figure_png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a binary file (a figure) so a crash leaves the old or the new one, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_figure(figure: Figure, path: Path) -> Path:
    write_bytes_atomic(path, figure_png_bytes(figure))
    return Path(path)

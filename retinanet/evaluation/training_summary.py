"""results.png: a run's training at a glance, drawn from its metrics.jsonl rows.

Rows are the dicts `engine.logger.RunLogger` writes, one per line: {"kind": "train", "step", "loss",
"loss_cls", "loss_box", "lr", ...} and {"kind": "eval", "step", "AP", "AP50", ..., and the val loss
"loss", "loss_cls", "loss_box" where logged}. Other kinds are ignored; null values are skipped.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from retinanet.evaluation.plotting import new_figure, save_figure

FILE_NAME = "results.png"
LOSS_KEYS = ("loss", "loss_cls", "loss_box")


def _series(rows: Iterable[Mapping[str, Any]], kind: str, key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        if row.get("kind") == kind and isinstance(value, (int, float)) and math.isfinite(value):
            steps.append(int(row["step"]))
            values.append(float(value))
    return steps, values


def plot_training_summary(rows: list[Mapping[str, Any]], path: Path) -> Path:
    """Train and val losses, learning rate, and val AP / AP50 over iterations, as one PNG at `path`."""
    figure = new_figure(13.0, 3.6)
    losses, lr, ap = (figure.add_subplot(1, 3, i) for i in (1, 2, 3))
    for key, color in zip(LOSS_KEYS, ("black", "tab:blue", "tab:orange")):
        steps, values = _series(rows, "train", key)
        if steps:
            losses.plot(steps, values, color=color, linewidth=1, label=f"train {key}")
        steps, values = _series(rows, "eval", key)
        if steps:
            losses.plot(steps, values, "o--", color=color, linewidth=1, markersize=4, label=f"val {key}")
    losses.set(xlabel="iteration", ylabel="loss", title="losses")
    steps, values = _series(rows, "train", "lr")
    lr.plot(steps, values, color="tab:green", linewidth=1)
    lr.set(xlabel="iteration", ylabel="learning rate", title="learning rate")
    for key, color in (("AP", "tab:blue"), ("AP50", "tab:red")):
        steps, values = _series(rows, "eval", key)
        if steps:
            ap.plot(steps, [100 * v for v in values], "o-", color=color, markersize=4, label=f"val {key}")
    ap.set(xlabel="iteration", ylabel="%", title="val AP")
    for axes in (losses, lr, ap):
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, Path(path))

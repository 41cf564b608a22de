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


def series(rows: Iterable[Mapping[str, Any]], kind: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one key in the rows of one kind, by step, leaving out null and non-finite values."""
    points = sorted(
        (int(row["step"]), float(row[key])) for row in rows
        if row.get("kind") == kind and isinstance(row.get(key), (int, float)) and math.isfinite(row[key])
    )  # by step: a resumed run appends rows again from its checkpoint
    return [p[0] for p in points], [p[1] for p in points]


def plot_training_summary(rows: list[Mapping[str, Any]], path: Path) -> Path:
    """Train and val losses, learning rate, and val AP / AP50 over iterations, as one PNG at `path`."""
    figure = new_figure(13.0, 3.6)
    losses, lr, ap = figure.subplots(1, 3, sharex=True)  # one iteration axis for all three
    for key, color in zip(LOSS_KEYS, ("black", "tab:blue", "tab:orange")):
        steps, values = series(rows, "train", key)
        if steps:
            losses.plot(steps, values, color=color, linewidth=1, label=f"train {key}")
        steps, values = series(rows, "eval", key)
        if steps:
            losses.plot(steps, values, "o--", color=color, linewidth=1, markersize=4, label=f"val {key}")
    losses.set(xlabel="iteration", ylabel="loss", title="losses")
    steps, values = series(rows, "train", "lr")
    lr.plot(steps, values, color="tab:green", linewidth=1)
    lr.set(xlabel="iteration", ylabel="learning rate", title="learning rate")
    for key, color in (("AP", "tab:blue"), ("AP50", "tab:red")):
        steps, values = series(rows, "eval", key)
        if steps:
            ap.plot(steps, [100 * v for v in values], "o-", color=color, markersize=4, label=f"val {key}")
    ap.set(xlabel="iteration", ylabel="%", title="val AP")
    steps = [int(r["step"]) for r in rows if r.get("kind") in ("train", "eval") and isinstance(r.get("step"), int)]
    if steps:
        ap.set_xlim(0, max(steps) * 1.02)
    for axes in (losses, lr, ap):
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, Path(path))

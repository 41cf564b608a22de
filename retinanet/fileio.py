"""Atomic writes of the small files a run keeps (model card, operating point), and their error type."""
from __future__ import annotations

import os
from pathlib import Path


class RunFileError(RuntimeError):
    """A run file (checkpoint, model card, operating point) that cannot be used; the message names it and the fix."""


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file (model card, operating point) so a crash leaves the old or the new one, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

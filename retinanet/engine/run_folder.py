"""The run folder: where a run writes, checked before any training starts."""
from __future__ import annotations

from pathlib import Path

LAST = "last.pt"
BEST = "best.pt"


def default_output_dir(config_path: str | Path) -> Path:
    """runs/<config name>, as detectron2 and mmdetection name their work dirs."""
    return Path("runs") / Path(config_path).stem


def checkpoint_path(out_dir: Path, name: str = LAST) -> Path:
    return Path(out_dir) / "checkpoints" / name


def ensure_writable(directory: Path) -> None:
    """Fail before training, not at the first checkpoint, when the run folder cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write_test"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise PermissionError(
            f"--output-dir {directory.parent}: cannot write there ({exc.strerror}); choose another --output-dir"
        ) from None


def prepare_run_folder(out_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a run, check --resume and writability (rank 0 only)."""
    last_path = checkpoint_path(out_dir)
    if last_path.exists() and not resume:
        raise FileExistsError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --output-dir")
    if resume and not last_path.exists():
        raise FileNotFoundError(f"--resume: {last_path} not found; start without --resume")
    ensure_writable(last_path.parent)

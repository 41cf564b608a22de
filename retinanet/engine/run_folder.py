"""The run folder: where a run writes, checked before any training starts."""
from __future__ import annotations

import shutil
from pathlib import Path

from retinanet.engine.checkpoint import previous_path
from retinanet.engine.logger import LOG_FILE, METRICS_FILE, TENSORBOARD_FILES
from retinanet.engine.runtime import RUNTIME_FILE
from retinanet.evaluation import model_card, operating_point, training_summary

LAST = "last.pt"
BEST = "best.pt"
CONFIG_FILE = "config.yaml"  # the resolved config, itself a valid --config

# Every file train.py writes into the run folder (patterns relative to it), from each file's own definition.
RUN_FILES: tuple[str, ...] = (
    CONFIG_FILE, RUNTIME_FILE, LOG_FILE, METRICS_FILE, *TENSORBOARD_FILES,
    *(f"checkpoints/{name}" for name in (LAST, previous_path(Path(LAST)).name, BEST, previous_path(Path(BEST)).name)),
    training_summary.FILE_NAME, model_card.CARD_NAME, model_card.FACTS_NAME, operating_point.FILE_NAME,
)


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


# Written at start-up, before a step: a start that stopped there (a config or data error) left no results,
# so the next start rewrites them (train.log appends) instead of refusing the folder.
START_UP_FILES: tuple[str, ...] = (CONFIG_FILE, RUNTIME_FILE, LOG_FILE)


def earlier_run_files(out_dir: Path) -> list[str]:
    """The files of an earlier run's training in `out_dir` (a run that died before its first checkpoint
    leaves some); the start-up files alone do not count."""
    return [pattern for pattern in RUN_FILES
            if pattern not in START_UP_FILES and any(Path(out_dir).glob(pattern.rstrip("/")))]


def discard_run_files(out_dir: Path, keep: tuple[str, ...] = ()) -> None:
    """Delete an unfinished run's files (no checkpoint to resume) but those in `keep`, so a study, or the
    user with a longer train.time_budget, can train that run again in the same folder."""
    for pattern in RUN_FILES:
        if pattern in keep:
            continue
        for path in Path(out_dir).glob(pattern.rstrip("/")):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def prepare_run_folder(out_dir: Path, resume: bool) -> None:
    """Refuse to overwrite or mix with an earlier run, check --resume and writability (rank 0 only)."""
    last_path = checkpoint_path(out_dir)
    if last_path.exists() and not resume:
        raise FileExistsError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --output-dir")
    if resume and not last_path.exists():
        raise FileNotFoundError(f"--resume: {last_path} not found; start without --resume")
    found = [] if resume else earlier_run_files(out_dir)
    if found:
        raise FileExistsError(
            f"{out_dir} holds files of an earlier run ({', '.join(found)}) but no checkpoints/{LAST} to --resume from; "
            "choose another --output-dir, or delete the folder to start over"
        )
    ensure_writable(last_path.parent)

"""The run folder check: an earlier run's files are never overwritten or mixed with a new run's."""
from __future__ import annotations

from pathlib import Path

import pytest

from retinanet.engine.run_folder import RUN_FILES, discard_run_files, prepare_run_folder


def test_an_empty_or_new_folder_is_used(tmp_path: Path) -> None:
    prepare_run_folder(tmp_path / "new", resume=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a run file")
    prepare_run_folder(tmp_path / "empty", resume=False)
    assert (tmp_path / "new" / "checkpoints").is_dir()


@pytest.mark.parametrize("name", ["metrics.jsonl", "events.out.tfevents.1.host.0", "results.png"])
def test_a_run_that_died_before_its_first_checkpoint_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("")
    with pytest.raises(FileExistsError, match=rf"^{tmp_path} holds files of an earlier run .* choose another --output-dir"):
        prepare_run_folder(tmp_path, resume=False)
    with pytest.raises(FileNotFoundError, match="--resume: .*last.pt not found"):
        prepare_run_folder(tmp_path, resume=True)


def test_a_start_that_stopped_before_training_is_started_again(tmp_path: Path) -> None:
    """A config or data error stops train.py after it wrote its start-up files: fixing it and rerunning must work."""
    for name in ("config.yaml", "train.log", "runtime.json"):
        (tmp_path / name).write_text("")
    prepare_run_folder(tmp_path, resume=False)


def test_a_run_with_last_pt_needs_resume(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        prepare_run_folder(tmp_path, resume=False)
    prepare_run_folder(tmp_path, resume=True)


def test_discard_removes_the_run_files_only(tmp_path: Path) -> None:
    for name in ("config.yaml", "metrics.jsonl", "hparams/events.out.tfevents.2", "console.log"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    discard_run_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["console.log"]
    prepare_run_folder(tmp_path, resume=False)
    assert "checkpoints/last.prev.pt" in RUN_FILES and "checkpoints/best.prev.pt" in RUN_FILES

"""The README's quick start runs as written: its first command block, line by line, in a scratch folder."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


def _quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]
    return [c for c in commands if not c.startswith("tensorboard")]  # a server: it never returns


def test_the_quick_start_block_is_the_sample_set_workflow() -> None:
    commands = _quick_start_commands()
    assert [shlex.split(c)[1] for c in commands] == ["train.py", "evaluate.py", "scripts/predict.py",
                                                      "scripts/check_dataset.py"]


@pytest.mark.slow
def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    for name in ("configs", "data", "scripts", "train.py", "evaluate.py"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    for command in _quick_start_commands():
        args = shlex.split(command)
        assert args[0] == "python"
        result = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    run = tmp_path / "runs" / "sample"
    assert json.loads((run / "eval_val" / "metrics.json").read_text())["AP"] >= 0.0
    assert (run / "MODEL_CARD.md").is_file() and (run / "checkpoints" / "last.pt").is_file()
    drawn = sorted(p.name for p in (run / "predictions").glob("*.png"))
    assert len(drawn) == len(list((REPO / "data" / "sample" / "val").glob("*.jpg")))

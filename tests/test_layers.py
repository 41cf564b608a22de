"""The import-linter contract in pyproject.toml holds, and it does catch a layer violation."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

LINT = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e .[test])")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_layers_are_kept() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "bad_import", "expected"), [
    ("modeling/head.py", "from retinanet.engine import trainer", "retinanet.modeling.head -> retinanet.engine.trainer"),
    ("evaluation/model_card.py", "from retinanet.data import coco", "retinanet.evaluation.model_card -> retinanet.data"),
])
def test_a_deliberate_violation_breaks_the_contract(tmp_path: Path, module: str, bad_import: str, expected: str) -> None:
    shutil.copytree(REPO / "retinanet", tmp_path / "retinanet", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "retinanet" / module, "a") as handle:
        handle.write(f"\n{bad_import}  # noqa: E402\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and expected in result.stdout, result.stdout

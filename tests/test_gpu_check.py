"""scripts/gpu_check.py: `--device cpu` runs every check that needs no CUDA (so the script cannot rot)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from retinanet.cli import gpu_check
from retinanet.studies import gpu_check as study

CUDA_ONLY = {c.name for c in study.CHECKS if c.needs_cuda}


@pytest.mark.slow
def test_every_check_that_needs_no_cuda_passes_on_the_cpu(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--device", "cpu", "--json", str(out), "--work-dir", str(tmp_path / "work")]) == 0
    report = json.loads(out.read_text())
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert list(status) == [c.name for c in study.CHECKS]
    assert {n for n, s in status.items() if s == "skip"} == CUDA_ONLY
    assert {s for n, s in status.items() if n not in CUDA_ONLY} == {"pass"}
    table = capsys.readouterr().out
    assert re.search(r"^check +status +seconds +detail$", table, re.M) and report["failed"] == []


def test_a_failed_check_is_reported_and_the_exit_code_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    def broken(ctx: study.Context) -> str:
        raise RuntimeError("the device said no")

    checks = (*study.CHECKS[:1], study.Check("broken", broken), *study.CHECKS[1:])
    monkeypatch.setattr(study, "CHECKS", checks)
    monkeypatch.setattr(gpu_check, "CHECKS", checks)
    out = tmp_path / "gpu_check.json"
    args = ["--device", "cpu", "--json", str(out), "--work-dir", str(tmp_path), "--only", "anchors_fp32_under_bf16,broken"]
    assert gpu_check.main(args) == 1
    report = json.loads(out.read_text())
    assert [(c["name"], c["status"]) for c in report["checks"]] == [("anchors_fp32_under_bf16", "pass"),
                                                                     ("broken", "fail")]
    assert report["failed"] == ["broken"] and "RuntimeError: the device said no" in report["checks"][1]["detail"]
    assert "Traceback" in (tmp_path / "broken.traceback.txt").read_text()
    assert "failed: broken" in capsys.readouterr().out


def test_unknown_check_names_are_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--device", "cpu", "--only", "hsot_syncs", "--json", str(tmp_path / "x.json")])
    assert exc.value.code == 2


@pytest.mark.cuda
@pytest.mark.slow
def test_every_check_passes_on_the_gpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--device", "cuda", "--json", str(out), "--work-dir", str(tmp_path / "work")]) == 0

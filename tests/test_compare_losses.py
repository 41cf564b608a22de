"""scripts/compare_losses.py: setting expansion, resume decisions, failed runs and the written report."""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from retinanet.cli import evaluate
from retinanet.cli import train
from retinanet.config import ConfigError
from retinanet.cli.common import USER_ERRORS
from tests.helpers import REPO, synthetic_overrides

from retinanet.cli import compare_losses as compare_cli
from retinanet.studies import compare_losses as compare
DEMO = str(REPO / "configs" / "demo_cpu.yaml")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def _script(command: list[str]) -> str:
    """[python, -m, retinanet.cli.train, ...] -> "train"."""
    return command[2].rsplit(".", 1)[1]


def _run_dir(command: list[str]) -> str:
    flag = "--output-dir"
    path = Path(command[command.index(flag) + 1])
    return (path.parent if path.name == "eval" else path).name


def in_process(calls: list[list[str]]):
    """A launcher that runs train.py / evaluate.py in this process (no interpreter start-up) and records them."""

    def launcher(command: list[str], log_path: Path, env: dict[str, str]) -> int:
        calls.append(command)
        module = {"train": train, "evaluate": evaluate}[_script(command)]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as handle:
            handle.write(f"$ {' '.join(command)}\n")
            try:
                return module.main(command[3:])
            except (ConfigError, *USER_ERRORS) as exc:  # what run_cli turns into one line and an exit code
                handle.write(f"error: {exc}\n")
                return 2 if isinstance(exc, ConfigError) else 1

    return launcher


def _rows(study: Path) -> dict[str, dict[str, str]]:
    with open(study / "results.csv", newline="") as handle:
        return {row["run"]: row for row in csv.DictReader(handle)}


def _rarest(annotations: Path) -> int:
    data = json.loads(annotations.read_text())
    counts = Counter(a["category_id"] for a in data["annotations"] if not a.get("iscrowd"))
    return min((n, cid) for cid, n in counts.items())[1]


def test_setting_expansion_gamma_for_focal_only_dedupe_and_precedence(tmp_path: Path) -> None:
    losses = compare.parse_losses("focal,bce:alpha=0.75")
    grid = compare.parse_grid(["loss.gamma=0,2", "loss.alpha=0.25,0.5"])
    settings = compare.expand_settings(DEMO, [], losses, grid)
    assert [(s.name, s.overrides) for s in settings] == [
        ("focal-g0-a0.25", ("loss.gamma=0", "loss.alpha=0.25", "loss.type=focal")),
        ("focal-g0-a0.5", ("loss.gamma=0", "loss.alpha=0.5", "loss.type=focal")),
        ("focal-g2-a0.25", ("loss.gamma=2", "loss.alpha=0.25", "loss.type=focal")),
        ("focal-g2-a0.5", ("loss.gamma=2", "loss.alpha=0.5", "loss.type=focal")),
        # no gamma for bce; its own alpha=0.75 beats the grid's, so its 4 grid points are one setting
        ("bce-a0.75", ("loss.alpha=0.75", "loss.type=bce")),
    ]
    assert [(s.cfg.loss.type, s.cfg.loss.gamma, s.cfg.loss.alpha) for s in settings][-1] == ("bce", 2.0, 0.75)
    assert settings == compare.expand_settings(DEMO, [], losses, grid)  # deterministic

    # other keys join the name (short key, typed value); seeds make distinct run folders
    more = compare.expand_settings(
        DEMO, ["train.seed=7"], compare.parse_losses("focal,ohem:ohem_batch_size=128"),
        compare.parse_grid(["train.lr=0.01,1e-3", "input.min_size=[96,112],[128]"]),
    )
    runs = compare.plan_runs(more, 2, 7, tmp_path)
    names = [r.name for r in runs]
    assert names[:2] == ["focal-g2-a0.25-lr0.01-min_size96_112-s7", "focal-g2-a0.25-lr0.01-min_size128-s7"]
    assert "ohem-a0.25-lr0.001-min_size128-ohem_batch_size128-s8" in names
    assert len(set(names)) == len(runs) == 16
    assert {r.seed for r in runs} == {7, 8} and runs[0].cfg.train.seed == 7 and runs[-1].cfg.train.seed == 8

    with pytest.raises(ConfigError, match="--seeds"):
        compare.parse_grid(["train.seed=1,2"])
    with pytest.raises(ConfigError, match="bce has no gamma"):
        compare.parse_losses("bce:gamma=1")
    with pytest.raises(ConfigError, match="unknown loss type 'fcal'"):
        compare.parse_losses("fcal")
    with pytest.raises(ConfigError, match="loss.alfa"):
        compare.expand_settings(DEMO, [], compare.parse_losses("focal:alfa=0.5"), [])


def test_each_run_is_reused_evaluated_resumed_or_trained(synthetic: Path, tmp_path: Path) -> None:
    """Four runs in the four states; a stand-in launcher records what would run and writes metrics."""
    calls: list[list[str]] = []
    ap = {"focal-g2-a0.25-s42": 0.30, "bce-a0.75-s42": 0.20, "focal-g2-a0.25-s43": 0.40, "bce-a0.75-s43": 0.10}

    def launcher(command: list[str], log_path: Path, env: dict[str, str]) -> int:
        calls.append(command)
        if _script(command) == "evaluate":
            _write_eval(tmp_path / "runs" / _run_dir(command), ap[_run_dir(command)])
        return 0

    sets = synthetic_overrides(synthetic) + ["train.max_iters=3"]
    argv = ["--config", DEMO, "--losses", "focal,bce:alpha=0.75", "--seeds", "2", "--output-dir", str(tmp_path),
            "--set", *sets]
    runs = tmp_path / "runs"
    _write_eval(runs / "focal-g2-a0.25-s42", ap["focal-g2-a0.25-s42"])
    for name, iteration in (("bce-a0.75-s42", 3), ("focal-g2-a0.25-s43", 1)):
        (runs / name / "checkpoints").mkdir(parents=True)
        torch.save({"model": {}, "iteration": iteration, "train_seconds": 12.5}, runs / name / "checkpoints" / "last.pt")

    assert compare_cli.main(argv, launcher=launcher) == 0
    done = [(_script(c), _run_dir(c), "--resume" in c) for c in calls]
    assert done == [
        ("evaluate", "bce-a0.75-s42", False),  # trained to max_iters: only evaluated
        ("train", "focal-g2-a0.25-s43", True), ("evaluate", "focal-g2-a0.25-s43", False),  # continued
        ("train", "bce-a0.75-s43", False), ("evaluate", "bce-a0.75-s43", False),  # fresh
    ]
    seed_sets = [c[c.index("--set") + 1:] for c in calls if _run_dir(c) == "bce-a0.75-s43"]
    assert all(s[-3:] == ["loss.alpha=0.75", "loss.type=bce", "train.seed=43"] for s in seed_sets)
    assert calls[0][calls[0].index("--checkpoint") + 1] == str(runs / "bce-a0.75-s42" / "checkpoints" / "last.pt")

    rows = _rows(tmp_path)
    assert {name: row["status"] for name, row in rows.items()} == {
        "focal-g2-a0.25-s42": "reused", "focal-g2-a0.25-s43": "resumed", "bce-a0.75-s42": "evaluated",
        "bce-a0.75-s43": "trained",
    }
    assert rows["bce-a0.75-s42"]["train_seconds"] == "12.5" and rows["bce-a0.75-s43"]["gamma"] == ""
    report = (tmp_path / "report.md").read_text()
    # focal 30 and 40 -> 35.0 ± 7.1; bce 20 and 10 -> 15.0 ± 7.1; focal is best, 20 points ahead
    assert "| **★ focal-g2-a0.25** | **focal** | **2** | **0.25** | **2/2** | **35.0 ± 7.1** |" in report
    assert "| bce-a0.75 | bce | - | 0.75 | 2/2 | 15.0 ± 7.1 |" in report
    assert "Best focal `focal-g2-a0.25` minus best CE-family `bce-a0.75` (means over seeds): AP +20.0" in report
    assert "3 iterations × batch 4 (12 images) for every run" in report

    # a folder trained with another config is never reused silently
    saved = yaml.safe_load(yaml.safe_dump({"model": {"num_classes": 5}, "train": {"max_iters": 99}}))
    (runs / "focal-g2-a0.25-s42" / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(FileExistsError, match="focal-g2-a0.25-s42 holds a run with another config"):
        compare_cli.main(argv, launcher=launcher)


def _write_eval(run_dir: Path, ap: float) -> None:
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    metrics = {k: ap for k in METRICS} | {"per_class": {}}
    (run_dir / "eval" / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "eval" / "detections.json").write_text("[]")


def test_history_takes_the_last_eval_per_step_and_the_last_skipped_total(tmp_path: Path) -> None:
    lines = [
        {"kind": "train", "step": 2, "skipped_steps": 1},
        {"kind": "eval", "step": 2, "AP": 0.1},
        {"kind": "train", "step": 4, "skipped_steps": 2},
        {"kind": "eval", "step": 4, "AP": 0.2},  # killed here; --resume from the checkpoint of step 2
        {"kind": "train", "step": 4, "skipped_steps": 1},
        {"kind": "eval", "step": 4, "AP": 0.3},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n{half a line")
    evals, skipped = compare.read_history(path)
    assert {step: e["AP"] for step, e in evals.items()} == {2: 0.1, 4: 0.3}
    assert skipped == 1
    assert compare.read_history(tmp_path / "missing.jsonl") == ({}, None)


def test_launch_runs_a_subprocess_with_its_output_in_a_log(tmp_path: Path) -> None:
    log_path = tmp_path / "run" / "console.log"
    code = compare.launch(
        [sys.executable, "-c", "import os, sys; print('threads', os.environ['OMP_NUM_THREADS']); sys.exit(3)"],
        log_path, compare.child_env(jobs=2),
    )
    assert code == 3
    cores = len(os.sched_getaffinity(0))
    assert log_path.read_text().splitlines()[-1] == f"threads {max(1, cores // 2)}"
    assert compare.launch([sys.executable, "-c", "pass"], log_path, compare.child_env(jobs=1)) == 0
    assert log_path.read_text().count("$ ") == 2  # appended, each command written before its output


def test_jobs_run_concurrently_and_keep_the_plan_order() -> None:
    barrier = threading.Barrier(2, timeout=10)

    def work(run: SimpleNamespace, tag: str) -> str:
        barrier.wait()  # only returns when two runs are in flight at once
        return f"{tag} done"

    runs = [SimpleNamespace(name="a"), SimpleNamespace(name="b")]
    assert compare.run_all(runs, work, jobs=2) == ["[1/2] a done", "[2/2] b done"]


@pytest.fixture(scope="module")
def study(synthetic: Path, tmp_path_factory) -> tuple[Path, list[str], int]:
    """A real study (train.main / evaluate.main in process, to skip interpreter start-ups): focal and bce
    train and evaluate, ohem fails (its init_from checkpoint is missing)."""
    out = tmp_path_factory.mktemp("study")
    sets = synthetic_overrides(synthetic) + ["train.max_iters=1", "train.batch_size=2", "eval.num_vis_images=0"]
    argv = ["--config", DEMO, "--losses", f"focal,bce:alpha=0.75,ohem:train.init_from={out / 'missing.pt'}",
            "--output-dir", str(out), "--set", *sets]
    return out, argv, compare_cli.main(argv, launcher=in_process([]))


def test_failed_run_is_reported_and_the_others_complete(study, synthetic: Path) -> None:
    out, _, code = study
    assert code == 1
    rows = _rows(out)
    failed = rows.pop(next(name for name in rows if name.startswith("ohem")))
    assert failed["status"] == "failed" and "missing.pt: checkpoint not found" in failed["error"]
    assert failed["AP"] == ""
    rare_id = _rarest(synthetic / "annotations" / "instances_train.json")
    planned_amp, _ = compare.resolve_amp(compare.load_config(DEMO).train.amp, torch.device("cpu"))
    assert set(rows) == {"focal-g2-a0.25-s42", "bce-a0.75-s42"}
    for name, row in rows.items():
        assert row["status"] == "trained"
        metrics = json.loads((out / "runs" / name / "eval" / "metrics.json").read_text())
        for key in METRICS:
            assert row[key] == ("" if metrics[key] is None else str(metrics[key])), (name, key)
        rare = next(e["AP50"] for e in metrics["per_class"].values() if e["id"] == rare_id)
        assert row["AP50_rarest"] == ("" if rare is None else str(rare))
        point = json.loads((out / "runs" / name / "operating_point.json").read_text())
        assert row["recall_op"] == ("" if point["overall"]["recall"] is None else str(point["overall"]["recall"]))
        rare_point = next(e for e in point["per_class"].values() if e["id"] == rare_id)
        assert row["recall_op_rarest"] == ("" if rare_point["recall"] is None else str(rare_point["recall"]))
        assert float(row["train_seconds"]) > 0 and row["skipped_steps"] == "0"
        runtime = json.loads((out / "runs" / name / "runtime.json").read_text())
        assert (row["train_amp"], row["eval_amp"]) == (runtime["amp"], metrics["amp"]) == (planned_amp, "none")
    report = (out / "report.md").read_text()
    assert "failed: training failed (exit 1)" in report and "non-finite steps skipped: 0 in total" in report
    for name in ("pr_curves.png", "ap_over_iters.png"):
        assert (out / name).stat().st_size > 1000
    assert sorted(p.name for p in (out / "tensorboard").iterdir() if p.is_dir()) == sorted(rows)


def test_top_runs_are_the_three_best_settings_by_mean_ap(synthetic: Path, tmp_path: Path) -> None:
    entries = compare.parse_losses("focal,bce:alpha=0.75,focal:label_smoothing=0.05,focal:alpha=effective_number")
    settings = compare.expand_settings(DEMO, synthetic_overrides(synthetic), entries, [])
    runs = compare.plan_runs(settings, 2, 42, tmp_path)
    # mean AP per setting: focal .35, bce .30, smoothing .40 (its seed 43 is best), effective_number .20
    ap = {("focal-g2-a0.25", 42): 0.4, ("focal-g2-a0.25", 43): 0.3, ("bce-a0.75", 42): 0.3, ("bce-a0.75", 43): 0.3,
          ("focal-g2-a0.25-label_smoothing0.05", 42): 0.35, ("focal-g2-a0.25-label_smoothing0.05", 43): 0.45,
          ("focal-g2-aeffective_number", 42): 0.2, ("focal-g2-aeffective_number", 43): 0.2}
    results = [compare.Result(r, "reused", {"AP": ap[(r.setting.name, r.seed)]}) for r in runs]
    assert [r.run.name for r in compare.top_runs(results)] == [
        "focal-g2-a0.25-label_smoothing0.05-s43", "focal-g2-a0.25-s42", "bce-a0.75-s42"
    ]


def test_rerun_reuses_finished_runs_and_evaluates_a_trained_one(study, caplog) -> None:
    out, argv, _ = study
    focal = out / "runs" / "focal-g2-a0.25-s42"
    watched = [focal / "checkpoints" / "last.pt", focal / "eval" / "metrics.json",
               out / "runs" / "bce-a0.75-s42" / "eval" / "metrics.json"]
    before = [p.stat().st_mtime_ns for p in watched]
    calls: list[list[str]] = []
    with caplog.at_level(logging.INFO):
        assert compare_cli.main(argv, launcher=in_process(calls)) == 1  # the failed run is retried and fails again
    assert [(_script(c), _run_dir(c)) for c in calls] == [("train", next(n for n in _rows(out) if "ohem" in n))]
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert "focal-g2-a0.25-s42: reused" in caplog.text and "bce-a0.75-s42: reused" in caplog.text

    shutil.rmtree(focal / "eval")  # interrupted after training, before evaluation
    calls.clear()
    assert compare_cli.main(argv, launcher=in_process(calls)) == 1
    assert [(_script(c), _run_dir(c)) for c in calls if "ohem" not in _run_dir(c)] == [
        ("evaluate", "focal-g2-a0.25-s42")
    ]
    assert (focal / "checkpoints" / "last.pt").stat().st_mtime_ns == before[0]
    rows = _rows(out)
    assert rows["focal-g2-a0.25-s42"]["status"] == "evaluated"
    metrics = json.loads((focal / "eval" / "metrics.json").read_text())
    assert rows["focal-g2-a0.25-s42"]["AP"] == ("" if metrics["AP"] is None else str(metrics["AP"]))


def test_parallel_runs_are_spread_over_the_visible_gpus(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    envs = compare.gpu_envs({"PATH": "/bin"}, runs=3, jobs=2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0"] and envs[0]["PATH"] == "/bin"
    envs = compare.gpu_envs({"CUDA_VISIBLE_DEVICES": "4,6"}, runs=3, jobs=2)  # the user's own selection
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["4", "6", "4"]
    assert compare.gpu_envs({}, runs=2, jobs=1) == [{}, {}]  # one job: where the user put it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert compare.gpu_envs({}, runs=2, jobs=2) == [{}, {}]


def test_every_arm_trains_at_one_stated_precision_unless_the_study_varies_it(monkeypatch, tmp_path: Path) -> None:
    losses = compare.parse_losses("focal,bce:alpha=0.75")
    monkeypatch.setenv("RETINANET_CPU_AMX", "1")  # auto resolves here, once per setting, as train.py will
    assert {(s.amp, s.amp_reason) for s in compare.expand_settings(DEMO, ["train.amp=auto"], losses, [])} == {
        ("bf16", "auto: the CPU has AMX (amx_bf16)")
    }
    monkeypatch.setenv("RETINANET_CPU_AMX", "0")
    assert {s.amp for s in compare.expand_settings(DEMO, ["train.amp=auto"], losses, [])} == {"none"}
    # varied on purpose: in --losses or in --grid
    mixed = compare.expand_settings(DEMO, [], compare.parse_losses("focal:train.amp=bf16,focal:train.amp=none"), [])
    assert [(s.name, s.amp) for s in mixed] == [("focal-g2-a0.25-ampbf16", "bf16"), ("focal-g2-a0.25-ampnone", "none")]
    grid = compare.expand_settings(DEMO, [], losses, compare.parse_grid(["train.amp=bf16,none"]))
    assert [s.amp for s in grid] == ["bf16", "none", "bf16", "none"]
    # anything else that makes auto differ per arm is refused
    monkeypatch.setattr(compare, "resolve_amp", lambda amp, device: ("bf16", "x") if device.type == "cuda" else ("none", "y"))
    with pytest.raises(ConfigError, match=r"different precisions \(focal-g2-a0.25-devicecuda bf16, bce-a0.75 fp32\)"):
        compare.expand_settings(DEMO, ["train.amp=auto"], compare.parse_losses("focal:train.device=cuda,bce:alpha=0.75"), [])
    monkeypatch.undo()

    # the report, the csv and the log say what each run trained and was evaluated in
    runs = compare.plan_runs(mixed, 1, 42, tmp_path)
    results = [compare.Result(runs[0], "reused", {"AP": 0.3}, amp="bf16", eval_amp="none"),
               compare.Result(runs[1], "reused", {"AP": 0.4}, amp=None, eval_amp="none")]  # no runtime.json: planned
    report = compare.build_report(results, mixed[0].cfg, "cmd", None)
    assert ("- precision: **differs between runs** (focal-g2-a0.25-ampbf16 bf16, focal-g2-a0.25-ampnone fp32; "
            "column `precision`), evaluated in fp32") in report
    assert "| bf16/fp32 | - | - | reused |" in report and "| fp32/fp32 | - | - | reused |" in report
    assert "| - | - | - | bf16 |" in report and "| **-** | **fp32** |" in report  # the settings table's last column
    compare.write_csv(results, tmp_path / "results.csv", None)
    assert [(r["train_amp"], r["eval_amp"]) for r in _rows(tmp_path).values()] == [("bf16", "none"), ("none", "none")]
    same = compare.plan_runs(compare.expand_settings(DEMO, ["train.amp=none"], losses, []), 1, 42, tmp_path)
    report = compare.build_report([compare.Result(r, "reused", {"AP": 0.3}, amp="none", eval_amp="none") for r in same],
                                  same[0].setting.cfg, "cmd", None)
    assert "- precision: every run trained in fp32 (train.amp none: train.amp=none as configured), evaluated in fp32" in report


def test_a_run_trained_at_another_precision_is_not_reused(monkeypatch, tmp_path: Path) -> None:
    """The same config with train.amp auto resolves differently on another machine: runtime.json tells."""
    monkeypatch.setenv("RETINANET_CPU_AMX", "0")
    settings = compare.expand_settings(DEMO, ["train.amp=auto"], compare.parse_losses("focal"), [])
    run = compare.plan_runs(settings, 1, 42, tmp_path)[0]
    (run.dir / "checkpoints").mkdir(parents=True)
    (run.dir / "checkpoints" / "last.pt").write_bytes(b"")
    (run.dir / "config.yaml").write_text(yaml.safe_dump(yaml.safe_load(yaml.safe_dump(compare.to_dict(run.cfg)))))
    (run.dir / "runtime.json").write_text(json.dumps({"amp": "none"}))
    compare.check_existing(run)  # trained as planned
    (run.dir / "runtime.json").write_text(json.dumps({"amp": "bf16"}))  # begun on a CPU with AMX
    with pytest.raises(FileExistsError, match=r"trained in bf16 \(its runtime.json\), but here train.amp auto resolves "
                                              r"to fp32 \(auto: the CPU has no AMX"):
        compare.check_existing(run)

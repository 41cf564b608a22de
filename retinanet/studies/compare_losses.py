"""The loss-comparison study: plan settings x seeds, run train and evaluate per run, report.

See `retinanet.cli.compare_losses` for the command line; docs/comparing_losses.md for the study.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import typing
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from retinanet.data.loaders import DatasetError, build_dataset
from retinanet.data.stats import class_counts
from retinanet.config import Config, ConfigError, LossConfig, load_config, replace, to_dict
from retinanet.evaluation.evaluator import CocoEvaluator
from retinanet.evaluation.operating_point import OperatingPointReport, load_report
from retinanet.engine.logger import RunLogger, read_metrics, setup_file_logging
from retinanet.engine.run_folder import discard_run_files
from retinanet.engine.runtime import read_runtime_record, resolve_amp, resolve_device
from retinanet.fileio import RunFileError

log = logging.getLogger("retinanet.compare_losses")

LOSS_TYPES: tuple[str, ...] = typing.get_args(typing.get_type_hints(LossConfig)["type"])
CE_FAMILY = ("bce", "ohem")
DEFAULT_LOSSES = "focal,bce:alpha=0.75"  # the paper's Table 1 pair: FL gamma 2 alpha .25 vs alpha-balanced CE
RESERVED_KEYS = {"loss.type": "--losses", "train.seed": "--seeds"}
NAMED_KEYS = ("loss.gamma", "loss.alpha")  # always in the run name and the table, never an extra column
RUN_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
SETTING_METRICS = ("AP", "AP50", "AP75")
CHILD_GRACE_S = 60  # after Ctrl-C, time for train.py (which got the signal too) to save last.pt

Launcher = Callable[[list[str], Path, dict[str, str]], int]


# ----------------------------------------------------------------------------- settings and runs


@dataclass(frozen=True)
class LossEntry:
    type: str
    overrides: tuple[tuple[str, str], ...]  # (full key, value as typed)


@dataclass(frozen=True)
class Setting:
    name: str  # run name without the seed, e.g. focal-g2-a0.25
    loss: str
    overrides: tuple[str, ...]  # KEY=VALUE after --set: grid point, the entry's overrides, loss.type
    gamma: float | None  # None for bce / ohem, which have no gamma
    alpha: str  # loss.alpha formatted: a number, per-class values joined by '_', or effective_number
    extras: tuple[tuple[str, str], ...]  # other keys this setting sets -> formatted value
    cfg: Config = field(compare=False, repr=False)
    amp: str  # train.amp as it resolves on this machine (as train.py will): "none" (fp32) | "bf16" | "fp16"
    amp_reason: str  # why (engine.runtime.resolve_amp), for the log and the report


@dataclass(frozen=True)
class Run:
    setting: Setting
    seed: int
    name: str
    dir: Path

    @property
    def overrides(self) -> list[str]:
        return [*self.setting.overrides, f"train.seed={self.seed}"]

    @property
    def cfg(self) -> Config:
        return replace(self.setting.cfg, **{"train.seed": self.seed})


@dataclass
class Result:
    run: Run
    status: str  # reused, evaluated, resumed, trained or failed
    metrics: dict[str, Any] | None = None
    train_seconds: float | None = None
    skipped_steps: int | None = None
    error: str = ""
    operating_point: OperatingPointReport | None = None  # the run's operating_point.json (max F1 on val)
    amp: str | None = None  # the training precision its runtime.json records (None: no record)
    eval_amp: str | None = None  # the precision of its evaluation (eval/metrics.json `amp`)

    @property
    def ok(self) -> bool:
        return self.metrics is not None


def split_top_level(text: str, sep: str) -> list[str]:
    """Split at `sep` outside brackets, so list values such as [64,96] stay whole."""
    parts, current, depth = [], [], 0
    for char in text:
        depth += (char in "[{(") - (char in "]})")
        if char == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return parts


def _check_reserved(key: str, where: str) -> None:
    if key in RESERVED_KEYS:
        raise ConfigError(f"{where}: {key} is set by {RESERVED_KEYS[key]}; remove it here")


def parse_losses(text: str) -> list[LossEntry]:
    """`focal,bce:alpha=0.75;train.lr=0.01` -> entries; bare keys are relative to `loss.`."""
    entries = []
    for item in split_top_level(text, ","):
        loss_type, _, rest = item.partition(":")
        loss_type = loss_type.strip()
        if loss_type not in LOSS_TYPES:
            raise ConfigError(
                f"--losses {text}: unknown loss type '{loss_type}'; use entries TYPE[:key=value[;key=value]] "
                f"with TYPE one of {', '.join(LOSS_TYPES)}"
            )
        pairs = []
        for pair in split_top_level(rest, ";") if rest.strip() else []:
            key, eq, value = (part.strip() for part in pair.partition("="))
            if not eq or not key or not value:
                raise ConfigError(f"--losses {item}: expected TYPE:key=value[;key=value], got '{pair}'")
            key = key if "." in key else f"loss.{key}"
            _check_reserved(key, f"--losses {item}")
            if key == "loss.gamma" and loss_type != "focal":
                raise ConfigError(f"--losses {item}: {loss_type} has no gamma (it is a gamma-0 loss); remove gamma")
            pairs.append((key, value))
        entries.append(LossEntry(loss_type, tuple(pairs)))
    return entries


def parse_grid(items: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """["loss.gamma=0,1,2", ...] -> [(key, values)], in the order given."""
    grid: list[tuple[str, tuple[str, ...]]] = []
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        split = tuple(split_top_level(values, ","))
        if not eq or not key or not all(split):
            raise ConfigError(f"--grid {item}: expected KEY=V1,V2,..., e.g. --grid loss.gamma=0,1,2")
        _check_reserved(key, f"--grid {item}")
        if any(key == other for other, _ in grid):
            raise ConfigError(f"--grid {item}: {key} is given twice; list all its values in one --grid entry")
        grid.append((key, split))
    return grid


def _lookup(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "_".join(_format_value(v) for v in value)
    return str(value)


def _run_name(loss: str, gamma: float | None, alpha: str, extras: Sequence[tuple[str, str]], full_keys: bool) -> str:
    parts = [loss, *([f"g{gamma:g}"] if gamma is not None else []), f"a{alpha}"]
    parts += [f"{key.replace('.', '_') if full_keys else key.rsplit('.', 1)[-1]}{value}" for key, value in extras]
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", "-".join(parts)).strip("_")


def expand_settings(
    config: str, base_sets: Sequence[str], losses: Sequence[LossEntry], grid: Sequence[tuple[str, Sequence[str]]]
) -> list[Setting]:
    """Every loss entry at every grid point (gamma for focal only), resolved, validated and deduplicated."""
    resolved: list[tuple[LossEntry, tuple[str, ...], dict[str, str], Config]] = []
    seen: set[str] = set()
    for entry, values in itertools.product(losses, itertools.product(*(v for _, v in grid))):
        chosen = {k: v for (k, _), v in zip(grid, values) if entry.type == "focal" or k != "loss.gamma"}
        chosen.update(entry.overrides)
        overrides = (*(f"{k}={v}" for k, v in chosen.items()), f"loss.type={entry.type}")
        cfg = load_config(config, [*base_sets, *overrides])
        if not cfg.data.val.annotations:
            raise ConfigError(f"{config}: data.val.annotations is not set; the comparison evaluates on data.val")
        identity = json.dumps(to_dict(cfg), sort_keys=True, default=str)
        if identity not in seen:
            seen.add(identity)
            resolved.append((entry, overrides, chosen, cfg))

    def build(full_keys: bool) -> list[Setting]:
        settings = []
        for entry, overrides, chosen, cfg in resolved:
            gamma = cfg.loss.gamma if entry.type == "focal" else None
            extras = tuple((k, _format_value(_lookup(cfg, k))) for k in chosen if k not in NAMED_KEYS)
            alpha = _format_value(cfg.loss.alpha)
            name = _run_name(entry.type, gamma, alpha, extras, full_keys)
            amp, reason = resolve_amp(cfg.train.amp, resolve_device(cfg.train.device))
            settings.append(Setting(name, entry.type, overrides, gamma, alpha, extras, cfg, amp, reason))
        return settings

    settings = build(full_keys=False)
    if len({s.name for s in settings}) < len(settings):
        settings = build(full_keys=True)
    names = Counter(s.name for s in settings)
    if any(count > 1 for count in names.values()):
        duplicate = next(name for name, count in names.items() if count > 1)
        raise ConfigError(f"--grid/--losses: two different settings get the run name '{duplicate}'; use distinct values")
    check_precisions(settings, losses, grid)
    return settings


def precision_name(amp: str | None) -> str:
    """A resolved train.amp / eval.amp as a reader says it: none is fp32."""
    return "-" if amp is None else "fp32" if amp == "none" else amp


def check_precisions(
    settings: Sequence[Setting], losses: Sequence[LossEntry], grid: Sequence[tuple[str, Sequence[str]]]
) -> None:
    """Every setting trains at one precision unless the study varies train.amp on purpose.

    The losses do not round alike (bf16 keeps 8 significant bits), so arms at different precisions
    would compare the precision along with the loss. Only an explicit train.amp in --losses or --grid
    asks for that; anything else that makes auto resolve differently per setting (train.device) is refused.
    """
    if len({s.amp for s in settings}) < 2:
        return
    varied = any(k == "train.amp" for k, _ in grid) or any(k == "train.amp" for e in losses for k, _ in e.overrides)
    if not varied:
        arms = ", ".join(f"{s.name} {precision_name(s.amp)}" for s in settings)
        raise ConfigError(
            f"--losses/--grid: the settings train at different precisions ({arms}), which would bias the "
            "comparison; set one with --set train.amp=none (or bf16), or vary train.amp in --losses or --grid on purpose"
        )


def plan_runs(settings: Sequence[Setting], seeds: int, base_seed: int, output_dir: Path) -> list[Run]:
    """Seed-major order: every setting of the first seed finishes before the next seed starts."""
    runs = []
    for seed in range(base_seed, base_seed + seeds):
        for setting in settings:
            name = f"{setting.name}-s{seed}"
            runs.append(Run(setting, seed, name, output_dir / "runs" / name))
    return runs


# ----------------------------------------------------------------------------- reading run folders


def _read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or half-written (a killed evaluate.py)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def checkpoint_info(path: Path) -> dict[str, float] | None:
    """iteration, train_seconds and the last iteration train.time_budget planned (0 without a budget) of a
    checkpoint, memory-mapped so its tensors are not read."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable: train.py --resume will name the problem
        return None
    plan = (state.get("budget") or {}).get("plan") or {}
    return {"iteration": int(state.get("iteration", 0)), "train_seconds": float(state.get("train_seconds", 0.0)),
            "end_iter": int(plan.get("end_iter", 0))}  # 0: no budget, the run's max_iters


def read_history(path: Path) -> tuple[dict[int, dict[str, Any]], int | None]:
    """Eval lines by step and the number of skipped non-finite steps, from a run's metrics.jsonl.

    The last line for a step wins: a resumed run repeats the steps after its checkpoint. train.py keeps
    its `skipped_steps` total in the checkpoint, so the last train line holds the run's total.
    """
    evals: dict[int, dict[str, Any]] = {}
    skipped: int | None = None
    for record in read_metrics(path):
        step = record.get("step")
        if record.get("kind") == "eval" and isinstance(step, int):
            evals[step] = record
        elif record.get("kind") == "train" and isinstance(step, int):
            skipped = int(record.get("skipped_steps") or 0)
    return dict(sorted(evals.items())), skipped


def check_existing(run: Run) -> None:
    """Refuse to reuse a run folder trained with another config (an edited config file or --set)."""
    if not ((run.dir / "checkpoints" / "last.pt").exists() or (run.dir / "eval" / "metrics.json").exists()):
        return
    saved = _read_yaml(run.dir / "config.yaml")
    if saved is None:
        return
    expected = yaml.safe_load(yaml.safe_dump(to_dict(run.cfg), sort_keys=False))
    if not expected["model"]["num_classes"]:
        saved.get("model", {}).pop("num_classes", None)
        expected["model"].pop("num_classes")
    differences = _differences(expected, saved)
    if differences:
        raise FileExistsError(
            f"{run.dir} holds a run with another config ({'; '.join(differences[:3])}); "
            "delete that folder or choose another --output-dir"
        )
    trained = _recorded_amp(run.dir)
    if trained is not None and trained != run.setting.amp:  # the same config, resolved elsewhere (train.amp auto)
        raise FileExistsError(
            f"{run.dir} trained in {precision_name(trained)} (its runtime.json), but here train.amp "
            f"{run.cfg.train.amp} resolves to {precision_name(run.setting.amp)} ({run.setting.amp_reason}); "
            "finish the study where it began, or delete that folder or choose another --output-dir"
        )


def _recorded_amp(run_dir: Path) -> str | None:
    """The training precision a run folder's runtime.json records; None without a readable record."""
    try:
        record = read_runtime_record(run_dir)
    except RunFileError:
        return None
    return record.get("amp") if isinstance(record, dict) else None


def _read_yaml(path: Path) -> dict | None:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _differences(expected: Any, saved: Any, prefix: str = "") -> list[str]:
    """Values that differ; keys only one side has are skipped (a config key added or removed since)."""
    if isinstance(expected, dict) and isinstance(saved, dict):
        out = []
        for key in (k for k in expected if k in saved):
            out += _differences(expected[key], saved[key], f"{prefix}{key}.")
        return out
    return [] if expected == saved else [f"{prefix.rstrip('.')} {saved!r} there, {expected!r} now"]


def rarest_class(annotations: str, source: str) -> tuple[int, str, int] | None:
    """(category id, name, count) of the category with the fewest non-crowd train boxes (at least one)."""
    try:
        data = json.loads(Path(annotations).read_text())
    except OSError as exc:
        raise ConfigError(f"{source}: data.train.annotations: cannot read {annotations} ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{annotations}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    present = sorted((c.boxes, c.id, c.name) for c in class_counts(data) if c.boxes)
    if not present:
        return None
    count, category_id, name = present[0]
    return category_id, name, count


def class_ap50(metrics: dict[str, Any], category_id: int | None) -> float | None:
    for entry in (metrics.get("per_class") or {}).values():
        if entry.get("id") == category_id:
            return entry.get("AP50")
    return None


def recall_at_operating_point(report: OperatingPointReport | None, category_id: int | None) -> float | None:
    """A class's recall at the run's operating point (all classes pooled with category_id None); None if undefined."""
    if report is None:
        return None
    if category_id is None:
        point = report.overall
    else:
        point = next((c.point for c in report.per_class.values() if c.id == category_id), None)
    return None if point is None else point.recall


# ----------------------------------------------------------------------------- running


def launch(command: list[str], log_path: Path, env: dict[str, str]) -> int:
    """Run one command with its output appended to `log_path`; its exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            return process.wait()
        except KeyboardInterrupt:
            try:
                process.wait(timeout=CHILD_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise


def child_env(jobs: int) -> dict[str, str]:
    """With J parallel runs, each gets cores // J threads, so J runs do not fight over the cores."""
    env = dict(os.environ)
    if jobs > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = str(max(1, cores // jobs))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env


def gpu_envs(env: dict[str, str], runs: int, jobs: int) -> list[dict[str, str]]:
    """Each run's environment: with parallel jobs on a machine with G > 1 visible GPUs, run i sees only
    GPU i mod G (CUDA_VISIBLE_DEVICES; it is the child's cuda:0), so J <= G concurrent runs share none.
    Without this every run took cuda:0. One job, or one GPU or none: the environment as it is."""
    count = torch.cuda.device_count()
    if jobs <= 1 or count <= 1:
        return [env] * runs
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    gpus = visible.split(",")[:count] if visible else [str(i) for i in range(count)]
    return [{**env, "CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(runs)]


def _last_line(path: Path) -> str:
    """The one-line `error: ...` of the last command in a log, else its last output (a traceback's last line)."""
    try:
        text = path.read_text(errors="replace").rpartition("\n$ ")[2].partition("\n")[2]  # after the command line
    except OSError:
        return ""
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors or lines or [""])[-1]


def execute(run: Run, config: str, base_sets: Sequence[str], env: dict[str, str], launcher: Launcher, tag: str) -> Result:
    """Reuse, evaluate, resume or train one run; a failure is returned, never raised."""
    metrics_path = run.dir / "eval" / "metrics.json"
    last = run.dir / "checkpoints" / "last.pt"
    console = run.dir / "console.log"
    sets = [*base_sets, *run.overrides]
    status = "reused"
    metrics = _read_json(metrics_path)
    if metrics is None:
        info = checkpoint_info(last) if last.is_file() else None
        if info is not None and info["iteration"] >= (info["end_iter"] or run.cfg.train.max_iters):
            status = "evaluated"
            log.info("%s: trained (%d iterations); evaluating", tag, info["iteration"])
        else:
            status = "resumed" if last.is_file() else "trained"
            log.info("%s: %s", tag, f"resuming from {last}" if last.is_file() else "training")
            command = [sys.executable, "-m", "retinanet.cli.train", "--config", config, "--output-dir", str(run.dir)]
            if not last.is_file():
                discard_run_files(run.dir)  # a run killed before its first checkpoint: train.py refuses to mix with it
            command += ["--resume"] if last.is_file() else []
            code = launcher([*command, "--set", *sets], console, env)
            if code != 0:
                return _failed(run, tag, "training", code, console)
        command = [sys.executable, "-m", "retinanet.cli.evaluate", "--config", config, "--checkpoint", str(last),
                   "--output-dir", str(run.dir / "eval"), "--set", *sets]
        code = launcher(command, console, env)
        metrics = _read_json(metrics_path)
        if code != 0 or metrics is None:
            return _failed(run, tag, "evaluation", code, console)
    info = checkpoint_info(last) if last.is_file() else None
    _, skipped = read_history(run.dir / "metrics.jsonl")
    amp, eval_amp = _recorded_amp(run.dir), metrics.get("amp")
    log.info("%s: %s  AP %s  AP50 %s (%%, trained in %s, evaluated in %s)", tag, status, _pct(metrics.get("AP")),
             _pct(metrics.get("AP50")), precision_name(amp), precision_name(eval_amp))
    if amp is not None and amp != run.setting.amp:
        log.warning("%s: trained in %s, not in the %s its setting resolves to", tag, precision_name(amp),
                    precision_name(run.setting.amp))
    try:
        report = load_report(run.dir)
    except RunFileError as exc:
        log.warning("%s: %s", tag, exc)
        report = None
    return Result(run, status, metrics, info["train_seconds"] if info else None, skipped, operating_point=report,
                  amp=amp, eval_amp=eval_amp)


def _failed(run: Run, tag: str, stage: str, code: int, console: Path) -> Result:
    message = "stopped by a signal" if code in (130, 143) else _last_line(console)
    log.error("%s: %s failed (exit %d): %s; see %s and %s", tag, stage, code, message, run.dir / "train.log", console)
    _, skipped = read_history(run.dir / "metrics.jsonl")
    return Result(run, "failed", skipped_steps=skipped, error=f"{stage} failed (exit {code}): {message}")


def run_all(runs: Sequence[Run], work: Callable[[Run, str], Result], jobs: int) -> list[Result]:
    tags = [f"[{i}/{len(runs)}] {run.name}" for i, run in enumerate(runs, 1)]
    if jobs == 1:
        return [work(run, tag) for run, tag in zip(runs, tags)]
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = [pool.submit(work, run, tag) for run, tag in zip(runs, tags)]
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: start nothing new, let running ones save


# ----------------------------------------------------------------------------- report


def _pct(value: float | None) -> str:
    """Fractions as percentages with one decimal, like evaluator.format_metrics_table; '-' when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.1f}"


def _mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    defined = [v for v in values if v is not None and not math.isnan(v)]
    if not defined:
        return None, None
    return statistics.fmean(defined), statistics.stdev(defined) if len(defined) > 1 else None


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _extra_keys(settings: Sequence[Setting]) -> list[str]:
    return list(dict.fromkeys(k for s in settings for k, _ in s.extras))


def _setting_cells(setting: Setting, extra_keys: Sequence[str]) -> list[str]:
    extras = dict(setting.extras)
    gamma = "-" if setting.gamma is None else f"{setting.gamma:g}"
    return [setting.loss, gamma, setting.alpha, *(extras.get(k, "-") for k in extra_keys)]


def setting_summary(results: Sequence[Result], rare_id: int | None) -> list[dict[str, Any]]:
    """Per setting, in plan order: mean and sd over its successful seeds."""
    summary = []
    for setting in dict.fromkeys(r.run.setting for r in results):
        mine = [r for r in results if r.run.setting == setting]
        done = [r.metrics for r in mine if r.ok]
        stats = {k: _mean_sd([m.get(k) for m in done]) for k in SETTING_METRICS}
        stats["rare_AP50"] = _mean_sd([class_ap50(m, rare_id) for m in done])
        stats["recall_op"] = _mean_sd([recall_at_operating_point(r.operating_point, None) for r in mine if r.ok])
        stats["rare_recall_op"] = _mean_sd(
            [recall_at_operating_point(r.operating_point, rare_id) for r in mine if r.ok and rare_id is not None]
        )
        summary.append({"setting": setting, "done": len(done), "runs": len(mine), "stats": stats})
    return summary


def _best(entries: Sequence[Any], key: Callable[[Any], float | None]) -> Any:
    scored = [(key(e), i) for i, e in enumerate(entries) if key(e) is not None and not math.isnan(key(e))]
    return entries[max(scored, key=lambda s: (s[0], -s[1]))[1]] if scored else None


def top_runs(results: Sequence[Result], count: int = 3) -> list[Result]:
    """The `count` settings with the highest mean AP, best first, each by its highest-AP run."""
    ranked = sorted(
        (entry for entry in setting_summary(results, None) if entry["stats"]["AP"][0] is not None),
        key=lambda entry: -entry["stats"]["AP"][0],
    )
    out = []
    for entry in ranked[:count]:
        runs = [r for r in results if r.ok and r.run.setting == entry["setting"]]
        out.append(_best(runs, lambda r: r.metrics.get("AP")))
    return out


def build_report(
    results: Sequence[Result], cfg: Config, command: str, rare: tuple[int, str, int] | None
) -> str:
    settings = list(dict.fromkeys(r.run.setting for r in results))
    extra_keys = _extra_keys(settings)
    rare_id, rare_name = (rare[0], rare[1]) if rare else (None, "rarest")
    budgets = {(s.cfg.train.max_iters, s.cfg.train.batch_size * s.cfg.train.accumulate_steps) for s in settings}
    budget = (
        f"{cfg.train.max_iters} iterations × batch {cfg.train.batch_size * cfg.train.accumulate_steps} "
        f"({cfg.train.max_iters * cfg.train.batch_size * cfg.train.accumulate_steps} images) for every run"
        if len(budgets) == 1 else "varies with the grid (see the columns)"
    )
    skipped = [r.skipped_steps for r in results if r.skipped_steps is not None]
    t = cfg.train
    lines = [
        "# Loss comparison",
        "",
        f"- command: `{command}`",
        f"- budget: {budget}; final weights (`checkpoints/last.pt`) evaluated on `{cfg.data.val.annotations}`",
        f"- the same for every loss type: optimizer {t.optimizer}, lr {t.lr:g} ({t.schedule}), warmup_iters "
        f"{t.warmup_iters}, grad_clip {t.grad_clip:g} (0 = off)",
        f"- precision: {precision_summary(results)}",
        f"- non-finite steps skipped: {sum(skipped)} in total (per run: column `skipped`)",
        f"- rarest class: {rare_name} (id {rare[0]}, {rare[2]} non-crowd train boxes)" if rare else
        "- rarest class: none (no train boxes)",
        "- COCO bbox metrics in %; runs of one seed share data order, augmentations and init",
        "- recall @op: recall at IoU 0.5 at the run's operating point (`operating_point.json`, max F1 on val as "
        "train.py writes it), all classes pooled and for the rarest class",
        "",
        "## Runs",
        "",
    ]
    header = ["run", "loss", "gamma", "alpha", *extra_keys, "seed", *RUN_METRICS, f"{rare_name} AP50",
              "recall @op", f"{rare_name} recall @op", "precision (train/eval)", "skipped", "train s", "status"]
    rows = []
    for r in sorted(results, key=lambda r: (settings.index(r.run.setting), r.run.seed)):
        m = r.metrics or {}
        rows.append([
            r.run.name, *_setting_cells(r.run.setting, extra_keys), str(r.run.seed),
            *(_pct(m.get(k)) for k in RUN_METRICS), _pct(class_ap50(m, rare_id) if r.ok else None),
            _pct(recall_at_operating_point(r.operating_point, None)),
            _pct(recall_at_operating_point(r.operating_point, rare_id) if rare_id is not None else None),
            f"{precision_name(trained_amp(r))}/{precision_name(r.eval_amp)}",
            "-" if r.skipped_steps is None else str(r.skipped_steps),
            "-" if r.train_seconds is None else f"{r.train_seconds:.0f}",
            r.status if r.ok else f"failed: {r.error}",
        ])
    lines += _table(header, rows)

    summary = setting_summary(results, rare_id)
    best = _best(summary, lambda s: s["stats"]["AP"][0])
    lines += ["", "## Settings (mean ± sd over seeds)", ""]
    header = ["setting", "loss", "gamma", "alpha", *extra_keys, "runs", *SETTING_METRICS, f"{rare_name} AP50",
              "recall @op", f"{rare_name} recall @op", "trained in"]
    rows = []
    for entry in summary:
        trained = sorted({precision_name(trained_amp(r)) for r in results if r.run.setting == entry["setting"]})
        cells = [
            entry["setting"].name, *_setting_cells(entry["setting"], extra_keys), f"{entry['done']}/{entry['runs']}",
            *(_format_mean_sd(*entry["stats"][k]) for k in (*SETTING_METRICS, "rare_AP50", "recall_op", "rare_recall_op")),
            ", ".join(trained),
        ]
        if entry is best:
            cells = [f"**★ {cells[0]}**", *(f"**{c}**" for c in cells[1:])]
        rows.append(cells)
    lines += _table(header, rows)
    lines += ["", _comparison_line(summary)]
    return "\n".join(lines) + "\n"


def trained_amp(result: Result) -> str:
    """The precision a run trained in: its runtime.json's, else what its setting resolves to here."""
    return result.amp if result.amp is not None else result.run.setting.amp


def precision_summary(results: Sequence[Result]) -> str:
    """One line on the precision of every arm: shared by all runs, or per setting when the study varies it."""
    trained = {precision_name(trained_amp(r)) for r in results}
    evaluated = sorted({precision_name(r.eval_amp) for r in results if r.eval_amp is not None})
    evaluation = f"evaluated in {' and '.join(evaluated)}" if evaluated else "no evaluation yet"
    if len(trained) == 1:
        setting = results[0].run.setting
        return f"every run trained in {trained.pop()} (train.amp {setting.cfg.train.amp}: {setting.amp_reason}), {evaluation}"
    arms = {}
    for r in results:
        arms.setdefault(r.run.setting.name, set()).add(precision_name(trained_amp(r)))
    listed = ", ".join(f"{name} {'/'.join(sorted(amps))}" for name, amps in arms.items())
    return f"**differs between runs** ({listed}; column `precision`), {evaluation}"


def _format_mean_sd(mean: float | None, sd: float | None) -> str:
    return "-" if mean is None else f"{_pct(mean)} ± {_pct(sd)}"


def _comparison_line(summary: Sequence[dict[str, Any]]) -> str:
    picks = {
        label: _best([s for s in summary if s["setting"].loss in family], lambda s: s["stats"]["AP"][0])
        for label, family in (("focal", ("focal",)), ("CE", CE_FAMILY))
    }
    if picks["focal"] is None or picks["CE"] is None:
        return "Best focal vs best CE-family (bce/ohem): not available (needs a finished run of each)."
    focal, ce = picks["focal"]["stats"], picks["CE"]["stats"]
    diffs = []
    for key in ("AP", "AP50"):
        if focal[key][0] is None or ce[key][0] is None:
            diffs.append(f"{key} -")
        else:
            diffs.append(f"{key} {100 * (focal[key][0] - ce[key][0]):+.1f}")
    return (
        f"Best focal `{picks['focal']['setting'].name}` minus best CE-family `{picks['CE']['setting'].name}` "
        f"(means over seeds): {', '.join(diffs)} points."
    )


def write_csv(results: Sequence[Result], path: Path, rare_id: int | None) -> None:
    """Per-run numbers as fractions (full precision), one row per run, for other tools."""
    settings = list(dict.fromkeys(r.run.setting for r in results))
    extra_keys = _extra_keys(settings)
    fields = ["run", "setting", "loss", "gamma", "alpha", *extra_keys, "seed", "status", *RUN_METRICS,
              "AP50_rarest", "recall_op", "recall_op_rarest", "train_amp", "eval_amp", "train_seconds", "skipped_steps",
              "error", "run_dir"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for r in sorted(results, key=lambda r: (settings.index(r.run.setting), r.run.seed)):
            m = r.metrics or {}
            s = r.run.setting
            writer.writerow({
                "run": r.run.name, "setting": s.name, "loss": s.loss, "gamma": "" if s.gamma is None else s.gamma,
                "alpha": s.alpha, **dict(s.extras), "seed": r.run.seed, "status": r.status,
                **{k: "" if m.get(k) is None else m[k] for k in RUN_METRICS},
                "AP50_rarest": "" if class_ap50(m, rare_id) is None else class_ap50(m, rare_id),
                "recall_op": _or_blank(recall_at_operating_point(r.operating_point, None)),
                "recall_op_rarest": _or_blank(
                    recall_at_operating_point(r.operating_point, rare_id) if rare_id is not None else None
                ),
                "train_amp": trained_amp(r), "eval_amp": r.eval_amp or "",
                "train_seconds": "" if r.train_seconds is None else round(r.train_seconds, 1),
                "skipped_steps": "" if r.skipped_steps is None else r.skipped_steps,
                "error": r.error, "run_dir": str(r.run.dir),
            })


def _or_blank(value: float | None) -> float | str:
    return "" if value is None else value


# ----------------------------------------------------------------------------- figures and TensorBoard


COLORS = ("tab:blue", "tab:orange", "tab:green")  # the top three settings, best first


def _figure(panels: int) -> tuple[Any, list[Any]]:
    """A figure on matplotlib's Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5 * panels, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(1, panels, i + 1) for i in range(panels)]


def plot_pr_curves(best: Sequence[Result], config: str, rare: tuple[int, str, int] | None, path: Path) -> bool:
    """Precision over recall at IoU 0.5, all classes pooled and the rarest class, from eval/detections.json."""
    figure, axes = _figure(2)
    val_sets: dict[tuple[str, str], Any] = {}
    drawn = False
    for color, result in zip(COLORS, best):
        detections = _read_json(result.run.dir / "eval" / "detections.json")
        if detections is None:
            log.warning("%s: no eval/detections.json; left out of %s", result.run.name, path.name)
            continue
        split = result.run.cfg.data.val
        if (split.images, split.annotations) not in val_sets:
            val_sets[(split.images, split.annotations)] = build_dataset(result.run.cfg, "val", config)
        evaluator = CocoEvaluator(val_sets[(split.images, split.annotations)].coco, backend=result.run.cfg.eval.backend)
        evaluator.update(detections)
        evaluator.compute()
        curves = [evaluator.pr_curve(iou=0.5)]
        curves.append(evaluator.pr_curve(iou=0.5, category_id=rare[0]) if rare else (None, None))
        for ax, (recall, precision) in zip(axes, curves):
            if recall is not None:
                ax.plot(recall, precision, color=color, label=result.run.name)
        drawn = True
    titles = ["all classes (mean over classes), IoU 0.5", f"rarest class: {rare[1]}, IoU 0.5" if rare else "rarest class"]
    for ax, title in zip(axes, titles):
        ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="recall", ylabel="precision", title=title)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="lower left")
    if drawn:
        figure.tight_layout()
        figure.savefig(path)
    return drawn


def plot_ap_over_iters(best: Sequence[Result], path: Path) -> bool:
    """AP and AP50 after each evaluation during training, from each run's metrics.jsonl."""
    figure, axes = _figure(2)
    drawn = False
    for color, result in zip(COLORS, best):
        evals, _ = read_history(result.run.dir / "metrics.jsonl")
        steps = list(evals)
        for ax, key in zip(axes, ("AP", "AP50")):
            values = [100 * v if (v := evals[s].get(key)) is not None else math.nan for s in steps]
            ax.plot(steps, values, marker="o", color=color, label=result.run.name)
        drawn = drawn or bool(steps)
    for ax, key in zip(axes, ("AP", "AP50")):
        ax.set(xlabel="iteration", ylabel=f"{key} (%)", title=f"val {key} during training")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if drawn:
        figure.tight_layout()
        figure.savefig(path)
    return drawn


def write_tensorboard(results: Sequence[Result], folder: Path) -> None:
    """One hparams entry per finished run, rewritten on every invocation so resumed studies stay single."""
    shutil.rmtree(folder, ignore_errors=True)
    with RunLogger(folder) as logger:
        for r in results:
            if not r.ok:
                continue
            s = r.run.setting
            alpha = s.cfg.loss.alpha if isinstance(s.cfg.loss.alpha, float) else s.alpha  # numeric where it is one
            hparams = {"loss.type": s.loss, "loss.gamma": 0.0 if s.gamma is None else s.gamma, "loss.alpha": alpha,
                       "train.seed": r.run.seed, **dict(s.extras)}
            metrics = {f"hparam/{k}": r.metrics[k] for k in SETTING_METRICS if r.metrics.get(k) is not None}
            logger.log_hparams(hparams, metrics, run_name=r.run.name)


# ----------------------------------------------------------------------------- the study


def run_study(args: argparse.Namespace, command: str, launcher: Launcher = launch) -> int:
    """Plan, train and evaluate every run (resuming what a previous call left), then write the report."""
    base_cfg = load_config(args.config, args.set)
    if any(pair.split("=", 1)[0].strip() == "loss.type" for pair in args.set):
        raise ConfigError("--set loss.type: loss types come from --losses; remove it from --set")
    settings = expand_settings(args.config, args.set, parse_losses(args.losses), parse_grid(args.grid))
    output_dir = Path(args.output_dir or Path("runs") / f"compare-{Path(args.config).stem}")
    runs = plan_runs(settings, args.seeds, base_cfg.train.seed, output_dir)
    for run in runs:
        check_existing(run)
    rare = rarest_class(base_cfg.data.train.annotations, args.config)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_file_logging(output_dir / "compare.log")
    log.info("%d settings x %d seeds = %d runs in %s", len(settings), args.seeds, len(runs), output_dir)
    for setting in settings:
        log.info("%s: trains in %s (train.amp %s: %s)", setting.name, precision_name(setting.amp),
                 setting.cfg.train.amp, setting.amp_reason)

    envs = {id(run): env for run, env in zip(runs, gpu_envs(child_env(args.jobs), len(runs), args.jobs))}
    results = run_all(runs, lambda run, tag: execute(run, args.config, args.set, envs[id(run)], launcher, tag),
                      args.jobs)

    report = build_report(results, base_cfg, command, rare)
    (output_dir / "report.md").write_text(report)
    write_csv(results, output_dir / "results.csv", rare[0] if rare else None)
    best = top_runs(results)
    written = [output_dir / "report.md", output_dir / "results.csv"]
    if plot_pr_curves(best, args.config, rare, output_dir / "pr_curves.png"):
        written.append(output_dir / "pr_curves.png")
    if plot_ap_over_iters(best, output_dir / "ap_over_iters.png"):
        written.append(output_dir / "ap_over_iters.png")
    write_tensorboard(results, output_dir / "tensorboard")
    written.append(output_dir / "tensorboard")

    print(report)
    for path in written:
        print(f"wrote {path}")
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(results)} runs failed: {', '.join(r.run.name for r in failed)} "
              f"(see their train.log and console.log; run the same command again to retry them)", file=sys.stderr)
        return 1
    return 0

"""MODEL_CARD.md: what a run's model was trained on, how, how well it does, and at which threshold.

train.py writes it at the end of training; `evaluate.py --target-precision/--target-recall` rewrites
it with its own metrics and operating point. The facts behind the card are kept beside it in
`model_card.json`, so evaluate.py can rewrite the card without re-reading (and re-validating)
the training set or knowing the training machine.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from retinanet.config import Config, from_dict, to_dict
from retinanet.fileio import RunFileError
from retinanet.fileio import write_text_atomic
from retinanet.evaluation.drift import MIN_IMAGES, MIN_SHIFT, score_distribution
from retinanet.evaluation.evaluator import STAT_NAMES, CocoEvaluator, format_metrics_table
from retinanet.evaluation.operating_point import IOU, OperatingPointReport, format_operating_point_table, save_report, search
from retinanet.modeling.model import effective_frozen_stages


log = logging.getLogger("retinanet.model_card")

CARD_NAME = "MODEL_CARD.md"
FACTS_NAME = "model_card.json"


@dataclass(frozen=True)
class ModelCard:
    """The card's facts, all JSON-ready; `render` turns them into markdown."""

    run: str
    config: dict[str, Any]  # the resolved config (to_dict)
    data: dict[str, dict[str, Any] | None]  # "train" / "val" -> CocoDetection.summary(), None when not known
    training: dict[str, Any]  # seconds, iterations, hardware (None when not recorded)
    evaluation: dict[str, Any] | None = None  # checkpoint, iteration, metrics (metrics.json layout)
    operating_point: dict[str, Any] | None = None  # operating_point.json content
    written_by: str = "train.py"
    score_distribution: dict[str, Any] | None = None  # drift.score_distribution of the val evaluation
    # engine.runtime.runtime_record on the training machine (runtime.json): train.amp, train.compile and
    # eval.amp as requested and resolved (amp, compile, eval_amp and their reasons), and the environment
    runtime: dict[str, Any] | None = None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware(device: torch.device, world_size: int = 1) -> dict[str, Any]:
    """Where a run happened: device, GPU name or CPU model and cores, torch version."""
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _json_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics.json layout: nan -> None."""
    values = {k: metrics.get(k) for k in STAT_NAMES}
    out: dict[str, Any] = {k: None if v is None or math.isnan(v) else float(v) for k, v in values.items()}
    out["per_class"] = metrics.get("per_class", {})
    return out


def _overall_text(report: OperatingPointReport) -> str:
    p = report.overall
    if p is None:
        return "undefined (no detections or no ground truth)"
    return f"threshold {p.threshold:.5g}, precision {p.precision:.3f}, recall {p.recall:.3f}, F1 {p.f1:.3f}"


def write_model_card(run_dir: Path, card: ModelCard) -> Path:
    """Write MODEL_CARD.md and its facts (model_card.json) into the run folder."""
    run_dir = Path(run_dir)
    write_text_atomic(run_dir / FACTS_NAME, json.dumps(asdict(card), indent=2))
    path = run_dir / CARD_NAME
    write_text_atomic(path, render(card))
    return path


def load_model_card(run_dir: Path) -> ModelCard | None:
    path = Path(run_dir) / FACTS_NAME
    if not path.is_file():
        return None
    try:
        return ModelCard(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise RunFileError(f"{path}: not a model card facts file ({exc}); delete it and rerun evaluate.py") from None


def finish_training_run(
    run_dir: Path,
    cfg: Config,
    data: dict[str, dict[str, Any] | None],
    evaluator: CocoEvaluator | None,
    metrics: dict[str, Any],
    iterations: int,
    train_seconds: float,
    device: torch.device,
    world_size: int = 1,
    runtime: dict[str, Any] | None = None,
    budget: dict[str, Any] | None = None,
) -> Path:
    """End of train.py: the max-F1 operating point on val (operating_point.json) and MODEL_CARD.md.

    `data` holds the splits' `CocoDetection.summary()` ("train", and "val" or None); `evaluator` is the
    one of the final evaluation (of checkpoints/last.pt), None without a val set. `runtime` is
    the run's runtime.json (`engine.runtime.write_runtime_record`): the precision and compile choices
    and why, and the environment. `budget` is train.time_budget's `engine.budget.Budget.summary()`: the
    budget, every plan and the time used (None without a budget).
    """
    report = None
    if evaluator is not None and data.get("val") is not None:
        names = {entry["id"]: name for name, entry in metrics["per_class"].items()}
        source = {"checkpoint": "checkpoints/last.pt", "iteration": iterations, "split": data["val"]["annotations"]}
        report = search(evaluator.matches(iou=IOU), names, source=source)
        save_report(report, run_dir)
        log.info("operating point (max F1 on val): %s", _overall_text(report))
    card = ModelCard(
        run=Path(run_dir).name,
        config=to_dict(cfg),
        data=dict(data),
        training={"seconds": train_seconds, "iterations": iterations, "hardware": hardware(device, world_size),
                  **({"budget": budget} if budget is not None else {})},
        evaluation=(
            {"checkpoint": "checkpoints/last.pt", "iteration": iterations, "metrics": _json_metrics(metrics)}
            if metrics else None
        ),
        operating_point=report.to_dict() if report is not None else None,
        score_distribution=evaluated_distribution(evaluator) if evaluator is not None and metrics else None,
        runtime=runtime,
    )
    return write_model_card(run_dir, card)


def evaluated_distribution(evaluator: CocoEvaluator) -> dict[str, Any]:
    """The val score distribution the card stores, from the evaluator's last compute."""
    return score_distribution(*evaluator.evaluated())


def update_model_card(
    run_dir: Path,
    cfg: Config,
    val_summary: dict[str, Any],
    metrics: dict[str, Any],
    report: OperatingPointReport,
    checkpoint: Path,
    state: dict[str, Any],
    evaluator: CocoEvaluator | None = None,
) -> Path:
    """evaluate.py: rewrite the card with this evaluation's metrics, operating point and score distribution.

    The training facts come from model_card.json; a run from before the card gets what the
    checkpoint knows (config, iterations, training time) and "not recorded" for the rest.
    """
    card = load_model_card(run_dir) or ModelCard(
        run=Path(run_dir).name,
        config=state.get("config") or to_dict(cfg),
        data={"train": None},
        training={"seconds": state.get("train_seconds"), "iterations": state.get("iteration"), "hardware": None},
    )
    try:
        checkpoint_name = str(Path(checkpoint).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        checkpoint_name = str(checkpoint)
    card = replace(
        card,
        data={**card.data, "val": val_summary},
        evaluation={
            "checkpoint": checkpoint_name, "iteration": state.get("iteration"), "metrics": _json_metrics(metrics)
        },
        operating_point=report.to_dict(),
        written_by="evaluate.py",
        score_distribution=evaluated_distribution(evaluator) if evaluator is not None else card.score_distribution,
    )
    return write_model_card(run_dir, card)


# ----------------------------------------------------------------------------- rendering


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not recorded"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _numbers(values: Any) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _data_section(data: dict[str, dict[str, Any] | None]) -> list[str]:
    splits = [(name, s) for name, s in data.items() if s is not None]
    lines = ["## Data", ""]
    missing = [name for name, s in data.items() if s is None]
    if not splits:
        return lines + ["Not recorded.", ""]
    lines += [
        "| split | images | images without boxes | boxes | crowd boxes | dropped boxes (< 1 px) | annotations |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, s in splits:
        lines.append(f"| {name} | {s['images']} | {s['empty_images']} | {s['boxes']} | {s['crowd_boxes']} | "
                     f"{s['dropped_boxes']} | `{s['annotations']}` |")
    if missing:
        lines += ["", f"Not recorded: {', '.join(missing)} (the run predates the model card)."]
    lines += ["", "Boxes per class (crowd boxes not counted):", "",
              "| class | id | " + " | ".join(name for name, _ in splits) + " |",
              "|---|---:|" + "---:|" * len(splits)]
    ids: dict[int, str] = {}
    for _, s in splits:
        ids.update({c["id"]: c["name"] for c in s["per_class"]})
    for category_id, name in sorted(ids.items()):
        counts = [next((c["boxes"] for c in s["per_class"] if c["id"] == category_id), 0) for _, s in splits]
        lines.append(f"| {name} | {category_id} | " + " | ".join(str(n) for n in counts) + " |")
    return lines + [""]


def _config_section(cfg: Config, world_size: int) -> list[str]:
    m, t, i = cfg.model, cfg.train, cfg.input
    a = m.anchors
    optimizer = f"{t.optimizer}, lr {t.lr:g}, weight decay {t.weight_decay:g}"
    if t.optimizer == "sgd":
        optimizer += f", momentum {t.momentum:g}"
    schedule = f"{t.schedule}, warmup {t.warmup_iters} iterations"
    if t.schedule == "multistep":
        schedule += f", x{t.lr_decay:g} at {', '.join(str(s) for s in t.steps)}"
    parts = [f"{world_size} processes x {t.batch_size // world_size}"] if world_size > 1 else []
    if t.accumulate_steps > 1:
        parts.append(f"{t.accumulate_steps} accumulated batches of {t.batch_size}")
    batch = f"{t.batch_size * t.accumulate_steps} images per optimizer step"
    batch += f" ({'; '.join(parts)})" if parts else ""
    rows = [
        ("backbone", f"{m.backbone.name} (weights {m.backbone.weights}, norm {m.backbone.norm}, "
                     f"frozen stages {effective_frozen_stages(m.backbone)})"),
        ("FPN", f"P3-P7, {m.fpn.channels} channels, P6 from {m.fpn.p6_from.upper()}"),
        ("head", f"{m.head.num_convs} convs x {m.head.channels} channels, norm {m.head.norm}, "
                 f"prior {m.head.prior_prob:g}, {m.num_classes} classes"),
        ("input", f"train short side {list(i.min_size)}, long side <= {i.max_size}, eval short side "
                  f"{i.test_min_size}, padded to {i.size_divisible}"),
        ("anchors", f"sizes {_numbers(a.sizes)} (P3-P7), scales {_numbers(round(s, 3) for s in a.scales)}, "
                    f"ratios {_numbers(a.ratios)} ({len(a.scales) * len(a.ratios)} per location)"),
        ("matcher", f"IoU >= {m.matcher.fg_iou:g} foreground, < {m.matcher.bg_iou:g} background"),
        ("optimizer", optimizer),
        ("batch", batch),
        ("sampling", f"repeat factors, threshold {cfg.data.repeat_factor_threshold:g}"
                     if cfg.data.repeat_factor_threshold > 0 else "uniform"),
        ("iterations", f"{t.max_iters}" + (f", early stopping after {t.patience} evaluations without an AP gain "
                                             f"above {t.min_delta:g}" if t.patience else "")),
        ("evaluated weights", f"EMA of the weights, decay {t.ema_decay:g} (warm-up {t.ema_warmup} iterations)"
                              if t.ema_decay > 0 else "the trained weights (no EMA)"),
        ("schedule", schedule),
        ("mixed precision", t.amp),
        ("postprocess", f"score > {m.postprocess.score_thresh:g}, top {m.postprocess.topk_candidates} per level, "
                        f"NMS {m.postprocess.nms_thresh:g}, {m.postprocess.detections_per_img} per image"),
    ]
    return ["## Configuration", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def _loss_section(cfg: Config) -> list[str]:
    loss = cfg.loss
    names = {"focal": "sigmoid focal loss", "bce": "alpha-balanced cross-entropy (focal with gamma 0)",
             "ohem": "online hard example mining (gamma-0 loss on the hardest anchors)"}
    if isinstance(loss.alpha, tuple):
        alpha = "per class " + ", ".join(f"{a:g}" for a in loss.alpha)
    elif isinstance(loss.alpha, str):
        alpha = f"class-balanced ({loss.alpha}, cb_beta {loss.cb_beta:g}, mean {loss.cb_alpha:g})"
    else:
        alpha = "off" if loss.alpha < 0 else f"{loss.alpha:g}"
    text = f"Classification: {names[loss.type]} (`loss.type: {loss.type}`), gamma {loss.gamma:g}, alpha {alpha}"
    if loss.label_smoothing > 0:
        text += f", label smoothing {loss.label_smoothing:g}"
    if loss.type == "ohem":
        ratio = f"{loss.ohem_neg_pos_ratio:g} negatives per positive" if loss.ohem_neg_pos_ratio else "no ratio"
        nms = f"NMS {loss.ohem_nms:g}" if loss.ohem_nms else "no NMS"
        text += f"; OHEM {loss.ohem_batch_size} examples per image, {ratio}, {nms}"
    box = f"Box regression: {loss.box_loss}"
    if loss.box_loss == "smooth_l1":
        box += f" (beta {loss.smooth_l1_beta:g})"
    box += f", weight {loss.box_weight:g}."
    return ["## Loss", "", text + ".", box, ""]


def _operating_point_section(raw: dict[str, Any] | None) -> list[str]:
    lines = ["## Operating point", ""]
    if raw is None:
        return lines + ["None: the run has no validation set.", ""]
    report = OperatingPointReport.from_dict(raw)
    source = report.source
    where = f" of `{source['checkpoint']}` at iteration {source.get('iteration')}" if "checkpoint" in source else ""
    overall = report.overall
    if overall is None:
        lines.append("Undefined: the evaluation had no detections or no ground truth.")
    else:
        missed = "" if overall.reached else " The target was not reached; this is the closest point."
        lines.append(
            f"Score threshold **{overall.threshold:.5g}** overall ({report.describe_target()} at IoU {raw['iou']:g}, "
            f"on the val detections{where}): precision {overall.precision:.3f}, recall {overall.recall:.3f}, "
            f"F1 {overall.f1:.3f}{'' if overall.cost is None else f', cost {overall.cost:g}'}.{missed}"
        )
    lines += ["`scripts/predict.py` uses the per-class thresholds below by default (`operating_point.json`).", "",
              "```text", format_operating_point_table(report), "```", ""]
    return lines


def _distribution_section(raw: dict[str, Any] | None) -> list[str]:
    lines = ["## Score distribution (val)", ""]
    if raw is None:
        return lines + ["Not recorded.", ""]
    picks = (0.05, 0.25, 0.5, 0.75, 0.95)

    def row(values: list[float] | None) -> str:  # values at the stored quantiles 0, 1/100, ..., 1
        if values is None:
            return " | ".join("-" for _ in picks)
        return " | ".join(f"{values[round(q * (len(values) - 1))]:.4g}" for q in picks)

    lines += [
        f"{raw['num_detections']} detections on {raw['num_images']} images. `scripts/predict.py` compares the "
        f"images it runs with this (Kolmogorov-Smirnov, on {MIN_IMAGES} images or more; it warns above "
        f"max({MIN_SHIFT:g}, the test's 1 % critical value), see docs/rare_classes.md).",
        "",
        "| quantity | " + " | ".join(f"{100 * q:g} %" for q in picks) + " |",
        "|---|" + "---:|" * len(picks),
        f"| detection score | {row(raw['scores'])} |",
        f"| detections per image | {row(raw['detections_per_image'])} |",
        "",
    ]
    return lines


def _metrics_section(evaluation: dict[str, Any] | None) -> list[str]:
    lines = ["## COCO metrics (val)", ""]
    if evaluation is None:
        return lines + ["None: the run has no validation set.", ""]
    lines += [f"`{evaluation['checkpoint']}` at iteration {evaluation['iteration']}; 100 detections per image.", "",
              "```text", format_metrics_table(evaluation["metrics"]), "```", ""]
    return lines


def _budget_lines(budget: dict[str, Any] | None) -> list[str]:
    """train.time_budget: the budget, the time the command(s) used, and each plan (engine.budget)."""
    if not budget:
        return []
    plans = budget.get("plans") or []
    lines = [f"- time budget: {budget['budget']} ({_duration(budget['budget_s'])}); used {_duration(budget['used_s'])} "
             f"by the end of training, {len(plans)} plan(s)"]
    for plan in plans:
        evals = plan.get("eval_at") or []
        lines.append(
            f"  - {plan['reason']} at iteration {plan['iteration']} ({_duration(plan['elapsed_s'])} spent): "
            f"{plan['iterations']} iterations at {plan['step_s']:.3f} s a step"
            + (f", evaluations ({plan['eval_s']:.1f} s each) at {', '.join(map(str, evals))}" if evals else "")
            + (f", lr steps at {', '.join(map(str, plan['milestones']))}" if plan.get("milestones") else "")
        )
    return lines


def _training_section(training: dict[str, Any], runtime: dict[str, Any] | None) -> list[str]:
    hw = training.get("hardware")
    lines = ["## Training", "", f"- iterations: {training.get('iterations')}",
             f"- training time: {_duration(training.get('seconds'))} (optimizer steps only, without evaluation)"]
    lines += _budget_lines(training.get("budget"))
    if runtime is not None:
        lines += [f"- mixed precision: {runtime['amp']} ({runtime['amp_reason']})",
                  f"- torch.compile: {'on' if runtime['compile'] else 'off'} ({runtime['compile_reason']})"]
        if "eval_amp" in runtime:
            lines.append(f"- evaluation precision: {runtime['eval_amp']} ({runtime['eval_amp_reason']})")
        env = runtime.get("environment")
        if env:
            units = ", ".join(env.get("cpu_flags") or []) or "none listed"
            gpu = f"; GPU {env['gpu']} (capability {env['gpu_capability']})" if env.get("gpu") else ""
            lines.append(f"- environment: torch {env['torch']}, torchvision {env['torchvision']}, CUDA {env['cuda']}, "
                         f"float32 matmul precision {env['float32_matmul_precision']}, CPU flags {units}{gpu} "
                         f"(all of it in `runtime.json`)")
    if hw is None:
        return lines + ["- hardware: not recorded", ""]
    if "gpu" in hw:
        where = f"{hw['gpu']}" + (f" x {hw['world_size']}" if hw.get("world_size", 1) > 1 else "")
    else:
        where = f"CPU {hw['cpu']}, {hw['cpu_cores']} cores ({hw['torch_threads']} torch threads)"
    return lines + [f"- hardware: {where}; device `{hw['device']}`", f"- torch {hw['torch']}", ""]


def render(card: ModelCard) -> str:
    """The markdown of MODEL_CARD.md."""
    cfg = from_dict(card.config, f"{FACTS_NAME} (config)")
    world_size = int((card.training.get("hardware") or {}).get("world_size", 1))
    kind = {"focal": "focal loss", "bce": "cross-entropy", "ohem": "OHEM"}[cfg.loss.type]
    lines = [
        f"# Model card: {card.run}",
        "",
        f"RetinaNet ({cfg.model.backbone.name} FPN, {cfg.model.num_classes} classes) trained with {kind}. "
        f"Written by `{card.written_by}`; the facts are in `{FACTS_NAME}`.",
        "",
    ]
    lines += _data_section(card.data)
    lines += _config_section(cfg, world_size)
    lines += _loss_section(cfg)
    lines += _operating_point_section(card.operating_point)
    lines += _metrics_section(card.evaluation)
    lines += _distribution_section(card.score_distribution)
    lines += _training_section(card.training, card.runtime)
    return "\n".join(lines)

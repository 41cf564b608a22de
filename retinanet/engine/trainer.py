"""Training: `train_step` (one optimizer step) and `fit` (the loop), plus the set-up they run in.

`train_step` is the one training step: the trainer, the benchmark and the tests call it, so what
is timed and tested is what trains. `fit` is the loop, read top to bottom. `Trainer` holds what
the loop needs (built once by `Trainer.build`) and owns the run's files: checkpoints through
`Checkpoint`, metrics through `RunLogger`, the model card at the end.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from retinanet.config import Config, ConfigError, load_config, replace, save_config, to_dict
from retinanet.data.coco import CocoDetection
from retinanet.structures import Batch
from retinanet.data.loaders import DatasetError, build_dataset, build_train_loader, build_val_loader
from retinanet.engine import distributed
from retinanet.engine.budget import Budget, BudgetError, Plan, format_duration
from retinanet.engine.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_for_finetune,
    load_model_weights,
    rng_state,
    set_rng_state,
)
from retinanet.engine.ema import ModelEMA
from retinanet.engine.inference import evaluate, predict
from retinanet.engine.logger import LOG_FILE, METRICS_FILE, RunLogger, read_metrics, setup_file_logging
from retinanet.engine.optim import build_optimizer, build_scheduler
from retinanet.engine.profiling import phase
from retinanet.engine.run_folder import (
    BEST, CONFIG_FILE, LAST, START_UP_FILES, checkpoint_path, default_output_dir, discard_run_files, prepare_run_folder,
)
from retinanet.engine.runtime import (
    Runtime, autocast, check_amp, compile_model, deterministic_algorithms, place_model, read_runtime_record,
    resolve_device, resolve_runtime, write_runtime_record,
)
from retinanet.evaluation.evaluator import CocoEvaluator
from retinanet.evaluation.model_card import finish_training_run
from retinanet.evaluation.operating_point import IOU, class_scalars
from retinanet.evaluation.report import training_figures
from retinanet.evaluation.training_summary import FILE_NAME as SUMMARY_FILE, plot_training_summary
from retinanet.evaluation.visualize import draw_comparison
from retinanet.modeling.losses import DetectionLoss
from retinanet.modeling.model import build_criterion, build_model, build_postprocess
from retinanet.modeling.postprocess import PostProcess, rescale_boxes
from retinanet.modeling.preprocess import denormalize

log = logging.getLogger("retinanet")

LOSS_KEYS = ("loss", "loss_cls", "loss_box", "num_pos")
# The progress bar without tqdm's own remaining time, which counts steps only: the postfix's eta adds the
# evaluations, checkpoints and the finish still to come (Budget.remaining_seconds).
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"
# An evaluation's forward and postprocess per val image, against a training step's time per train image:
# the ETA's guess of an evaluation before one is measured (without a budget; a budget times a val batch).
EVAL_STEP_RATIO = 0.5
# Per val image: pycocotools, the TensorBoard figures and drawings of an evaluation (measured on the demo).
EVAL_SECONDS_PER_IMAGE = 0.01


# ----------------------------------------------------------------------------- the step


@dataclass(frozen=True)
class StepOptions:
    device: torch.device
    amp: str = "none"  # "none" | "bf16" | "fp16"
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    world_size: int = 1


@dataclass
class StepStats:
    """One step's global values (sums over ranks of each rank's share), averaged over micro-batches."""

    loss: float
    loss_cls: float
    loss_box: float
    num_pos: float
    grad_norm: float  # before clipping; nan after a non-finite loss, inf or nan after non-finite gradients
    finite: bool  # False: no parameter changed (a non-finite loss or gradients, or the fp16 GradScaler's skip)
    images: int  # images in the step over all ranks
    scaler_skipped: bool = False  # fp16: inf/nan gradients, the GradScaler skipped the update and lowered its scale
    nonfinite_grads: bool = False  # a finite loss whose gradients (or their norm) were not finite: skipped
    nonfinite_params: tuple[str, ...] = ()  # then, the parameters whose gradient holds inf or nan on this rank


def train_step(
    model: nn.Module,
    criterion: DetectionLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batches: Sequence[Batch],
    opts: StepOptions,
) -> StepStats:
    """Forward, loss, backward, the non-finite checks, clipping and the optimizer and scaler steps.

    Each is a `phase` scope (engine.profiling), so torch.profiler shows where the step's time goes.

    `batches` are the micro-batches of one step (train.accumulate_steps of them); their gradients
    add up to that of one batch of their total size. Under DDP (`model` wrapped), the loss of each
    rank's share is scaled by the world size, so DDP's gradient average is the sum.

    A non-finite loss, or a finite loss with an inf or nan gradient (or a gradient norm that overflows),
    on any rank skips the whole step on every rank: no parameter or optimizer state changes, and the
    stats say so (`finite` False) so that the caller advances neither the schedule nor the EMA. Such a
    gradient would otherwise be applied (AdamW, SGD), zeroed by clipping (an inf norm) or spread to
    every weight by it (a nan norm). Under fp16 the GradScaler finds such gradients itself, skips the
    update and lowers its scale (`scaler_skipped` True): its search for a scale, not a diverging run.
    """
    world, accum = opts.world_size, len(batches)
    optimizer.zero_grad(set_to_none=True)
    # Summed on the device and read back once, with the grad norm and the finite flags: the step waits for
    # the device only there and (fp16) in the GradScaler (engine.host_sync counts these waits).
    totals = torch.zeros(len(LOSS_KEYS), dtype=torch.float64, device=opts.device)
    finite = torch.ones((), dtype=torch.bool, device=opts.device)
    images = 0
    for micro, batch in enumerate(batches):
        batch = batch.to(opts.device, non_blocking=True)
        skip_sync = isinstance(model, DistributedDataParallel) and micro < accum - 1  # all-reduce once, at the end
        with phase("forward"), autocast(opts.device, opts.amp), model.no_sync() if skip_sync else contextlib.nullcontext():
            outputs = model(batch.images)
        with phase("loss"):
            losses = criterion(outputs, batch.targets)  # float32 whatever the autocast
            stats = distributed.all_reduce_sum(torch.stack([losses[k].detach().float() for k in LOSS_KEYS]))
        finite &= torch.isfinite(stats[0])
        with phase("backward"):
            scaler.scale(losses["loss"] * world / accum).backward()
        totals += stats.double() / accum
        images += len(batch) * world
    with phase("optimizer"):
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if scaler.is_enabled():  # the unscaled norm, before unscale_: a skipped step leaves the scaler as it was
            grad_norm = grad_norm / scaler.scale(torch.ones((), device=opts.device))
        grads_finite = torch.isfinite(grad_norm)
        if world > 1:  # every rank decides alike, whatever its own reduction of the norm gave
            grads_finite = distributed.all_reduce_sum((~grads_finite).float()) == 0
    *values, loss_finite, norm, all_grads_finite = torch.cat(
        [totals, finite[None].double(), grad_norm[None].double(), grads_finite[None].double()]).tolist()
    if not loss_finite:  # the same on every rank: the flag is of the summed stats
        optimizer.zero_grad(set_to_none=True)
        return StepStats(*[float("nan")] * 3, 0.0, float("nan"), finite=False, images=0)
    if not all_grads_finite and not scaler.is_enabled():  # fp16: the GradScaler skips it below, and counts it
        names = nonfinite_gradients(model, params)
        optimizer.zero_grad(set_to_none=True)
        return StepStats(*values, grad_norm=norm, finite=False, images=images, nonfinite_grads=True,
                         nonfinite_params=names)
    with phase("optimizer"):
        scaler.unscale_(optimizer)
        if opts.grad_clip > 0 and all_grads_finite:  # the norm is known: clipping needs no second pass
            torch.nn.utils.clip_grads_with_norm_(params, opts.grad_clip, grad_norm)
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(optimizer)
        scaler.update()
    # The GradScaler lowers its scale exactly when it found inf/nan gradients and skipped optimizer.step.
    skipped = scaler.is_enabled() and scaler.get_scale() < scale
    return StepStats(*values, grad_norm=norm, finite=not skipped, images=images, scaler_skipped=skipped)


def nonfinite_gradients(model: nn.Module, params: Sequence[torch.Tensor]) -> tuple[str, ...]:
    """The names of the parameters whose gradient holds an inf or nan, in the model's order.

    One more read-back, on a step that is skipped for its gradients only.
    """
    bad = torch.stack([~torch.isfinite(p.grad).all() for p in params]).tolist()
    bad_ids = {id(p) for p, b in zip(params, bad) if b}
    module = model.module if isinstance(model, DistributedDataParallel) else model
    return tuple(name for name, p in module.named_parameters() if id(p) in bad_ids)


# ----------------------------------------------------------------------------- the run


class StopRequest:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint at the next step and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("received %s: saving a checkpoint and stopping", signal.Signals(signum).name)


@dataclass
class Progress:
    """The counters a checkpoint carries across --resume."""

    iteration: int = 0
    best_ap: float = -1.0
    train_seconds: float = 0.0
    skipped_steps: int = 0
    evals_without_gain: int = 0
    nonfinite_in_a_row: int = 0


@dataclass
class Trainer:
    """Everything `fit` uses, built from the config by `Trainer.build`."""

    cfg: Config
    source: str  # the config file, for error messages
    out_dir: Path
    device: torch.device
    runtime: Runtime  # train.amp, train.compile and eval.amp as resolved on this machine
    model: nn.Module  # the plain module (compiled in place when runtime.compile): checkpoints and evaluation
    ddp_model: nn.Module  # what the step runs: `model`, or `model` wrapped in DDP
    criterion: DetectionLoss
    val_criterion: DetectionLoss  # the val loss: this rank's batches, no EMA normalizer to move
    train_box_counts: dict[int, int]  # category id -> non-crowd training boxes
    ema: ModelEMA | None  # train.ema_decay > 0: evaluated, kept in best.pt and described by the card
    postprocess: PostProcess
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_set: CocoDetection
    val_set: CocoDetection | None
    val_loader: DataLoader | None  # this rank's contiguous shard of val
    evaluator: CocoEvaluator | None  # the last evaluation feeds the model card
    logger: RunLogger
    stop: StopRequest
    progress: Progress
    metrics: dict[str, Any]
    plan: Plan  # what fit follows: the config's schedule, or train.time_budget's plan
    budget: Budget  # measures the run's times (the ETA) and, with train.time_budget, plans it
    bar_values: dict[str, str] = field(default_factory=dict)  # the progress bar's postfix: eta, loss, lr, img/s

    @property
    def main_process(self) -> bool:
        return distributed.is_main_process()

    @property
    def step_options(self) -> StepOptions:
        return StepOptions(self.device, self.runtime.amp, self.cfg.train.grad_clip, distributed.get_world_size())

    @classmethod
    def build(cls, config: str, overrides: Sequence[str], output_dir: str | None, resume: bool,
              started: float | None = None) -> "Trainer":
        """Config, run folder, data, model, optimizer; then the state of `last.pt` under --resume."""
        cfg = load_config(config, overrides)
        device = distributed.init_from_env(resolve_device(cfg.train.device))
        world = distributed.get_world_size()
        distributed.quiet_other_ranks()
        check_train_config(cfg, config, device, world)
        out_dir = Path(output_dir or default_output_dir(config))
        folder_error = None
        if distributed.is_main_process():
            try:
                prepare_run_folder(out_dir, resume)
                setup_file_logging(out_dir / LOG_FILE)
            except (FileExistsError, FileNotFoundError, PermissionError) as exc:
                folder_error = exc
        distributed.raise_from_main(folder_error)
        torch.manual_seed(cfg.train.seed)

        train_set = build_dataset(cfg, "train", config)
        val_set = build_dataset(cfg, "val", config) if cfg.data.val.annotations else None
        if val_set is not None and val_set.category_map.category_ids != train_set.category_map.category_ids:
            raise DatasetError(
                f"{cfg.data.val.annotations}: categories {val_set.category_map.category_ids[:10]} differ from the "
                f"train set's {train_set.category_map.category_ids[:10]}; both splits must declare the same categories"
            )
        cfg = replace(cfg, **{"model.num_classes": cfg.model.num_classes or train_set.category_map.num_classes})
        if distributed.is_main_process():
            save_config(cfg, out_dir / CONFIG_FILE)

        class_counts = train_set.class_box_counts()  # n_c of class-balanced alpha, and "rarest" for the logs
        model = build_model(cfg)
        if cfg.train.sync_bn and world > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = place_model(model, device, cfg.train.channels_last)
        runtime = resolve_runtime(cfg.train.amp, cfg.train.compile, device, cfg.train.max_iters, cfg.eval.amp, config,
                                  sync_bn=cfg.train.sync_bn and world > 1, time_budget_s=cfg.train.time_budget_seconds)
        log.info("runtime: %s", runtime.describe())
        if distributed.is_main_process():
            write_runtime_record(out_dir, runtime, device)
        if runtime.compile:
            model = compile_model(model)
        optimizer = build_optimizer(cfg.train, model)
        trainer = cls(
            cfg=cfg, source=config, out_dir=out_dir, device=device, runtime=runtime, model=model,
            ddp_model=model if world == 1 else DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=cfg.model.backbone.norm == "bn",  # frozen BN and GN buffers never change
            ),
            criterion=build_criterion(cfg, cfg.model.num_classes, distributed.all_reduce_sum if world > 1 else None,
                                      class_counts=class_counts),
            val_criterion=build_criterion(replace(cfg, **{"loss.normalizer_momentum": 0.0}), cfg.model.num_classes,
                                          class_counts=class_counts),
            train_box_counts=dict(zip(train_set.category_map.category_ids, class_counts)),
            ema=(ModelEMA(model, cfg.train.ema_decay, cfg.train.ema_warmup, compile_model if runtime.compile else None)
                 if cfg.train.ema_decay > 0 else None),
            postprocess=build_postprocess(cfg), optimizer=optimizer, scheduler=build_scheduler(cfg.train, optimizer),
            scaler=torch.amp.GradScaler(device.type, enabled=runtime.amp == "fp16"),
            train_set=train_set, val_set=val_set,
            val_loader=(build_val_loader(cfg, val_set, distributed.get_rank(), world, pin_memory=device.type == "cuda")
                        if val_set is not None else None),
            evaluator=(CocoEvaluator(val_set.coco, backend=cfg.eval.backend, keep_matches=True)  # per-class recall
                       if val_set is not None else None),
            logger=RunLogger(out_dir, enabled=distributed.is_main_process()), stop=StopRequest(), progress=Progress(),
            metrics={}, plan=Plan.from_config(cfg.train),
            budget=Budget.for_command(cfg.train, has_val=val_set is not None, source=config, started=started),
        )
        if resume:
            trainer.restore(read_on_main(checkpoint_path(out_dir, LAST)))
        elif cfg.train.init_from:
            skipped = load_for_finetune(model, read_on_main(Path(cfg.train.init_from)).model)
            log.info("initialized from %s; kept fresh: %s", cfg.train.init_from, ", ".join(skipped) or "nothing")
        return trainer

    def checkpoint(self) -> Checkpoint:
        """The whole training state, in the one checkpoint schema."""
        categories = [{"id": i, "name": n} for i, n in zip(self.train_set.category_map.category_ids,
                                                           self.train_set.category_map.names)]
        p = self.progress
        return Checkpoint(
            model=self.model.state_dict(), config=to_dict(self.cfg), categories=categories, iteration=p.iteration,
            best_ap=p.best_ap, train_seconds=p.train_seconds, skipped_steps=p.skipped_steps,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), criterion=self.criterion.state_dict(), rng=rng_state(),
            ema=self.ema.state_dict() if self.ema is not None else None,
            ema_updates=self.ema.updates if self.ema is not None else 0, evals_without_gain=p.evals_without_gain,
            budget={"plan": self.plan.to_dict(), **self.budget.state_dict()} if self.budget.active else None,
        )

    def restore(self, ckpt: Checkpoint) -> None:
        path = checkpoint_path(self.out_dir, LAST)
        if ckpt.optimizer is None or ckpt.rng is None:
            raise CheckpointError(f"{path}: holds no training state (an inference checkpoint); start without --resume")
        load_model_weights(self.model, ckpt.model, path)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.scheduler.load_state_dict(ckpt.scheduler)
        if ckpt.scaler:  # a run saved without fp16 has an empty scaler state: an fp16 resume starts a fresh scale
            self.scaler.load_state_dict(ckpt.scaler)
        self.criterion.load_state_dict(ckpt.criterion)
        set_rng_state(ckpt.rng)  # RNG states stay CPU tensors: checkpoints are read to the CPU
        if self.ema is not None:
            if ckpt.ema is None:
                raise CheckpointError(f"{path}: holds no EMA weights; resume with the run's train.ema_decay (0)")
            self.ema.load_state_dict(ckpt.ema, ckpt.ema_updates)
        self.progress = Progress(ckpt.iteration, ckpt.best_ap, ckpt.train_seconds, ckpt.skipped_steps,
                                 ckpt.evals_without_gain)
        if self.budget.active and ckpt.budget is not None:
            saved = Plan(**ckpt.budget["plan"])
            self.budget.load_state_dict(ckpt.budget)
            if saved.max_iters == self.cfg.train.max_iters:  # else the schedule changed: plan again from here
                self.follow(saved)
            else:
                self.budget.planned = False
            log.info("resumed from %s at iteration %d of %d planned; %s of the %s budget spent", path, ckpt.iteration,
                     self.plan.end_iter, format_duration(self.budget.used), format_duration(self.budget.seconds))
            return
        log.info("resumed from %s at iteration %d", path, ckpt.iteration)

    def save(self, name: str) -> None:
        if self.main_process:
            self.checkpoint().save(checkpoint_path(self.out_dir, name))

    def follow(self, plan: Plan) -> None:
        """From now on: the plan's last iteration, its schedule positions (the lr) and its EMA warm-up."""
        self.plan = plan
        self.scheduler.lr_lambdas[0].set_plan(plan.start_iter, plan.start_pos, plan.end_iter)
        if self.ema is not None:
            self.ema.warmup = plan.ema_warmup

    def update_plan(self, bar: tqdm) -> None:
        """train.time_budget: plan or re-plan after this step when the measured times ask for it (rank 0
        decides; under torchrun the ranks check at the same iterations and receive its plan)."""
        if not self.budget.active:
            return
        it, world = self.progress.iteration, distributed.get_world_size()
        if world > 1 and it % self.cfg.train.log_every:
            return
        change, error = None, None
        if self.main_process:
            if not self.budget.estimates.eval and self.val_set is not None:
                self.budget.guess_eval(self.probe_eval_seconds())
            try:
                change = self.budget.update(self.plan, it)
            except BudgetError as exc:
                error = exc
        distributed.raise_from_main(error)
        if world > 1:
            change = distributed.broadcast_object(change)
        if change is None:
            return
        plan, reason = change
        self.follow(plan)
        entry = self.budget.record(plan, it, reason)
        self.logger.log_record("plan", it, entry)
        log.info(self.budget.describe(entry))
        bar.total = plan.end_iter
        bar.refresh()

    def probe_eval_seconds(self) -> float:
        """One val batch through the evaluation's forward and postprocess, scaled to the val set: the
        budget's guess of an evaluation until one is measured. The RNG is left as it was (exact --resume)."""
        assert self.val_loader is not None and self.val_set is not None
        with torch.random.fork_rng(devices=[]):
            start = time.perf_counter()
            batches = predict(self.eval_model, self.postprocess, self.val_loader, self.device, self.runtime.eval_amp)
            next(batches, None)
            batches.close()
            seconds = time.perf_counter() - start
        return seconds * len(self.val_loader) + EVAL_SECONDS_PER_IMAGE * len(self.val_set)

    def eta(self) -> str:
        """The progress bar's time left: steps, evaluations, checkpoints and the finish still to come."""
        budget, it = self.budget, self.progress.iteration
        step = budget.step_seconds()
        if step is None:
            return "?"
        if not budget.estimates.eval_measured and self.val_set is not None and not budget.active:
            budget.guess_eval(EVAL_STEP_RATIO * step / self.cfg.train.batch_size * len(self.val_set)
                              + EVAL_SECONDS_PER_IMAGE * len(self.val_set))
        evals = self.plan.evals_left(it) if self.val_set is not None else 0
        left = format_duration(budget.remaining_seconds(self.plan, it, step))
        return f"{left} with {evals} eval{'s' if evals != 1 else ''}" if evals else left

    def discard_unsaved(self) -> None:
        """A run stopped before its first checkpoint (a budget too short): remove what it wrote but the
        start-up files, so the same command with a longer budget starts in the same folder."""
        self.logger.close()
        if self.main_process and not checkpoint_path(self.out_dir, LAST).exists():
            discard_run_files(self.out_dir, keep=START_UP_FILES)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def record(self, stats: StepStats, seconds: float) -> None:
        """Count the step and move the EMA (applied steps only); too many non-finite steps in a row end the run."""
        p = self.progress
        p.iteration += 1
        p.train_seconds += seconds
        if stats.finite:
            p.nonfinite_in_a_row = 0
            if self.ema is not None:
                self.ema.update(self.model)
            return
        p.skipped_steps += 1
        if stats.scaler_skipped:  # the GradScaler's normal search for its scale, not a diverging run
            log.info("iteration %d: fp16 gradients overflowed, the GradScaler skipped the step", p.iteration - 1)
            return
        p.nonfinite_in_a_row += 1
        what = "loss"
        if stats.nonfinite_grads:
            names = stats.nonfinite_params
            what = (f"gradients in {', '.join(names[:3])}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                    if names else "gradient norm (its float32 sum overflowed, or another rank's gradients)")
        log.warning("iteration %d: non-finite %s, step skipped (%d in a row)", p.iteration - 1, what,
                    p.nonfinite_in_a_row)
        if p.nonfinite_in_a_row >= self.cfg.train.max_nonfinite_steps:
            raise FloatingPointError(
                f"{p.nonfinite_in_a_row} steps in a row with a non-finite loss or gradients at iteration "
                f"{p.iteration - 1} (the last: non-finite {what}); the last good checkpoint is "
                f"{checkpoint_path(self.out_dir, LAST)}. Lower train.lr, raise train.warmup_iters or set train.grad_clip"
            )

    def log_train(self, window: list[StepStats], seconds: float, bar: tqdm) -> None:
        """The last step's losses, and the images per second since the last log line."""
        last = window[-1]
        values = {
            "loss": last.loss, "loss_cls": last.loss_cls, "loss_box": last.loss_box,
            "lr": self.optimizer.param_groups[0]["lr"],
            "pos_per_image": last.num_pos / self.cfg.train.batch_size,
            "grad_norm": last.grad_norm,
            "images_per_s": sum(s.images for s in window) / max(seconds, 1e-9),
            "skipped_steps": self.progress.skipped_steps,
        }
        step = self.progress.iteration
        self.logger.log_scalars(step, values, kind="train")
        self.bar_values.update(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.2e}",
                               img_s=f"{values['images_per_s']:.1f}")
        bar.set_postfix(self.bar_values)
        log.info("iter %d/%d loss %.4f cls %.4f box %.4f lr %.2e %.1f img/s", step, self.plan.end_iter,
                 values["loss"], values["loss_cls"], values["loss_box"], values["lr"], values["images_per_s"])

    def evaluate(self) -> None:
        """COCO evaluation on val; logs it, draws a few images, keeps best.pt."""
        step, cfg = self.progress.iteration, self.cfg
        assert self.val_set is not None and self.val_loader is not None and self.evaluator is not None
        metrics, _, kept = evaluate(
            self.eval_model, self.postprocess, self.val_loader, self.evaluator, self.val_set.category_map.category_ids,
            self.device, self.runtime.eval_amp, keep_images=cfg.eval.num_vis_images, criterion=self.val_criterion,
        )
        self.metrics = metrics
        if self.main_process:
            self.logger.log_eval(step, metrics)
            recall, precision = self.evaluator.pr_curve(iou=0.5)
            self.logger.log_pr_curve(step, "eval/pr_curve_iou50", recall, precision)
            scalars = class_scalars(self.evaluator.matches(iou=IOU), metrics, train_box_counts=self.train_box_counts)
            self.logger.log_scalars(step, scalars, prefix="eval_classes", kind="eval_classes")
            for tag, image in training_figures(self.evaluator).items():
                self.logger.log_images(step, tag, [image])
            self.logger.log_images(step, "eval/predictions", self.draw(kept))
        log.info("iter %d: AP %.1f AP50 %.1f AP75 %.1f (%%)", step, *(100 * metrics[k] for k in ("AP", "AP50", "AP75")))
        p = self.progress
        p.evals_without_gain = 0 if metrics["AP"] > p.best_ap + self.cfg.train.min_delta else p.evals_without_gain + 1
        if metrics["AP"] > p.best_ap:
            p.best_ap = metrics["AP"]
            self.save(BEST)
        self.model.train()

    def patience_exhausted(self) -> bool:
        """Early stopping: train.patience evaluations in a row without a gain above train.min_delta."""
        patience = self.cfg.train.patience
        if patience == 0 or self.progress.evals_without_gain < patience:
            return False
        log.info("stopping early at iteration %d: val AP has not improved by more than %g points (train.min_delta %g) "
                 "for %d evaluations (train.patience); best AP %.1f %%", self.progress.iteration,
                 100 * self.cfg.train.min_delta, self.cfg.train.min_delta, patience, 100 * self.progress.best_ap)
        return True

    def draw(self, kept: list[tuple[torch.Tensor, Any, Any]]) -> list[Any]:
        names = self.train_set.category_map.names
        drawn = []
        for image, det, target in kept:
            pred_boxes = rescale_boxes(det.boxes_xyxy, target.orig_size, tuple(image.shape[-2:]))
            pixels = (denormalize(image.float().cpu()).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
            drawn.append(draw_comparison(
                pixels, pred_boxes, [names[int(l)] for l in det.labels], det.scores.tolist(),
                target.boxes_xyxy, [names[int(l)] for l in target.labels], min_score=0.3,
            ))
        return drawn

    def finish(self) -> int:
        """TensorBoard hparams, then (rank 0) the model card and operating point."""
        cfg = self.cfg
        hparams = {"loss.type": cfg.loss.type, "loss.gamma": cfg.loss.gamma, "loss.alpha": cfg.loss.alpha,
                   "train.lr": cfg.train.lr, "train.max_iters": cfg.train.max_iters}
        self.logger.log_hparams(hparams, {f"hparam/{k}": self.metrics[k] for k in ("AP", "AP50", "AP75")
                                          if k in self.metrics})
        self.logger.close()
        if not self.main_process:
            return 0
        plot_training_summary(read_metrics(self.out_dir / METRICS_FILE), self.out_dir / SUMMARY_FILE)
        data = {"train": self.train_set.summary(), "val": self.val_set.summary() if self.val_set is not None else None}
        card = finish_training_run(
            self.out_dir, cfg, data, self.evaluator if self.metrics else None, self.metrics, self.progress.iteration,
            self.progress.train_seconds, self.device, world_size=distributed.get_world_size(),
            runtime=read_runtime_record(self.out_dir),  # what runtime.json says, as written at start-up
            budget=self.budget.summary() if self.budget.active else None,
        )
        log.info("model card: %s", card)
        log.info("done: %d iterations in %.0fs of training; run folder %s", self.progress.iteration,
                 self.progress.train_seconds, self.out_dir)
        if self.budget.active:
            log.info("time budget: %s of %s used", format_duration(self.budget.elapsed()),
                     format_duration(self.budget.seconds))
        print(f"run folder: {self.out_dir}  (tensorboard --logdir {self.out_dir})")
        return 0

    def stopped(self, stop_signal: int) -> int:
        log.warning("stopped at iteration %d; continue with --resume", self.progress.iteration)
        self.logger.close()
        return 130 if stop_signal == signal.SIGINT else 143


def check_train_config(cfg: Config, source: str, device: torch.device, world: int) -> None:
    """Settings that only fail on this machine or at this world size, before anything is built."""
    if cfg.train.batch_size % world:
        raise ConfigError(
            f"{source}: train.batch_size={cfg.train.batch_size} is the global batch and must be divisible by "
            f"the {world} processes; set train.batch_size to a multiple of {world}"
        )
    if cfg.train.sync_bn and device.type != "cuda":
        raise ConfigError(f"{source}: train.sync_bn needs CUDA (SyncBatchNorm has no CPU kernels); remove it")
    if cfg.train.sync_bn and world > 1 and cfg.train.compile == "true":
        raise ConfigError(f"{source}: train.sync_bn with train.compile=true: SyncBatchNorm (a collective inside the "
                          "forward) is not supported under torch.compile here; set train.compile=auto or false")
    check_amp(cfg.train.amp, device, source)
    check_amp(cfg.eval.amp, device, source, "eval.amp")


def read_on_main(path: Path) -> Checkpoint:
    """A checkpoint read by rank 0 and sent to every rank, so other nodes need no copy of the run folder."""
    ckpt, error = None, None
    if distributed.is_main_process():
        try:
            ckpt = Checkpoint.load(path, "cpu")
        except CheckpointError as exc:
            error = exc
    distributed.raise_from_main(error)
    return distributed.broadcast_object(ckpt)


def every(step: int, period: int) -> bool:
    return period > 0 and step % period == 0


# ----------------------------------------------------------------------------- the loop


def fit(t: Trainer) -> int:
    """Train from t.progress.iteration to the plan's last iteration (train.max_iters, or what fits
    train.time_budget); returns the exit code (130/143 when stopped)."""
    cfg = t.cfg.train
    t.stop.install()
    # This rank's slice of every global batch; the sequence depends only on train.seed (exact --resume).
    batches = iter(build_train_loader(t.cfg, t.train_set, start_batch=t.progress.iteration * cfg.accumulate_steps,
                                      rank=distributed.get_rank(), world_size=distributed.get_world_size(),
                                      pin_memory=t.device.type == "cuda"))
    bar = tqdm(total=t.plan.end_iter, initial=t.progress.iteration, dynamic_ncols=True, bar_format=BAR_FORMAT,
               **({} if t.main_process else {"disable": True}))  # rank 0 keeps TQDM_DISABLE
    clock = t.budget.clock  # step, evaluation and checkpoint times, which the budget plans with
    window, window_start = [], time.perf_counter()
    t.model.train()
    with contextlib.closing(bar):  # also when an error (a budget too short) ends the run
        while t.progress.iteration < t.plan.end_iter:
            start = clock()
            micro = [next(batches) for _ in range(cfg.accumulate_steps)]  # drawn even for a skipped step
            stats = train_step(t.ddp_model, t.criterion, t.optimizer, t.scaler, micro, t.step_options)
            if stats.finite:  # a skipped step changed no parameter: the schedule waits with it
                t.scheduler.step()
            seconds = clock() - start
            t.record(stats, seconds)
            t.budget.step_done(seconds)
            window.append(stats)
            done = t.progress.iteration
            final = done == t.plan.end_iter
            t.bar_values["eta"] = t.eta()
            bar.set_postfix(t.bar_values, refresh=False)
            bar.update(1)
            if (every(done, cfg.log_every) or final) and stats.finite:  # a skipped step writes no train line
                t.log_train(window, time.perf_counter() - window_start, bar)
                window, window_start = [], time.perf_counter()
            if t.val_set is not None and (final or t.plan.eval_due(done)):
                start = clock()
                t.evaluate()
                t.budget.eval_done(clock() - start)
            early = t.patience_exhausted()  # the same on every rank: the metrics are broadcast
            stop_signal = distributed.all_reduce_max(t.stop.signal or 0, t.device)  # a signal to one rank stops all
            if final or early or stop_signal or (t.plan.checkpoint_due(done) and stats.finite):
                start = clock()
                t.save(LAST)  # after a skipped step, last.pt stays the last good one
                t.budget.checkpoint_done(clock() - start)
            if stop_signal:
                return t.stopped(stop_signal)
            if early:
                break
            t.update_plan(bar)  # train.time_budget: the plan for the next steps, from the times measured so far
    return t.finish()


def train(config: str, overrides: Sequence[str] = (), output_dir: str | None = None, resume: bool = False,
          started: float | None = None) -> int:
    """`python train.py`: one process of a run (the only one, or one of WORLD_SIZE under torchrun). A time
    budget counts from the process's start, or from `started` (budget.CLOCK()) when called inside another."""
    try:
        trainer = Trainer.build(config, overrides, output_dir, resume, started)
        with deterministic_algorithms(trainer.cfg.train.deterministic):
            try:
                return fit(trainer)
            except BudgetError:
                trainer.discard_unsaved()
                raise
    finally:
        distributed.cleanup()

"""Train RetinaNet from a YAML config.

    python train.py --config configs/demo_cpu.yaml [--output-dir DIR] [--resume] [--set KEY=VALUE ...]

Writes into the output directory: config.yaml (the resolved config), train.log, metrics.jsonl,
TensorBoard event files, checkpoints/last.pt and checkpoints/best.pt, and at the end MODEL_CARD.md
(with model_card.json) and operating_point.json (the max-F1 score thresholds on val).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from retinanet.data.coco import CocoDetection
from retinanet.data.loaders import DatasetError, build_dataset, build_train_loader, build_val_loader
from retinanet.engine import distributed
from retinanet.config import Config, ConfigError, load_config, replace, save_config, to_dict
from retinanet.engine.checkpoint import CheckpointError, load_checkpoint, load_for_finetune, load_model_weights, rng_state, save_checkpoint, set_rng_state
from retinanet.engine.runtime import autocast, check_amp, place_model, resolve_device
from retinanet.engine.optim import build_optimizer, build_scheduler
from retinanet.engine.inference import evaluate
from retinanet.cli.common import run_cli
from retinanet.evaluation.evaluator import CocoEvaluator
from retinanet.engine.logger import RunLogger, setup_file_logging
from retinanet.modeling.model import build_criterion, build_model, build_postprocess
from retinanet.evaluation.model_card import finish_training_run
from retinanet.modeling.postprocess import rescale_boxes
from retinanet.modeling.preprocess import denormalize
from retinanet.evaluation.visualize import draw_comparison

log = logging.getLogger("retinanet")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--output-dir", default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last.pt")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser.parse_args(argv)


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


def run_evaluation(
    cfg: Config, model, postprocess, val_set: CocoDetection, val_loader, device, logger: RunLogger, step: int,
    evaluator: CocoEvaluator,
) -> dict[str, Any]:
    names = val_set.category_map.names
    metrics, _, kept = evaluate(
        model, postprocess, val_loader, evaluator, val_set.category_map.category_ids, device, cfg.train.amp,
        keep_images=cfg.eval.num_vis_images,
    )
    if not distributed.is_main_process():
        return metrics
    logger.log_eval(step, metrics)
    recall, precision = evaluator.pr_curve(iou=0.5)
    logger.log_pr_curve(step, "eval/pr_curve_iou50", recall, precision)
    drawn = []
    for image, det, target in kept:
        pred_boxes = rescale_boxes(det.boxes_xyxy, target.orig_size, tuple(image.shape[-2:]))
        pixels = (denormalize(image.float().cpu()).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        drawn.append(
            draw_comparison(
                pixels, pred_boxes, [names[int(l)] for l in det.labels], det.scores.tolist(),
                target.boxes_xyxy, [names[int(l)] for l in target.labels], min_score=0.3,
            )
        )
    logger.log_images(step, "eval/predictions", drawn)
    return metrics


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
    """Refuse to overwrite a run, check --resume and writability, then log to train.log (rank 0 only)."""
    last_path = out_dir / "checkpoints" / "last.pt"
    if last_path.exists() and not resume:
        raise FileExistsError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --output-dir")
    if resume and not last_path.exists():
        raise FileNotFoundError(f"--resume: {last_path} not found; start without --resume")
    ensure_writable(out_dir / "checkpoints")
    setup_file_logging(out_dir / "train.log")


def read_on_main(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """A checkpoint read by rank 0 and sent to every rank, so other nodes need no copy of the run folder."""
    state, error = None, None
    if distributed.is_main_process():
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as exc:
            error = exc
    distributed.raise_from_main(error)
    return distributed.broadcast_object(state)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    finally:
        distributed.cleanup()


def train(args: argparse.Namespace) -> int:
    """One process of a run: the only one under plain python, one of WORLD_SIZE under torchrun."""
    cfg = load_config(args.config, args.set)
    device = distributed.init_from_env(resolve_device(cfg.train.device))
    world, rank, main_process = distributed.get_world_size(), distributed.get_rank(), distributed.is_main_process()
    distributed.quiet_other_ranks()
    if cfg.train.batch_size % world:
        raise ConfigError(
            f"{args.config}: train.batch_size={cfg.train.batch_size} is the global batch and must be divisible by "
            f"the {world} processes; set train.batch_size to a multiple of {world}"
        )
    if cfg.train.sync_bn and device.type != "cuda":
        raise ConfigError(f"{args.config}: train.sync_bn needs CUDA (SyncBatchNorm has no CPU kernels); remove it")
    out_dir = Path(args.output_dir or Path("runs") / Path(args.config).stem)
    ckpt_dir = out_dir / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    folder_error = None
    if main_process:
        try:
            prepare_run_folder(out_dir, args.resume)
        except (FileExistsError, FileNotFoundError, PermissionError) as exc:
            folder_error = exc
    distributed.raise_from_main(folder_error)
    check_amp(cfg.train.amp, device, args.config)
    torch.manual_seed(cfg.train.seed)

    train_set = build_dataset(cfg, "train", args.config)
    val_set = build_dataset(cfg, "val", args.config) if cfg.data.val.annotations else None
    if val_set is not None and val_set.category_map.category_ids != train_set.category_map.category_ids:
        raise DatasetError(
            f"{cfg.data.val.annotations}: categories {val_set.category_map.category_ids[:10]} differ from the train "
            f"set's {train_set.category_map.category_ids[:10]}; both splits must declare the same categories"
        )
    num_classes = cfg.model.num_classes or train_set.category_map.num_classes
    cfg = replace(cfg, **{"model.num_classes": num_classes})
    if main_process:
        save_config(cfg, out_dir / "config.yaml")

    model = build_model(cfg)
    if cfg.train.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = place_model(model, device, cfg.train.channels_last)
    criterion = build_criterion(cfg, num_classes, distributed.all_reduce_sum if world > 1 else None)
    postprocess = build_postprocess(cfg)
    optimizer = build_optimizer(cfg.train, model)
    scheduler = build_scheduler(cfg.train, optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    categories = [{"id": i, "name": n} for i, n in zip(train_set.category_map.category_ids, train_set.category_map.names)]

    start_iter, best_ap, train_seconds, skipped_steps = 0, -1.0, 0.0, 0
    if args.resume:
        state = read_on_main(last_path, "cpu")  # RNG states must stay CPU tensors; weights are copied to `device`
        load_model_weights(model, state["model"], last_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        criterion.load_state_dict(state["criterion"])
        set_rng_state(state["rng"])
        start_iter, best_ap, train_seconds = state["iteration"], state["best_ap"], state.get("train_seconds", 0.0)
        skipped_steps = state.get("skipped_steps", 0)  # the run's total, as logged in train/skipped_steps
        log.info("resumed from %s at iteration %d", last_path, start_iter)
    elif cfg.train.init_from:
        skipped = load_for_finetune(model, read_on_main(Path(cfg.train.init_from), "cpu")["model"])
        log.info("initialized from %s; kept fresh: %s", cfg.train.init_from, ", ".join(skipped) or "nothing")

    def checkpoint(path: Path, iteration: int) -> None:
        if not main_process:
            return
        save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "criterion": criterion.state_dict(),
                "iteration": iteration,
                "best_ap": best_ap,
                "train_seconds": train_seconds,
                "skipped_steps": skipped_steps,
                "rng": rng_state(),
                "config": to_dict(cfg),
                "categories": categories,
            },
            path,
        )

    # DDP averages gradients over ranks; `model` stays the plain module (checkpoints, evaluation).
    ddp_model = model if world == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=cfg.model.backbone.norm == "bn",  # frozen BN and GN buffers never change: no re-send
    )
    logger = RunLogger(out_dir, enabled=main_process)
    stop = StopRequest()
    stop.install()
    accum = cfg.train.accumulate_steps
    loader = build_train_loader(cfg, train_set, start_batch=start_iter * accum, rank=rank, world_size=world)
    batches = iter(loader)
    val_loader = build_val_loader(cfg, val_set, rank, world) if val_set is not None else None
    evaluator = CocoEvaluator(val_set.coco, backend=cfg.eval.backend) if val_set is not None else None  # the final one feeds the model card
    metrics: dict[str, Any] = {}
    nonfinite_in_a_row = 0
    model.train()
    bar = tqdm(range(start_iter, cfg.train.max_iters), initial=start_iter, total=cfg.train.max_iters, dynamic_ncols=True,
               **({} if main_process else {"disable": True}))  # rank 0 keeps TQDM_DISABLE working
    window_start, window_images = time.perf_counter(), 0
    for it in bar:
        step_start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "loss_cls": 0.0, "loss_box": 0.0, "num_pos": 0.0}
        finite = True
        for micro in range(accum):
            batch = next(batches)  # drawn even after a non-finite micro-batch: resume expects it * accum batches
            if not finite:
                continue
            batch = batch.to(device, non_blocking=True)
            skip_sync = world > 1 and micro < accum - 1  # DDP all-reduces gradients after the last micro-batch only
            with autocast(device, cfg.train.amp), ddp_model.no_sync() if skip_sync else contextlib.nullcontext():
                outputs = ddp_model(batch.images)
            losses = criterion(outputs, batch.targets)
            # Global values (sums of the ranks' shares); a non-finite share on any rank skips the step on all.
            stats = distributed.all_reduce_sum(torch.stack([losses[k].detach().float() for k in totals]))
            if not torch.isfinite(stats[0]):
                finite = False
                continue
            # DDP averages gradients over ranks: scaling each share by the world size makes that the sum.
            scaler.scale(losses["loss"] * world / accum).backward()
            for k, value in zip(totals, stats.tolist()):
                totals[k] += value / accum
            window_images += len(batch) * world
        if not finite:
            nonfinite_in_a_row += 1
            skipped_steps += 1
            log.warning("iteration %d: non-finite loss, step skipped (%d in a row)", it, nonfinite_in_a_row)
            optimizer.zero_grad(set_to_none=True)
            if nonfinite_in_a_row >= cfg.train.max_nonfinite_steps:
                raise FloatingPointError(
                    f"{nonfinite_in_a_row} non-finite losses in a row at iteration {it}; the last good checkpoint "
                    f"is {last_path}. Lower train.lr, raise train.warmup_iters or set train.grad_clip"
                )
            scheduler.step()
            continue
        nonfinite_in_a_row = 0
        scaler.unscale_(optimizer)
        params = [p for p in model.parameters() if p.grad is not None]
        if cfg.train.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        train_seconds += time.perf_counter() - step_start
        done = it + 1

        if done % cfg.train.log_every == 0 or done == cfg.train.max_iters:
            elapsed = time.perf_counter() - window_start
            values = {
                **totals,
                "lr": optimizer.param_groups[0]["lr"],
                "pos_per_image": totals["num_pos"] / cfg.train.batch_size,
                "grad_norm": float(grad_norm),
                "images_per_s": window_images / max(elapsed, 1e-9),
                "skipped_steps": skipped_steps,
            }
            del values["num_pos"]
            logger.log_scalars(done, values, kind="train")
            bar.set_postfix(loss=f"{totals['loss']:.3f}", lr=f"{values['lr']:.2e}", img_s=f"{values['images_per_s']:.1f}")
            log.info(
                "iter %d/%d loss %.4f cls %.4f box %.4f lr %.2e %.1f img/s",
                done, cfg.train.max_iters, totals["loss"], totals["loss_cls"], totals["loss_box"], values["lr"],
                values["images_per_s"],
            )
            window_start, window_images = time.perf_counter(), 0

        final = done == cfg.train.max_iters
        if val_loader is not None and (final or (cfg.train.eval_every and done % cfg.train.eval_every == 0)):
            metrics = run_evaluation(cfg, model, postprocess, val_set, val_loader, device, logger, done, evaluator)
            log.info("iter %d: AP %.4f AP50 %.4f AP75 %.4f", done, metrics["AP"], metrics["AP50"], metrics["AP75"])
            if metrics["AP"] > best_ap:
                best_ap = metrics["AP"]
                checkpoint(ckpt_dir / "best.pt", done)
            model.train()
        stop_signal = distributed.all_reduce_max(stop.signal or 0, device)  # a signal to any rank stops all
        if final or stop_signal or (cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0):
            checkpoint(last_path, done)
        if stop_signal:
            log.warning("stopped at iteration %d; continue with --resume", done)
            logger.close()
            return 130 if stop_signal == signal.SIGINT else 143
    bar.close()

    hparams = {"loss.type": cfg.loss.type, "loss.gamma": cfg.loss.gamma, "loss.alpha": cfg.loss.alpha,
               "train.lr": cfg.train.lr, "train.max_iters": cfg.train.max_iters}
    final_metrics = {f"hparam/{k}": metrics[k] for k in ("AP", "AP50", "AP75") if k in metrics}
    logger.log_hparams(hparams, final_metrics)
    logger.close()
    if not main_process:  # the model card and operating point are files: rank 0 writes them
        return 0
    card = finish_training_run(out_dir, cfg, train_set, val_set, evaluator if metrics else None, metrics,
                               cfg.train.max_iters, train_seconds, device, world_size=world)
    log.info("model card: %s", card)
    log.info("done: %d iterations in %.0fs of training; run folder %s", cfg.train.max_iters, train_seconds, out_dir)
    print(f"run folder: {out_dir}  (tensorboard --logdir {out_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

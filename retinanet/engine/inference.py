"""The evaluation loop: a model over a loader, detections to COCO records, one COCO evaluation (sharded under torchrun).

Every evaluation (training's, evaluate.py's) shows a progress bar of the images done with its ETA on
rank 0 (under the training bar, which it leaves intact, and cleared when done), then says that the
COCO evaluation runs: on a large val set that step alone takes minutes. `TQDM_DISABLE=1` hides it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sized, Sequence
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from retinanet.engine import distributed
from retinanet.engine.profiling import phase
from retinanet.engine.runtime import autocast
from retinanet.evaluation.evaluator import CocoEvaluator, detections_to_coco
from retinanet.modeling.losses import DetectionLoss
from retinanet.modeling.postprocess import PostProcess
from retinanet.structures import Detections

VAL_LOSS_KEYS = ("loss", "loss_cls", "loss_box")


def progress_bar(loader: Iterable, sharded: bool) -> tqdm:
    """The evaluation's bar on rank 0, counting images; other ranks get a disabled one (rank 0 keeps TQDM_DISABLE)."""
    dataset = getattr(loader, "dataset", None)
    total = len(dataset) if isinstance(dataset, Sized) else None
    return tqdm(total=total, desc="evaluation, rank 0's shard" if sharded else "evaluation", unit="img",
                dynamic_ncols=True, leave=False, **({} if distributed.is_main_process() else {"disable": True}))


@torch.no_grad()
def predict(
    model: nn.Module,
    postprocess: PostProcess,
    loader: Iterable,
    device: torch.device,
    amp: str = "none",
) -> Iterable[tuple[Any, list[Detections]]]:
    """Yields (batch, HeadOutputs, detections in original-image pixels) for every batch of an evaluation loader."""
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            images = batch.images.to(device, non_blocking=True)
            with phase("forward"), autocast(device, amp):
                outputs = model(images)
            with phase("postprocess"):
                detections = postprocess(outputs, batch.image_sizes, [t.orig_size for t in batch.targets])
            yield batch, outputs, detections
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module,
    postprocess: PostProcess,
    loader: Iterable,
    evaluator: CocoEvaluator,
    label_to_category_id: Sequence[int],
    device: torch.device,
    amp: str = "none",
    keep_images: int = 0,
    criterion: DetectionLoss | None = None,
) -> tuple[dict[str, Any], list[dict], list[tuple[Any, Detections, Any]]]:
    """COCO metrics, the COCO result records, and up to `keep_images` (image, detections, target) for drawing.

    With a `criterion`, the metrics also hold the val loss ("loss", "loss_cls", "loss_box": the mean
    over val batches, from the same forward pass: the model returns the same outputs in both modes).

    Under torchrun `loader` holds this rank's contiguous shard of the val set: the records and image
    ids of all shards are gathered in rank order (the dataset's order), rank 0 runs the one COCO
    evaluation and sends its metrics to every rank. Rank 0 returns all records, the other ranks their
    shard's; only rank 0's `evaluator` has computed.
    """
    sharded = distributed.is_distributed()
    evaluator.reset()
    results: list[dict] = []
    image_ids: list[int] = []
    kept: list[tuple[Any, Detections, Any]] = []
    loss_sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, loss_cls, loss_box, batches
    with progress_bar(loader, sharded) as bar:
        for batch, outputs, dets in predict(model, postprocess, loader, device, amp):
            if criterion is not None:
                losses = criterion(outputs, [t.to(device) for t in batch.targets])
                one = torch.ones((), dtype=torch.float64, device=device)  # summed on the device: no host sync per batch
                loss_sums += torch.stack([losses[k].detach().double() for k in VAL_LOSS_KEYS] + [one])
            batch_records: list[dict] = []
            for i, (det, target) in enumerate(zip(dets, batch.targets)):
                det = Detections(det.boxes_xyxy.cpu(), det.scores.cpu(), det.labels.cpu())
                batch_records.extend(detections_to_coco(target.image_id, det, label_to_category_id))
                if len(kept) < keep_images:
                    h, w = batch.image_sizes[i]
                    kept.append((batch.images[i, :, :h, :w], det, target))
            batch_ids = [t.image_id for t in batch.targets]
            if not sharded:
                evaluator.update(batch_records, image_ids=batch_ids)
            results.extend(batch_records)
            image_ids.extend(batch_ids)
            bar.update(len(batch_ids))
        val_loss = {}
        if criterion is not None:
            totals = distributed.all_reduce_sum(loss_sums).tolist()  # every rank's shard
            val_loss = {k: totals[i] / max(1.0, totals[3]) for i, k in enumerate(VAL_LOSS_KEYS)}
        if not sharded:
            _coco_status(bar, len(results))
            return {**evaluator.compute(), **val_loss}, results, kept
        shards = distributed.gather_object((results, image_ids))  # None except on rank 0
        metrics = None
        if shards is not None:
            results = [record for shard_records, _ in shards for record in shard_records]
            _coco_status(bar, len(results))
            evaluator.update(results, image_ids=[i for _, shard_ids in shards for i in shard_ids])
            metrics = evaluator.compute()
    return {**distributed.broadcast_object(metrics), **val_loss}, results, kept


def _coco_status(bar: tqdm, num_records: int) -> None:
    """The bar's last words while pycocotools runs, which reports no progress of its own."""
    bar.set_postfix_str(f"COCO evaluation of {num_records} detections, no progress shown (minutes on a large set)")

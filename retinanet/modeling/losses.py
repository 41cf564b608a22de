"""Focal loss and the batched RetinaNet detection loss.

Normalization: both losses are summed over the whole batch and divided by the number of
positive anchors in the whole batch (at least 1), as the paper describes. torchvision
divides per image and then averages over images; the two agree at batch size 1. With
`normalizer_momentum > 0` the divisor is an EMA of that count (detectron2).

Distributed training: with `sum_across_ranks` (train.py passes the process group's all-reduce)
the divisor is the number of positives in the global batch, so every rank returns its share of
the global loss (the shares sum to the single-process loss) and the EMA sees the same count on
every rank.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import generalized_box_iou_loss, nms

from retinanet.modeling.box_coder import BoxCoder
from retinanet.modeling.matcher import IGNORE, Matcher
from retinanet.structures import HeadOutputs, Target

IGNORE_LABEL = -1


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float | Tensor = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    neg_alpha: float | None = None,
) -> Tensor:
    """Focal loss of Lin et al. 2017, with exactly torchvision.ops.sigmoid_focal_loss's semantics.

    alpha < 0 turns alpha weighting off; reduction is "none", "mean" or "sum". Computed from
    logits in float32 whatever the input dtype, so fp16/bf16 autocast cannot underflow log(p).
    A tensor `alpha` (broadcast against logits: per class (K,) or per entry) weighs the positive
    term entry by entry, and the negative term weighs `neg_alpha` (default 1 - alpha): class-balanced alpha.
    """
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"Invalid value for arg 'reduction': '{reduction}'; supported: 'none', 'mean', 'sum'")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.float()
        targets = targets.float()
        p = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = ce * ((1 - p_t) ** gamma)
        if isinstance(alpha, Tensor):
            alpha = alpha.to(loss)
            negative = 1 - alpha if neg_alpha is None else neg_alpha
            loss = (alpha * targets + negative * (1 - targets)) * loss
        elif alpha >= 0:
            alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
            loss = alpha_t * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def class_balanced_alpha(class_counts: Sequence[int], beta: float, mean_alpha: float) -> list[float]:
    """Per-class alpha from the effective number of samples (Cui et al. 2019).

    Class c with n_c training boxes weighs w_c = (1 - beta) / (1 - beta ** n_c) = 1 / E(n_c); the
    weights of the classes that have boxes are scaled so that their mean is `mean_alpha` (Cui et al.
    scale them to mean 1; the scale here keeps the positives' mean weight where a constant alpha
    puts it, so the negatives' 1 - mean_alpha is unchanged). A class without boxes has no positive
    to weigh and gets `mean_alpha`.
    """
    present = [n for n in class_counts if n > 0]
    if not present:
        return [mean_alpha] * len(class_counts)
    weight = {n: (1.0 - beta) / (1.0 - beta**n) for n in set(present)}
    mean = math.fsum(weight[n] for n in present) / len(present)
    return [mean_alpha * weight[n] / mean if n > 0 else mean_alpha for n in class_counts]


class _FocalLossSum(torch.autograd.Function):
    """Forward and backward of `focal_loss_sum`, in a few full-size passes instead of autograd's ~35.

    Every valid (anchor, class) entry is a negative (target 0) except the P positives: the dense
    part is (1 - alpha) * p**gamma * softplus(x) with the closed-form gradient
    (1 - alpha) * p**gamma * (gamma * (1 - p) * softplus(x) + p); the positives go through
    `sigmoid_focal_loss` (and autograd) on their P gathered logits, weighted by `pos_alpha` (P,)
    instead of alpha when it is given.
    """

    @staticmethod
    def forward(
        ctx, logits: Tensor, valid: Tensor, pos_index: Tensor, pos_target: Tensor, pos_alpha: Tensor | None,
        alpha: float, gamma: float,
    ) -> Tensor:
        ctx.save_for_backward(logits, valid, pos_index, pos_target, pos_alpha)
        ctx.alpha, ctx.gamma = alpha, gamma
        loss = F.softplus(logits)  # the cross-entropy of target 0 (exact to fp32 precision past its threshold 20)
        if gamma != 0:
            loss.mul_(torch.sigmoid(logits).pow_(gamma))
        loss.view(-1).index_fill_(0, pos_index, 0.0)
        dense = (loss.sum(dim=-1) * valid).sum() * (1.0 - alpha if alpha >= 0 else 1.0)
        positives = _positive_sum(logits.reshape(-1)[pos_index], pos_target, pos_alpha, alpha, gamma)
        return dense + positives

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        logits, valid, pos_index, pos_target, pos_alpha = ctx.saved_tensors
        alpha, gamma = ctx.alpha, ctx.gamma
        p = torch.sigmoid(logits)
        if gamma != 0:
            grad = F.softplus(logits)
            grad.mul_(1 - p).mul_(gamma).add_(p).mul_(p.pow_(gamma))
        else:
            grad = p
        grad.mul_(valid.unsqueeze(-1) * (grad_output * (1.0 - alpha if alpha >= 0 else 1.0)))
        with torch.enable_grad():
            x = logits.reshape(-1)[pos_index].detach().requires_grad_()
            (pos_grad,) = torch.autograd.grad(_positive_sum(x, pos_target, pos_alpha, alpha, gamma), x)
        grad.view(-1).index_copy_(0, pos_index, pos_grad * grad_output)
        return grad, None, None, None, None, None, None


def _positive_sum(x: Tensor, target: Tensor, pos_alpha: Tensor | None, alpha: float, gamma: float) -> Tensor:
    """Summed focal loss of the positive entries: weight alpha, or pos_alpha with negatives' 1 - alpha."""
    if pos_alpha is None:
        return sigmoid_focal_loss(x, target, alpha, gamma, reduction="sum")
    return sigmoid_focal_loss(x, target, pos_alpha, gamma, reduction="sum", neg_alpha=1.0 - alpha)


def focal_loss_sum(
    logits: Tensor,
    valid: Tensor,
    pos_index: Tensor,
    pos_target: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    pos_alpha: Tensor | None = None,
) -> Tensor:
    """sigmoid_focal_loss(logits[valid], one-hot targets, reduction="sum") without building the targets.

    logits (N, R, K); valid (N, R) anchors that count; pos_index (P,) distinct flat indices into
    logits of the positive (anchor, class) entries, whose targets are pos_target (P,) (1, or
    1 - eps with label smoothing); every other valid entry has target 0. float32, like
    `sigmoid_focal_loss`. `pos_alpha` (P,) weighs each positive entry instead of alpha (per-class
    alpha); the negatives keep 1 - alpha.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return _FocalLossSum.apply(
            logits.float().contiguous(), valid.float(), pos_index, pos_target.float(),
            None if pos_alpha is None else pos_alpha.float(), float(alpha), float(gamma),
        )


class DetectionLoss:
    """(HeadOutputs, targets) -> {"loss", "loss_cls", "loss_box", "num_pos"}.

    Matching runs per image (IoU matrices differ in size); label assignment and both losses
    are tensors over the whole batch. Per-anchor labels: 0..K-1 foreground, K background,
    -1 ignored (detectron2's convention). `alpha` is one number or one per class (the positive
    term of class c weighs alpha[c], every negative term 1 - mean(alpha)).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: Matcher,
        box_coder: BoxCoder,
        gamma: float = 2.0,
        alpha: float | Sequence[float] = 0.25,
        box_loss: str = "smooth_l1",
        smooth_l1_beta: float = 0.1,
        box_weight: float = 1.0,
        normalizer_momentum: float = 0.0,
        cls_loss: str = "focal",
        label_smoothing: float = 0.0,
        ohem_batch_size: int = 256,
        ohem_neg_pos_ratio: float = 3.0,
        ohem_nms: float = 0.0,
        sum_across_ranks: Callable[[Tensor], Tensor] | None = None,
    ):
        if box_loss not in ("smooth_l1", "l1", "giou"):
            raise ValueError(f"box_loss must be smooth_l1, l1 or giou, got {box_loss!r}")
        if cls_loss not in ("focal", "bce", "ohem"):
            raise ValueError(f"cls_loss must be focal, bce or ohem, got {cls_loss!r}")
        self.cls_loss = cls_loss
        self.label_smoothing = label_smoothing
        self.ohem_batch_size = ohem_batch_size
        self.ohem_neg_pos_ratio = ohem_neg_pos_ratio
        self.ohem_nms = ohem_nms
        self.num_classes = num_classes
        self.matcher = matcher
        self.box_coder = box_coder
        self.gamma = gamma
        # Per-class alpha: positives of class c weigh class_alpha[c], every negative 1 - their mean.
        if isinstance(alpha, (int, float)):
            self.alpha, self.class_alpha = float(alpha), None
        else:
            if len(alpha) != num_classes:
                raise ValueError(f"{len(alpha)} per-class alphas for {num_classes} classes")
            self.class_alpha = torch.tensor(list(alpha), dtype=torch.float32)  # (K,)
            self.alpha = math.fsum(alpha) / num_classes
        self.box_loss = box_loss
        self.smooth_l1_beta = smooth_l1_beta
        self.box_weight = box_weight
        self.normalizer_momentum = normalizer_momentum
        self.ema_normalizer = 100.0  # detectron2's starting value
        self.sum_across_ranks = sum_across_ranks

    def state_dict(self) -> dict:
        return {"ema_normalizer": self.ema_normalizer}

    def load_state_dict(self, state: dict) -> None:
        self.ema_normalizer = float(state["ema_normalizer"])

    def assign(self, anchors: Tensor, targets: Sequence[Target]) -> tuple[Tensor, Tensor]:
        """Per-anchor labels (N, R) and matched boxes_xyxy (N, R, 4), matched for the whole batch at once.

        In float32 whatever the caller's autocast: IoU against bf16 boxes would move anchors across
        the fg/bg thresholds."""
        anchors = anchors.float()
        boxes = pad_sequence([t.boxes_xyxy.float() for t in targets], batch_first=True)  # (N, M, 4)
        labels = pad_sequence([t.labels for t in targets], batch_first=True)  # (N, M)
        iscrowd = pad_sequence([t.iscrowd for t in targets], batch_first=True)  # (N, M)
        valid = pad_sequence([torch.ones(t.labels.shape[0], dtype=torch.bool, device=anchors.device) for t in targets],
                             batch_first=True)  # (N, M): built on the device, no copy of Python counts
        idx = self.matcher.match_batch(boxes, valid, iscrowd, anchors)  # (N, R)
        if labels.shape[1] == 0:  # no boxes in the whole batch: everything is background
            return torch.full_like(idx, self.num_classes), anchors.new_zeros((*idx.shape, 4))
        safe = idx.clamp(min=0)
        assigned = torch.where(idx >= 0, labels.gather(1, safe), self.num_classes)  # (N, R)
        assigned = torch.where(idx == IGNORE, IGNORE_LABEL, assigned)
        matched = boxes.gather(1, safe[..., None].expand(-1, -1, 4))  # (N, R, 4)
        return assigned, matched

    def __call__(self, outputs: HeadOutputs, targets: Sequence[Target]) -> dict[str, Tensor]:
        anchors = outputs.anchors
        with torch.no_grad(), torch.autocast(device_type=anchors.device.type, enabled=False):
            labels, matched_boxes = self.assign(anchors, targets)  # (N, R), (N, R, 4)
        valid = labels != IGNORE_LABEL
        pos = valid & (labels != self.num_classes)
        num_pos = pos.sum()
        normalizer = self._normalizer(num_pos if self.sum_across_ranks is None else self.sum_across_ranks(num_pos))
        # The positives' flat indices into N * R, found once: each boolean-mask index would be a host sync.
        pos_anchor = torch.nonzero(pos.reshape(-1)).squeeze(1)  # (P,)

        with torch.autocast(device_type=anchors.device.type, enabled=False):
            loss_cls = self.classification_loss(outputs, labels, valid, pos, pos_anchor) / normalizer

            deltas = outputs.box_deltas.reshape(-1, 4)[pos_anchor].float()  # (P, 4)
            pos_anchors = anchors.float()[pos_anchor % anchors.shape[0]]  # (P, 4)
            gt = matched_boxes.reshape(-1, 4)[pos_anchor].float()
            if self.box_loss == "giou":
                loss_box = generalized_box_iou_loss(self.box_coder.decode(deltas, pos_anchors), gt, reduction="sum")
            else:
                target = self.box_coder.encode(gt, pos_anchors)
                beta = 0.0 if self.box_loss == "l1" else self.smooth_l1_beta
                loss_box = F.smooth_l1_loss(deltas, target, beta=beta, reduction="sum") if beta > 0 else F.l1_loss(
                    deltas, target, reduction="sum"
                )
            loss_box = self.box_weight * loss_box / normalizer
        return {"loss": loss_cls + loss_box, "loss_cls": loss_cls, "loss_box": loss_box, "num_pos": num_pos}

    def classification_loss(
        self, outputs: HeadOutputs, labels: Tensor, valid: Tensor, pos: Tensor, pos_anchor: Tensor
    ) -> Tensor:
        """Summed classification loss; only this part differs between loss types. `pos_anchor` (P,): pos's flat indices.

        focal: sigmoid focal loss over all non-ignored anchors. bce: the same with gamma 0
        (alpha-balanced cross-entropy, the paper's baseline). ohem: gamma-0 loss over the hardest
        anchors of each image only (see `ohem_select`).
        """
        gamma = self.gamma if self.cls_loss == "focal" else 0.0
        if self.cls_loss != "ohem":
            pos_index = pos_anchor * self.num_classes + labels.reshape(-1)[pos_anchor]  # (P,) into N * R * K
            pos_target = torch.full(pos_index.shape, 1.0 - self.label_smoothing, device=pos_index.device)
            pos_alpha = None
            if self.class_alpha is not None:
                pos_alpha = self.class_alpha.to(pos_index.device)[pos_index % self.num_classes]  # (P,)
            return focal_loss_sum(outputs.cls_logits, valid, pos_index, pos_target, self.alpha, gamma, pos_alpha)
        logits = outputs.cls_logits[valid].float()  # (V, K)
        targets = F.one_hot(labels[valid], self.num_classes + 1)[:, : self.num_classes].to(logits.dtype)  # (V, K)
        if self.label_smoothing > 0:
            targets = targets * (1.0 - self.label_smoothing)  # positives only: 1 -> 1 - eps
        per_anchor = logits.new_zeros(labels.shape)  # (N, R)
        if self.class_alpha is None:
            per_entry = sigmoid_focal_loss(logits, targets, self.alpha, 0.0)
        else:
            per_entry = sigmoid_focal_loss(
                logits, targets, self.class_alpha.to(logits.device), 0.0, neg_alpha=1.0 - self.alpha
            )
        per_anchor[valid] = per_entry.sum(dim=1)
        selected = self.ohem_select(per_anchor.detach(), valid, pos, outputs)
        return per_anchor[selected].sum()

    def ohem_select(self, loss: Tensor, valid: Tensor, pos: Tensor, outputs: HeadOutputs) -> Tensor:
        """(N, R) mask of the anchors OHEM trains on: per image, the highest-loss examples.

        With `ohem_neg_pos_ratio` r > 0: every positive (up to the budget) plus the r * max(P, 1)
        hardest negatives, within `ohem_batch_size` per image. With r = 0: the `ohem_batch_size`
        hardest examples regardless of label. `ohem_nms` > 0 first suppresses examples whose
        predicted boxes overlap a harder one (the paper's Table 1d uses 0.7).
        """
        score = loss.masked_fill(~valid, float("-inf"))  # (N, R)
        if self.ohem_nms > 0:
            boxes = self.box_coder.decode(outputs.box_deltas.detach().float(), outputs.anchors.float()[None])
            keep = torch.zeros_like(valid)
            for i in range(score.shape[0]):
                cand = torch.nonzero(valid[i]).squeeze(1)
                kept = nms(boxes[i, cand], score[i, cand], self.ohem_nms)
                keep[i, cand[kept]] = True
            score = score.masked_fill(~keep, float("-inf"))
        budget = self.ohem_batch_size
        if self.ohem_neg_pos_ratio <= 0:
            return (_rank(score) < budget) & torch.isfinite(score)
        neg = valid & ~pos
        num_pos = (pos & torch.isfinite(score)).sum(dim=1, keepdim=True)  # (N, 1)
        pos_quota = num_pos.clamp(max=budget)
        neg_quota = (self.ohem_neg_pos_ratio * num_pos.clamp(min=1)).floor().long().clamp(max=budget - pos_quota)
        pos_score = score.masked_fill(~pos, float("-inf"))
        neg_score = score.masked_fill(~neg, float("-inf"))
        take_pos = (_rank(pos_score) < pos_quota) & torch.isfinite(pos_score)
        take_neg = (_rank(neg_score) < neg_quota) & torch.isfinite(neg_score)
        return take_pos | take_neg

    def _normalizer(self, num_pos: Tensor) -> float | Tensor:
        count = num_pos.clamp(min=1).float()
        if self.normalizer_momentum <= 0:
            return count
        m = self.normalizer_momentum
        self.ema_normalizer = m * self.ema_normalizer + (1 - m) * float(count)
        return self.ema_normalizer


def _rank(score: Tensor) -> Tensor:
    """(N, R) -> position of every entry in its row sorted by decreasing score (0 = highest)."""
    order = score.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    return rank

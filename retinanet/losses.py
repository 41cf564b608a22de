"""Focal loss and the batched RetinaNet detection loss.

Normalization: both losses are summed over the whole batch and divided by the number of
positive anchors in the whole batch (at least 1), as the paper describes. torchvision
divides per image and then averages over images; the two agree at batch size 1. With
`normalizer_momentum > 0` the divisor is an EMA of that count (detectron2).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from .box_coder import BoxCoder
from .matcher import Matcher
from .types import HeadOutputs, Target

IGNORE_LABEL = -1


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> Tensor:
    """Focal loss of Lin et al. 2017, with exactly torchvision.ops.sigmoid_focal_loss's semantics.

    alpha < 0 turns alpha weighting off; reduction is "none", "mean" or "sum". Computed from
    logits in float32 whatever the input dtype, so fp16/bf16 autocast cannot underflow log(p).
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
        if alpha >= 0:
            alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
            loss = alpha_t * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class DetectionLoss:
    """(HeadOutputs, targets) -> {"loss", "loss_cls", "loss_box", "num_pos"}.

    Matching runs per image (IoU matrices differ in size); label assignment and both losses
    are tensors over the whole batch. Per-anchor labels: 0..K-1 foreground, K background,
    -1 ignored (detectron2's convention).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: Matcher,
        box_coder: BoxCoder,
        gamma: float = 2.0,
        alpha: float = 0.25,
        box_loss: str = "smooth_l1",
        smooth_l1_beta: float = 0.1,
        box_weight: float = 1.0,
        normalizer_momentum: float = 0.0,
    ):
        if box_loss not in ("smooth_l1", "l1", "giou"):
            raise ValueError(f"box_loss must be smooth_l1, l1 or giou, got {box_loss!r}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.box_coder = box_coder
        self.gamma = gamma
        self.alpha = alpha
        self.box_loss = box_loss
        self.smooth_l1_beta = smooth_l1_beta
        self.box_weight = box_weight
        self.normalizer_momentum = normalizer_momentum
        self.ema_normalizer = 100.0  # detectron2's starting value

    def state_dict(self) -> dict:
        return {"ema_normalizer": self.ema_normalizer}

    def load_state_dict(self, state: dict) -> None:
        self.ema_normalizer = float(state["ema_normalizer"])

    def assign(self, anchors: Tensor, targets: Sequence[Target]) -> tuple[Tensor, Tensor]:
        """Per-anchor labels (N, R) and matched boxes_xyxy (N, R, 4)."""
        labels, boxes = [], []
        for t in targets:
            idx = self.matcher(t.boxes_xyxy, anchors, t.iscrowd)  # (R,)
            fg = idx >= 0
            safe = idx.clamp(min=0)
            if t.labels.numel():
                lab = torch.where(fg, t.labels[safe], torch.full_like(idx, self.num_classes))
                matched = t.boxes_xyxy[safe]
            else:
                lab = torch.full_like(idx, self.num_classes)
                matched = torch.zeros_like(anchors)
            lab = torch.where(idx == -2, torch.full_like(lab, IGNORE_LABEL), lab)
            labels.append(lab)
            boxes.append(matched)
        return torch.stack(labels), torch.stack(boxes)

    def __call__(self, outputs: HeadOutputs, targets: Sequence[Target]) -> dict[str, Tensor]:
        anchors = outputs.anchors
        with torch.no_grad():
            labels, matched_boxes = self.assign(anchors, targets)  # (N, R), (N, R, 4)
        valid = labels != IGNORE_LABEL
        pos = valid & (labels != self.num_classes)
        num_pos = pos.sum()
        normalizer = self._normalizer(num_pos)

        with torch.autocast(device_type=anchors.device.type, enabled=False):
            logits = outputs.cls_logits[valid].float()  # (V, K)
            onehot = F.one_hot(labels[valid], self.num_classes + 1)[:, : self.num_classes].to(logits.dtype)
            loss_cls = sigmoid_focal_loss(logits, onehot, self.alpha, self.gamma, reduction="sum") / normalizer

            deltas = outputs.box_deltas[pos].float()  # (P, 4)
            pos_anchors = anchors.float()[None].expand_as(matched_boxes)[pos]  # (P, 4)
            gt = matched_boxes[pos].float()
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

    def _normalizer(self, num_pos: Tensor) -> float | Tensor:
        count = num_pos.clamp(min=1).float()
        if self.normalizer_momentum <= 0:
            return count
        m = self.normalizer_momentum
        self.ema_normalizer = m * self.ema_normalizer + (1 - m) * float(count)
        return self.ema_normalizer

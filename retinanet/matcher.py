"""Anchor <-> ground-truth assignment by IoU.

The result for every anchor is the index of its ground-truth box (foreground), or
BACKGROUND, or IGNORE (the band between the two thresholds, and crowd regions).

Crowd boxes never become positives. An anchor whose best non-crowd IoU leaves it in the
background, but which lies mostly inside a crowd box (intersection over the anchor's own
area >= `crowd_ioa`), is ignored rather than called background: the crowd region holds
objects that are simply not annotated one by one.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_area, box_iou

BACKGROUND = -1
IGNORE = -2


class Matcher:
    def __init__(self, fg_iou: float = 0.5, bg_iou: float = 0.4, allow_low_quality: bool = True, crowd_ioa: float = 0.5):
        if not bg_iou <= fg_iou:
            raise ValueError(f"bg_iou ({bg_iou}) must be <= fg_iou ({fg_iou})")
        self.fg_iou = fg_iou
        self.bg_iou = bg_iou
        self.allow_low_quality = allow_low_quality
        self.crowd_ioa = crowd_ioa

    def match_iou(self, iou: Tensor) -> Tensor:
        """(M, R) IoU of M boxes with R anchors -> (R,) matched box index, BACKGROUND or IGNORE.

        Low-quality matches (torchvision, detectron2): every box keeps the anchors with which it
        has its highest IoU, even below fg_iou, so small boxes get at least one positive. Those
        anchors take their own best box. Unlike torchvision, a box whose best IoU is 0 adds nothing.
        """
        num_anchors = iou.shape[1]
        if iou.shape[0] == 0:
            return torch.full((num_anchors,), BACKGROUND, dtype=torch.int64, device=iou.device)
        best_iou, matches = iou.max(dim=0)  # (R,)
        result = matches.clone()
        result[best_iou < self.fg_iou] = IGNORE
        result[best_iou < self.bg_iou] = BACKGROUND
        if self.allow_low_quality:
            best_per_box = iou.max(dim=1, keepdim=True).values  # (M, 1)
            is_best = (iou == best_per_box) & (best_per_box > 0)  # (M, R)
            low_quality = is_best.any(dim=0)  # (R,)
            result[low_quality] = matches[low_quality]
        return result

    def __call__(self, boxes_xyxy: Tensor, anchors_xyxy: Tensor, iscrowd: Tensor | None = None) -> Tensor:
        """(M, 4) boxes, (R, 4) anchors, (M,) crowd flags -> (R,) indices into the M boxes."""
        if iscrowd is None or not bool(iscrowd.any()):
            return self.match_iou(box_iou(boxes_xyxy, anchors_xyxy))
        keep = torch.nonzero(~iscrowd).squeeze(1)
        result = self.match_iou(box_iou(boxes_xyxy[keep], anchors_xyxy))
        if keep.numel():
            result = torch.where(result >= 0, keep[result.clamp(min=0)], result)
        crowd = boxes_xyxy[iscrowd]
        lt = torch.max(anchors_xyxy[:, None, :2], crowd[None, :, :2])
        rb = torch.min(anchors_xyxy[:, None, 2:], crowd[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=2)  # (R, C)
        ioa = inter / box_area(anchors_xyxy).clamp(min=1e-6)[:, None]
        in_crowd = ioa.max(dim=1).values >= self.crowd_ioa
        return torch.where((result == BACKGROUND) & in_crowd, torch.full_like(result, IGNORE), result)

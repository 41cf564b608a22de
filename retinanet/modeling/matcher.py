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
from torchvision.ops import box_area

BACKGROUND = -1
IGNORE = -2
# Elements of the (images, boxes, anchors) IoU block matched at once (256 MB of float32).
_MAX_ELEMENTS = 1 << 26


class Matcher:
    def __init__(self, fg_iou: float, bg_iou: float, allow_low_quality: bool, crowd_ioa: float = 0.5):
        if not bg_iou <= fg_iou:
            raise ValueError(f"bg_iou ({bg_iou}) must be <= fg_iou ({fg_iou})")
        self.fg_iou = fg_iou
        self.bg_iou = bg_iou
        self.allow_low_quality = allow_low_quality
        self.crowd_ioa = crowd_ioa

    def match_iou(self, iou: Tensor, real: Tensor | None = None) -> Tensor:
        """(..., M, R) IoU of M boxes with R anchors -> (..., R) matched box index, BACKGROUND or IGNORE.

        `real` (..., M) marks the boxes that count (not padding, not crowd); the others never match.
        Low-quality matches (torchvision, detectron2): every box keeps the anchors with which it
        has its highest IoU, even below fg_iou, so small boxes get at least one positive. Those
        anchors take their own best box. Unlike torchvision, a box whose best IoU is 0 adds nothing.
        """
        if real is not None:
            iou = iou.masked_fill(~real[..., None], -1.0)
        if iou.shape[-2] == 0:
            return torch.full((*iou.shape[:-2], iou.shape[-1]), BACKGROUND, dtype=torch.int64, device=iou.device)
        # torch.where throughout: a boolean-mask assignment waits for the GPU (nonzero) every time.
        best_iou, matches = iou.max(dim=-2)  # (..., R); ties go to the first box
        result = torch.where(best_iou < self.fg_iou, IGNORE, matches)
        result = torch.where(best_iou < self.bg_iou, BACKGROUND, result)  # also images with no real box (IoU -1)
        if self.allow_low_quality:
            best_per_box = iou.max(dim=-1, keepdim=True).values  # (..., M, 1)
            is_best = (iou == best_per_box) & (best_per_box > 0)  # (..., M, R)
            low_quality = is_best.any(dim=-2)  # (..., R)
            result = torch.where(low_quality, matches, result)
        return result

    def match_batch(self, boxes_xyxy: Tensor, valid: Tensor, iscrowd: Tensor, anchors_xyxy: Tensor) -> Tensor:
        """(N, M, 4) boxes padded to a common M, (N, M) valid and crowd flags, (R, 4) anchors -> (N, R).

        One set of tensor ops for the whole batch (no per-image loop); the values are those of
        `__call__` image by image. Large batches go through in chunks of images to bound the
        (n, M, R) intermediates.
        """
        n, m = valid.shape
        chunk = max(1, _MAX_ELEMENTS // max(1, m * anchors_xyxy.shape[0]))
        if n > chunk:
            return torch.cat([
                self.match_batch(boxes_xyxy[i : i + chunk], valid[i : i + chunk], iscrowd[i : i + chunk], anchors_xyxy)
                for i in range(0, n, chunk)
            ])
        anchors = anchors_xyxy[None, None]  # (1, 1, R, 4)
        boxes = boxes_xyxy[:, :, None]  # (N, M, 1, 4)
        inter = (torch.min(boxes[..., 2], anchors[..., 2]) - torch.max(boxes[..., 0], anchors[..., 0])).clamp_(min=0)
        inter *= (torch.min(boxes[..., 3], anchors[..., 3]) - torch.max(boxes[..., 1], anchors[..., 1])).clamp_(min=0)
        anchor_area = box_area(anchors_xyxy)  # (R,)
        box_areas = box_area(boxes_xyxy.reshape(-1, 4)).reshape(n, m, 1)  # (N, M, 1)
        iou = inter / (box_areas + anchor_area - inter)  # (N, M, R), box_iou's formula
        crowd = valid & iscrowd
        result = self.match_iou(iou, valid & ~iscrowd)
        if m == 0:
            return result
        # Computed for every batch (without crowd boxes in_crowd is all False): asking whether the batch
        # has any would make the CPU wait for the GPU once per step.
        ioa = (inter / anchor_area.clamp(min=1e-6)).masked_fill_(~crowd[..., None], 0.0)  # (N, M, R)
        in_crowd = ioa.max(dim=1).values >= self.crowd_ioa  # (N, R)
        return torch.where((result == BACKGROUND) & in_crowd, torch.full_like(result, IGNORE), result)

    def __call__(self, boxes_xyxy: Tensor, anchors_xyxy: Tensor, iscrowd: Tensor | None = None) -> Tensor:
        """(M, 4) boxes, (R, 4) anchors, (M,) crowd flags -> (R,) indices into the M boxes."""
        if iscrowd is None:
            iscrowd = torch.zeros(boxes_xyxy.shape[0], dtype=torch.bool, device=boxes_xyxy.device)
        valid = torch.ones_like(iscrowd)
        return self.match_batch(boxes_xyxy[None], valid[None], iscrowd[None], anchors_xyxy)[0]

"""Head outputs -> detections in original-image pixels.

Per level: score threshold, then the top-k candidates. Then decode, clip, class-wise NMS
and the per-image cap. The steps run batched over images; NMS runs once for the whole
batch with (image, class) as the group key. Each boolean-mask index waits for the GPU (its output
size is data), so each selection is one `nonzero` whose indices pick from every tensor at once.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from retinanet.modeling.box_coder import BoxCoder
from retinanet.structures import Detections, HeadOutputs


class PostProcess:
    def __init__(
        self,
        box_coder: BoxCoder,
        score_thresh: float,
        topk_candidates: int,
        nms_thresh: float,
        detections_per_img: int,
    ):
        self.box_coder = box_coder
        self.score_thresh = score_thresh
        self.topk_candidates = topk_candidates
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    @torch.no_grad()
    def __call__(
        self,
        outputs: HeadOutputs,
        image_sizes: Sequence[tuple[int, int]],
        orig_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[Detections]:
        """image_sizes: (H, W) of each resized, unpadded input; orig_sizes: (H, W) to rescale boxes to."""
        n, _, k = outputs.cls_logits.shape
        device = outputs.cls_logits.device
        boxes_all, scores_all, labels_all, images_all = [], [], [], []
        start = 0
        for count in outputs.num_anchors_per_level:
            logits = outputs.cls_logits[:, start : start + count].float()  # (N, L, K)
            deltas = outputs.box_deltas[:, start : start + count]  # (N, L, 4)
            anchors = outputs.anchors[start : start + count]  # (L, 4)
            start += count
            scores = torch.sigmoid(logits).reshape(n, -1)  # (N, L*K)
            scores = torch.nan_to_num(scores, nan=-1.0)
            top_scores, top_idx = scores.topk(min(self.topk_candidates, scores.shape[1]), dim=1)  # (N, T)
            image_idx, rank = torch.nonzero(top_scores > self.score_thresh).unbind(1)  # (C,), (C,) row-major
            flat_idx = top_idx[image_idx, rank]
            anchor_idx = torch.div(flat_idx, k, rounding_mode="floor")
            boxes = self.box_coder.decode(deltas[image_idx, anchor_idx].float(), anchors[anchor_idx].float())
            boxes_all.append(boxes)
            scores_all.append(top_scores[image_idx, rank])
            labels_all.append(flat_idx % k)
            images_all.append(image_idx)

        boxes = torch.cat(boxes_all)
        scores = torch.cat(scores_all)
        labels = torch.cat(labels_all)
        images = torch.cat(images_all)
        sizes = torch.as_tensor(image_sizes, dtype=torch.float32, device=device)  # (N, 2)
        if boxes.numel():
            upper = sizes[images].flip(1).repeat(1, 2)  # (C, 4): W, H, W, H
            boxes = torch.minimum(boxes.clamp(min=0), upper)
        finite = torch.nonzero(torch.isfinite(boxes).all(dim=1)).squeeze(1)
        boxes, scores, labels, images = boxes[finite], scores[finite], labels[finite], images[finite]
        keep = batched_nms(boxes, scores, images * k + labels, self.nms_thresh)  # sorted by score
        # Grouped by image, score order kept within each (a stable sort): one read-back of the counts.
        kept_images = images[keep]
        by_image = keep[torch.sort(kept_images, stable=True).indices].split(
            torch.bincount(kept_images, minlength=n).tolist()
        )

        results = []
        for i in range(n):
            sel = by_image[i][: self.detections_per_img]
            b = boxes[sel]
            if orig_sizes is not None:
                b = rescale_boxes(b, image_sizes[i], orig_sizes[i])
            results.append(Detections(boxes_xyxy=b, scores=scores[sel], labels=labels[sel]))
        return results


def rescale_boxes(boxes_xyxy: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Scale (D, 4) boxes from one image size (H, W) to another, then clip to it.

    The ratios are float32 divisions on the host (no tensor built on the device per image); a float32
    ratio times a float32 coordinate rounds as the same product of two float32 tensors does.
    """
    ratio_h = float(np.float32(to_size[0]) / np.float32(from_size[0]))
    ratio_w = float(np.float32(to_size[1]) / np.float32(from_size[1]))
    scaled = boxes_xyxy.clone()
    scaled[:, 0::2] *= ratio_w
    scaled[:, 1::2] *= ratio_h
    return clip_boxes_to_image(scaled, to_size)

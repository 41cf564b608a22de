"""Draw boxes on images for TensorBoard and scripts/predict.py (PIL only, returns new arrays)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Color = tuple[int, int, int]
RED: Color = (230, 25, 25)
GREEN: Color = (20, 200, 60)


def _as_boxes(boxes_xyxy: Any) -> np.ndarray:
    """Tensor, array or nested list -> (M, 4) float array."""
    if hasattr(boxes_xyxy, "detach"):
        boxes_xyxy = boxes_xyxy.detach().cpu().numpy()
    return np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)


def _as_floats(values: Any) -> list[float]:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def _to_pil(image_uint8_hwc: np.ndarray) -> Image.Image:
    image = np.asarray(image_uint8_hwc)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HWC image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(image[:, :, :3]))


def _draw(
    draw: ImageDraw.ImageDraw,
    boxes_xyxy: np.ndarray,
    labels: Sequence[str],
    scores: Sequence[float] | None,
    color: Color,
    width: int,
) -> None:
    font = ImageFont.load_default()
    for index, (x1, y1, x2, y2) in enumerate(boxes_xyxy.tolist()):
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=color, width=width)
        text = labels[index] if index < len(labels) else ""
        if scores is not None:
            text = f"{text} {scores[index]:.2f}".strip()
        if not text:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top + 2
        # Label above the box when there is room, otherwise just inside its top edge.
        text_y = y1 - text_h if y1 - text_h >= 0 else y1
        draw.rectangle([x1, text_y, x1 + text_w + 2, text_y + text_h], fill=color)
        draw.text((x1 + 1, text_y - top), text, fill=(255, 255, 255), font=font)


def enlarge(image_uint8_hwc: np.ndarray, min_side: int) -> tuple[np.ndarray, int]:
    """Repeat every pixel k x k (nearest neighbour, the smallest k making the long side >= min_side) for legible drawings.

    Returns the image and k; multiply boxes by k. The pixels stay those of the input.
    """
    factor = max(1, -(-min_side // max(image_uint8_hwc.shape[:2])))
    if factor == 1:
        return image_uint8_hwc, 1
    return np.repeat(np.repeat(image_uint8_hwc, factor, axis=0), factor, axis=1), factor


def draw_detections(
    image_uint8_hwc: np.ndarray,
    boxes_xyxy: Any,
    labels: Sequence[str],
    scores: Sequence[float] | None = None,
    color: Color = RED,
    width: int = 2,
    min_score: float = 0.0,
) -> np.ndarray:
    """Boxes with "name 0.87" captions on a copy of the image; boxes below `min_score` are left out."""
    boxes = _as_boxes(boxes_xyxy)
    score_list = None if scores is None else _as_floats(scores)
    labels = list(labels)
    if score_list is not None:
        keep = [i for i, s in enumerate(score_list) if s >= min_score]
        boxes = boxes[keep]
        labels = [labels[i] for i in keep if i < len(labels)]
        score_list = [score_list[i] for i in keep]
    pil = _to_pil(image_uint8_hwc)
    _draw(ImageDraw.Draw(pil), boxes, labels, score_list, color, width)
    return np.asarray(pil)


def draw_comparison(
    image_uint8_hwc: np.ndarray,
    pred_boxes_xyxy: Any,
    pred_labels: Sequence[str],
    pred_scores: Sequence[float] | None,
    gt_boxes_xyxy: Any,
    gt_labels: Sequence[str],
    width: int = 2,
    min_score: float = 0.0,
) -> np.ndarray:
    """Ground truth in green, predictions in red on top, in one image."""
    with_gt = draw_detections(image_uint8_hwc, gt_boxes_xyxy, gt_labels, None, color=GREEN, width=width)
    return draw_detections(
        with_gt, pred_boxes_xyxy, pred_labels, pred_scores, color=RED, width=width, min_score=min_score
    )

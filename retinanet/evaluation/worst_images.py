"""Which images fail and how: per-image error counts and AP50, and drawings of the worst.

Counts are taken at the operating point (the detections a user of the model keeps), with TIDE's
outcome for each detection (`error_types.classify_image`) and the ground truth missed. AP50 is the
image's own AP at IoU 0.5 over all its detections (threshold-free, like AP), averaged over the
classes with ground truth or detections in the image; None for an image with neither.

Worst first: the most errors (false positives of every type plus missed boxes), then the lowest
AP50, then the image id, so the order is total and repeatable.

Size: a drawing is a JPEG with a long side of at most MAX_DRAWN_SIDE (photos are shrunk, decoded at
a reduced scale where JPEG allows, before the boxes are drawn, so lines and captions keep their
width); report.html embeds a THUMBNAIL_SIDE copy of each. Twelve 2048x1371 photos drawn at full
size as PNG made a 29 MB page; now 1.2 MB.
"""
from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from retinanet.fileio import RunFileError, write_text_atomic
from retinanet.evaluation.error_types import (
    ERROR_TYPES, MISSED, OUTCOME_COLORS, TRUE_POSITIVE, ImageErrors, mean_ap,
)
from retinanet.evaluation.per_image import ImageBoxes
from retinanet.evaluation.plotting import write_bytes_atomic
from retinanet.evaluation.visualize import draw_detections, enlarge

FILE_NAME = "worst_images.json"
FOLDER = "worst_images"
MIN_DRAWN_SIDE = 384  # small images are enlarged (nearest neighbour) so boxes and captions stay legible
MAX_DRAWN_SIDE = 1024  # larger images are shrunk to this long side before drawing
THUMBNAIL_SIDE = 640  # the copy report.html embeds: twice a card's width, sharp on high-density screens
JPEG_QUALITY = 85
GT_COLOR = (255, 255, 255)
CROWD_COLOR = (150, 150, 150)


@dataclass(frozen=True)
class ImageSummary:
    image_id: int
    file_name: str
    counts: dict[str, int]  # true_positive and the six error types, at the operating point
    errors: int  # false positives of every type plus missed ground truth
    ap50: float | None


def summarize_images(
    images: Sequence[ImageBoxes],
    errors_all: Sequence[ImageErrors],
    errors_kept: Sequence[ImageErrors],
    file_names: Mapping[int, str],
) -> list[ImageSummary]:
    """One summary per image: counts from `errors_kept` (thresholded), AP50 from `errors_all`."""
    summaries = []
    for image, all_dets, kept in zip(images, errors_all, errors_kept):
        counts = kept.counts()
        ap50 = mean_ap([image], [all_dets])
        summaries.append(ImageSummary(
            image_id=image.image_id,
            file_name=str(file_names.get(image.image_id, "")),
            counts=counts,
            errors=sum(counts[name] for name in ERROR_TYPES),
            ap50=None if math.isnan(ap50) else ap50,
        ))
    return summaries


def rank_worst(summaries: Sequence[ImageSummary]) -> list[ImageSummary]:
    """Most errors first, then lowest AP50 (images without any AP50 last), then image id."""
    return sorted(summaries, key=lambda s: (-s.errors, s.ap50 if s.ap50 is not None else math.inf, s.image_id))


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def read_image(path: Path, max_side: int | None = None) -> tuple[np.ndarray, float]:
    """uint8 (H, W, 3) RGB, upright per its EXIF orientation, as the datasets read it, and its scale.

    With `max_side` an image with a longer side is shrunk to it (a JPEG decoded at a reduced scale
    first); the scale (drawn pixels per original pixel, 1 when not shrunk) maps boxes onto it.
    """
    with Image.open(path) as im:
        long_side = max(im.size)
        scale = 1.0 if max_side is None or long_side <= max_side else max_side / long_side
        if scale < 1.0:
            im.draft("RGB", (math.ceil(im.width * scale), math.ceil(im.height * scale)))
        upright = ImageOps.exif_transpose(im).convert("RGB")
        if scale < 1.0:
            upright = _fit(upright, max_side)
        return np.asarray(upright, dtype=np.uint8).copy(), scale


def _fit(image: Image.Image, max_side: int) -> Image.Image:
    """The image with its long side shrunk to `max_side` (unchanged when it is not longer)."""
    if max(image.size) <= max_side:
        return image
    factor = max_side / max(image.size)
    return image.resize((round(image.width * factor), round(image.height * factor)), Image.LANCZOS)


def draw_outcomes(
    image_uint8_hwc: np.ndarray, image: ImageBoxes, errors: ImageErrors, names: Mapping[int, str], scale: float = 1.0
) -> np.ndarray:
    """Ground truth in white (missed in orange, crowd in grey) and each kept detection in its outcome's colour.

    `scale`: `image_uint8_hwc`'s pixels per original pixel (`read_image`'s), which the boxes are in.
    """
    pixels, enlarged = enlarge(image_uint8_hwc, MIN_DRAWN_SIDE)
    factor = scale * enlarged
    missed = set(errors.missed)
    gt_names = [names.get(int(c), str(c)) for c in image.gt_category_ids]
    groups = [
        ([g for g in range(len(gt_names)) if image.gt_crowd[g]], CROWD_COLOR, "crowd "),
        ([g for g in range(len(gt_names)) if not image.gt_crowd[g] and g not in missed], GT_COLOR, ""),
        (sorted(missed), _rgb(OUTCOME_COLORS[MISSED]), "missed "),
    ]
    for indices, color, prefix in groups:
        if indices:
            pixels = draw_detections(pixels, image.gt_boxes_xyxy[indices] * factor,
                                     [prefix + gt_names[g] for g in indices], None, color=color, width=1)
    for outcome in (TRUE_POSITIVE, *ERROR_TYPES[:-1]):
        indices = [d for d, o in enumerate(errors.outcomes) if o == outcome]
        if indices:
            labels = [names.get(int(image.det_category_ids[d]), "?") for d in indices]
            pixels = draw_detections(pixels, image.det_boxes_xyxy[indices] * factor, labels,
                                     image.det_scores[indices].tolist(), color=_rgb(OUTCOME_COLORS[outcome]), width=2)
    return pixels


def drawing_name(rank: int, image_id: int) -> str:
    return f"{FOLDER}/{rank:03d}_image{image_id}.jpg"


def save_worst_images(
    summaries: Sequence[ImageSummary],
    drawings: Mapping[int, np.ndarray],
    out_dir: Path,
) -> list[Path]:
    """worst_images.json (every image, worst first) and worst_images/NNN_imageID.jpg for the drawn ones."""
    out_dir = Path(out_dir)
    (out_dir / FOLDER).mkdir(parents=True, exist_ok=True)
    written = []
    ranked = rank_worst(summaries)
    for rank, summary in enumerate(ranked):
        if summary.image_id in drawings:
            path = out_dir / drawing_name(rank, summary.image_id)
            write_bytes_atomic(path, jpeg_bytes(drawings[summary.image_id]))
            written.append(path)
    rows = [{"rank": rank, **asdict(s), "drawing": drawing_name(rank, s.image_id) if s.image_id in drawings else None}
            for rank, s in enumerate(ranked)]
    write_text_atomic(out_dir / FILE_NAME, json.dumps(rows, indent=1))
    return [out_dir / FILE_NAME, *written]


def jpeg_bytes(image_uint8_hwc: np.ndarray, max_side: int | None = None) -> bytes:
    """The image as a JPEG, shrunk to a long side of `max_side` when it is longer (report.html's thumbnails)."""
    image = Image.fromarray(image_uint8_hwc)
    if max_side is not None:
        image = _fit(image, max_side)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def load_worst_images(path: Path) -> list[dict]:
    """The rows of worst_images.json (rank, image_id, file_name, counts, errors, ap50, drawing)."""
    try:
        rows = json.loads(Path(path).read_text())
        if not isinstance(rows, list) or any("image_id" not in r or "counts" not in r for r in rows):
            raise ValueError("expected a list of {image_id, counts, ...} rows")
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        raise RunFileError(f"{path}: not a worst-images file ({exc}); rerun evaluate.py") from None
    return rows

"""Write a synthetic dataset that looks like photos of a user's own objects, laid out as a Roboflow COCO export.

The shapes set (`data.synthetic`) is for seconds-long demos at 128 px; this one is for measuring
what a recipe does with real photos: 2048x1371 JPEGs (quality 90), objects whose boxes are 2-10%
of the image side, about ten objects per image (some images with few, a few empty), partial
occlusion, slight rotation, shading, drop shadows, colour and lighting variation, clutter that is
not a class, textured backgrounds, blur, vignetting and sensor noise. The 12 classes come in 6
look-alike pairs (circle/ellipse, square/rectangle, triangle/inverted triangle, 5-/6-point star,
pentagon/hexagon, ring/thick ring); the two of a pair share a hue, so only the shape tells them
apart. Class frequencies differ by up to 2.4x. The same seed always gives the same bytes.

    python scripts/make_synthetic_dataset.py --style photos --output DIR [--seed 0] [--num-train 200]

Layout (Roboflow's): DIR/{train,valid,test}/*.jpg, each folder with its `_annotations.coco.json`.
Like Roboflow's, the categories start with an unused placeholder id 0 ("objects", supercategory
"none"), the classes are 1..12 with supercategory "objects", and image and annotation ids start at 0.
"""
from __future__ import annotations

import colorsys
import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from retinanet.data.synthetic import split_is_complete
from retinanet.fileio import write_text_atomic

# (name, probability per object, pair). The two classes of a pair share a hue: only the shape differs.
CLASSES: tuple[tuple[str, float, int], ...] = (
    ("circle", 0.12, 0),
    ("ellipse", 0.07, 0),
    ("square", 0.11, 1),
    ("rectangle", 0.09, 1),
    ("triangle", 0.10, 2),
    ("inverted_triangle", 0.06, 2),
    ("star5", 0.09, 3),
    ("star6", 0.07, 3),
    ("pentagon", 0.08, 4),
    ("hexagon", 0.08, 4),
    ("ring", 0.08, 5),
    ("thick_ring", 0.05, 5),
)
PLACEHOLDER = "objects"  # Roboflow's category 0: the workspace name, never used by an annotation
SPLITS = ("train", "valid", "test")
ANNOTATIONS_FILE = "_annotations.coco.json"
DEFAULT_IMAGE_SIZE = (2048, 1371)  # (width, height)
JPEG_QUALITY = 90
BOX_FRACTION = (0.02, 0.10)  # a box's longer side over the image's longer side, log-uniform
EMPTY_FRACTION = 0.04
FEW_FRACTION = 0.16  # images with 1-4 objects; the rest have 8-15
MAX_OVERLAP = 0.35  # intersection / smaller box area between two objects
OCCLUDE_FRACTION = 0.15  # objects placed on purpose against one already placed
SUPERSAMPLE = 4  # masks are drawn at 4x and averaged down: anti-aliased edges
FORMAT_VERSION = 1


def _unit_polygons(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """The shape's outline (and a hole for rings) as (P, 2) points around (0, 0), y down, before rotation."""

    def regular(n: int, start: float, radius: float = 1.0) -> np.ndarray:
        t = start + 2 * np.pi * np.arange(n) / n
        return radius * np.stack([np.cos(t), np.sin(t)], axis=1)

    def star(n: int, inner: float) -> np.ndarray:
        t = -np.pi / 2 + np.pi * np.arange(2 * n) / n
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)

    jitter = rng.uniform(0.93, 1.0)  # no shape is perfectly regular, but a circle stays rounder than any ellipse
    hole = None
    if name in ("circle", "ring", "thick_ring"):
        outline = regular(96, 0.0) * [1.0, jitter]
        if name != "circle":
            inner = rng.uniform(0.66, 0.74) if name == "ring" else rng.uniform(0.34, 0.44)
            hole = outline * inner
    elif name == "ellipse":
        outline = regular(96, 0.0) * [1.0, rng.uniform(0.58, 0.76)]
    elif name == "square":
        outline = regular(4, np.pi / 4) * [1.0, jitter]
    elif name == "rectangle":
        outline = regular(4, np.pi / 4) * [1.0, rng.uniform(0.5, 0.7)]
    elif name in ("triangle", "inverted_triangle"):
        outline = np.array([[-1.0, 0.85], [1.0, 0.85], [0.0, -0.85]]) * [1.0, rng.uniform(0.85, 1.15)]
        if name == "inverted_triangle":
            outline = outline * [1.0, -1.0]
    elif name == "star5":
        outline = star(5, rng.uniform(0.42, 0.5))
    elif name == "star6":
        outline = star(6, rng.uniform(0.48, 0.56))
    elif name == "pentagon":
        outline = regular(5, -np.pi / 2) * [1.0, jitter]
    elif name == "hexagon":
        outline = regular(6, 0.0) * [1.0, jitter]
    else:
        raise ValueError(f"unknown class {name!r}")
    return outline, hole


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Zero-mean noise of about `cells` blobs along the long side, smooth at that scale: (H, W) float32."""
    gw = max(2, round(cells * width / max(width, height)))
    gh = max(2, round(cells * height / max(width, height)))
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _random_color(rng: np.random.Generator, hue: float, sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(*sat), rng.uniform(*val))
    return np.array([r, g, b], dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A surface (table, floor, fabric): a muted colour with texture at several scales and, sometimes, grain."""
    base = _random_color(rng, rng.uniform(0, 1), (0.03, 0.35), (0.3, 0.85))
    image = np.empty((height, width, 3), np.float32)
    image[:] = base
    luminance = np.zeros((height, width), np.float32)
    for cells, amplitude in ((3, 14.0), (12, 9.0), (48, 6.0), (200, 4.0), (700, 3.0)):
        luminance += rng.uniform(0.3, 1.0) * amplitude * _smooth_noise(rng, height, width, cells)
    if rng.random() < 0.4:  # wood grain or fabric: stripes bent by low-frequency noise
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / max(height, width)
        angle = rng.uniform(0, np.pi)
        warp = 0.02 * _smooth_noise(rng, height, width, 4)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy + warp) * rng.uniform(40, 160)
        luminance += rng.uniform(3, 10) * np.sin(2 * np.pi * phase)
    image += luminance[..., None]
    for channel in range(3):  # slow colour drift, as under mixed light
        image[..., channel] += rng.uniform(2, 6) * _smooth_noise(rng, height, width, 3)
    return image


def _paint(
    image: np.ndarray,
    rng: np.random.Generator,
    outline: np.ndarray,
    hole: np.ndarray | None,
    color: np.ndarray,
    light: np.ndarray,
    shadow: float,
) -> None:
    """Draw one object (points in image pixels) with shading, a highlight and a drop shadow, in place."""
    height, width = image.shape[:2]
    extent = float(np.ptp(outline, axis=0).max())
    offset = light * -(0.04 + 0.06 * rng.random()) * extent  # the shadow falls away from the light
    margin = int(np.ceil(abs(offset).max() + 0.25 * extent + 4))
    x0 = max(0, int(np.floor(outline[:, 0].min())) - margin)
    y0 = max(0, int(np.floor(outline[:, 1].min())) - margin)
    x1 = min(width, int(np.ceil(outline[:, 0].max())) + margin)
    y1 = min(height, int(np.ceil(outline[:, 1].max())) + margin)
    pw, ph = x1 - x0, y1 - y0

    def mask_of(points: np.ndarray) -> np.ndarray:
        canvas = np.zeros((ph * SUPERSAMPLE, pw * SUPERSAMPLE), np.uint8)
        scaled = np.round((points - [x0, y0]) * SUPERSAMPLE).astype(np.int32)
        cv2.fillPoly(canvas, [scaled], 255)
        if hole is not None:
            cv2.fillPoly(canvas, [np.round((hole - [x0, y0]) * SUPERSAMPLE).astype(np.int32)], 0)
        return cv2.resize(canvas, (pw, ph), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0

    alpha = mask_of(outline)
    region = image[y0:y1, x0:x1]
    shifted = cv2.warpAffine(alpha, np.float32([[1, 0, offset[0]], [0, 1, offset[1]]]), (pw, ph))
    soft = cv2.GaussianBlur(shifted, (0, 0), 0.06 * extent + 1.5)
    region *= (1.0 - shadow * soft)[..., None]

    yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
    cx, cy = outline.mean(axis=0) - [x0, y0]
    ramp = ((xx - cx) * light[0] + (yy - cy) * light[1]) / (0.5 * extent)
    bevel = cv2.GaussianBlur(alpha, (0, 0), 0.05 * extent + 0.5)
    shade = (1.0 + rng.uniform(0.08, 0.25) * ramp) * (0.8 + 0.2 * bevel)
    paint = color * shade[..., None]
    if rng.random() < 0.5:  # a soft highlight on the lit side
        hx, hy = cx + light[0] * 0.25 * extent, cy + light[1] * 0.25 * extent
        spot = np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / (2 * (0.2 * extent) ** 2))
        paint += rng.uniform(15, 45) * spot[..., None]
    paint += rng.uniform(1.5, 5.0) * rng.standard_normal(paint.shape, dtype=np.float32)
    region += alpha[..., None] * (paint - region)


def _clutter(rng: np.random.Generator, image: np.ndarray, light: np.ndarray) -> None:
    """Things on the surface that are not classes: irregular blobs and thin strips, in muted colours."""
    height, width = image.shape[:2]
    long_side = max(height, width)
    for _ in range(int(rng.integers(0, 6))):
        size = long_side * np.exp(rng.uniform(np.log(0.02), np.log(0.12)))
        if rng.random() < 0.6:
            n = int(rng.integers(7, 13))
            t = np.sort(rng.uniform(0, 2 * np.pi, n))
            r = rng.uniform(0.45, 1.0, n)
            points = np.stack([r * np.cos(t), r * np.sin(t)], axis=1) * size / 2
        else:
            length, thickness = size, size * rng.uniform(0.04, 0.12)
            points = _rotate(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [length / 2, thickness / 2], rng.uniform(0, np.pi))
        center = rng.uniform([0.05 * width, 0.05 * height], [0.95 * width, 0.95 * height])
        color = _random_color(rng, rng.uniform(0, 1), (0.0, 0.3), (0.15, 0.9))
        _paint(image, rng, points + center, None, color, light, rng.uniform(0.1, 0.3))


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over the smaller area of two xyxy boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def _place_objects(
    rng: np.random.Generator, height: int, width: int
) -> list[tuple[int, np.ndarray, np.ndarray | None, tuple[float, float, float, float]]]:
    """Choose classes, shapes, sizes and positions: (class index, outline, hole, box_xyxy) in drawing order."""
    draw = rng.random()
    if draw < EMPTY_FRACTION:
        num_objects = 0
    elif draw < EMPTY_FRACTION + FEW_FRACTION:
        num_objects = int(rng.integers(1, 5))
    else:
        num_objects = int(rng.integers(8, 16))
    probs = np.array([p for _, p, _ in CLASSES])
    long_side = max(height, width)
    placed: list[tuple[int, np.ndarray, np.ndarray | None, tuple[float, float, float, float]]] = []
    for _ in range(num_objects):
        cls = int(rng.choice(len(CLASSES), p=probs / probs.sum()))
        name = CLASSES[cls][0]
        outline, hole = _unit_polygons(name, rng)
        angle = rng.uniform(-0.26, 0.26)  # about +-15 degrees: a triangle stays apex up
        if name in ("ellipse", "rectangle") and rng.random() < 0.5:
            angle += np.pi / 2  # lying the other way: the box is tall
        outline = _rotate(outline, angle)
        hole = None if hole is None else _rotate(hole, angle)
        side = long_side * np.exp(rng.uniform(np.log(BOX_FRACTION[0]), np.log(BOX_FRACTION[1])))
        scale = side / float(np.ptp(outline, axis=0).max())
        outline, hole = outline * scale, None if hole is None else hole * scale
        lo, hi = outline.min(axis=0), outline.max(axis=0)
        occlude = placed and rng.random() < OCCLUDE_FRACTION
        for _attempt in range(30):
            if occlude:  # against an object already there, so one hides part of the other
                ox0, oy0, ox1, oy1 = placed[int(rng.integers(len(placed)))][3]
                anchor = rng.uniform([ox0, oy0], [ox1, oy1])
                center = anchor + rng.uniform(-0.5, 0.5, 2) * (hi - lo)
            else:
                center = rng.uniform(-lo, [width - hi[0], height - hi[1]])
            box = (*(lo + center), *(hi + center))
            inside = box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height
            overlaps = [_overlap(box, other[3]) for other in placed]
            limit = MAX_OVERLAP if occlude else 0.02
            if inside and max(overlaps, default=0.0) <= limit:
                placed.append((cls, outline + center, None if hole is None else hole + center, box))
                break
    return placed


def _finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """The camera: uneven light, white balance, vignetting, lens blur, sensor noise -> uint8."""
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = (xx - width / 2) / max(height, width), (yy - height / 2) / max(height, width)
    angle = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.05, 0.25) * (np.cos(angle) * u + np.sin(angle) * v) * 2
    sx, sy = rng.uniform(-0.4, 0.4, 2)
    light += rng.uniform(0.0, 0.25) * np.exp(-((u - sx) ** 2 + (v - sy) ** 2) / (2 * rng.uniform(0.1, 0.3) ** 2))
    light *= 1.0 - rng.uniform(0.1, 0.4) * (u**2 + v**2) / 0.36  # vignetting, ~0.36 at the corners
    gain = rng.uniform(0.75, 1.2) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    image *= light[..., None] * gain
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.6, 1.8))
    shot, read = rng.uniform(0.2, 0.6), rng.uniform(1.0, 3.0)  # noise variance grows with the signal
    sigma = np.sqrt(shot**2 * np.clip(image, 0, None) + read**2)
    image += sigma * rng.standard_normal(image.shape, dtype=np.float32)
    chroma = rng.standard_normal((height // 2, width // 2, 3), dtype=np.float32)
    image += rng.uniform(1.0, 3.0) * cv2.resize(chroma, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def make_photo(
    rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, list[tuple[int, tuple[float, float, float, float], float]]]:
    """One (H, W, 3) uint8 photo and its objects as (class index, box_xyxy in pixels, visible mask area)."""
    image = _background(rng, height, width)
    angle = rng.uniform(0, 2 * np.pi)
    light = np.array([np.cos(angle), np.sin(angle)], dtype=np.float32)
    _clutter(rng, image, light)
    hue_of_pair = np.arange(6) / 6.0 + rng.normal(0, 0.02)  # six hues, a pair's shared; the light tints them all
    placed = _place_objects(rng, height, width)
    for cls, outline, hole, _box in placed:
        hue = hue_of_pair[CLASSES[cls][2]] + rng.normal(0, 0.06)
        color = _random_color(rng, hue, (0.35, 0.9), (0.35, 0.95))
        _paint(image, rng, outline, hole, color, light, rng.uniform(0.25, 0.5))
    objects = [(cls, box, _polygon_area(outline, hole)) for cls, outline, hole, box in placed]
    return _finish(rng, image), objects


def _polygon_area(outline: np.ndarray, hole: np.ndarray | None) -> float:
    def area(p: np.ndarray) -> float:
        x, y = p[:, 0], p[:, 1]
        return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))

    return area(outline) - (0.0 if hole is None else area(hole))


def _params(seed: int, num_images: int, size: tuple[int, int]) -> dict[str, Any]:
    return {"style": "photos", "version": FORMAT_VERSION, "seed": seed, "num_images": num_images, "image_size": list(size)}


def _file_name(seed: int, split: str, index: int) -> str:
    """Roboflow's naming: the original name with `_jpg`, then `.rf.` and a hash."""
    digest = hashlib.md5(f"{seed}/{split}/{index}".encode()).hexdigest()
    return f"photo_{index:04d}_jpg.rf.{digest}.jpg"


def categories() -> list[dict[str, Any]]:
    """Roboflow's categories: the unused placeholder 0, then the classes 1..K under it."""
    return [{"id": 0, "name": PLACEHOLDER, "supercategory": "none"}] + [
        {"id": i + 1, "name": name, "supercategory": PLACEHOLDER} for i, (name, _, _) in enumerate(CLASSES)
    ]


def _write_split(output_dir: Path, split: str, seed: int, num_images: int, size: tuple[int, int]) -> None:
    split_dir = output_dir / split
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / ANNOTATIONS_FILE).unlink(missing_ok=True)  # absent until the split is whole again
    for stale in split_dir.glob("*.jpg"):
        stale.unlink()
    width, height = size
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        pixels, objects = make_photo(rng, width, height)
        file_name = _file_name(seed, split, index)
        Image.fromarray(pixels).save(split_dir / file_name, format="JPEG", quality=JPEG_QUALITY)
        images.append(
            {"id": index, "license": 1, "file_name": file_name, "height": height, "width": width,
             "date_captured": "2024-01-01T00:00:00+00:00"}
        )
        for cls, (x0, y0, x1, y1), area in objects:
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": index,
                    "category_id": cls + 1,
                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "area": round(area, 2),
                    "segmentation": [],
                    "iscrowd": 0,
                }
            )
    dataset = {
        "info": {
            "year": "2024",
            "version": str(FORMAT_VERSION),
            "description": "synthetic photos (scripts/make_synthetic_dataset.py --style photos)",
            "contributor": "",
            "url": "",
            "date_created": "2024-01-01T00:00:00+00:00",
            "generator": _params(seed, num_images, size),
        },
        "licenses": [{"id": 1, "url": "https://creativecommons.org/publicdomain/zero/1.0/", "name": "CC0 1.0"}],
        "categories": categories(),
        "images": images,
        "annotations": annotations,
    }
    write_text_atomic(split_dir / ANNOTATIONS_FILE, json.dumps(dataset, indent=1))  # last: marks a whole split


def make_photos_dataset(
    output_dir: str | Path,
    seed: int = 0,
    num_train: int = 200,
    num_valid: int = 60,
    num_test: int = 30,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    force: bool = False,
) -> None:
    """Write the three splits; a split already complete with the same parameters is kept unless `force`."""
    width, height = image_size
    if min(width, height) < 64:
        raise ValueError(f"image size must be at least 64x64, got {width}x{height}")
    output_dir = Path(output_dir)
    for split, num_images in zip(SPLITS, (num_train, num_valid, num_test)):
        if force or not split_is_complete(output_dir / split / ANNOTATIONS_FILE, output_dir / split,
                                          _params(seed, num_images, (width, height))):
            _write_split(output_dir, split, seed, num_images, (width, height))

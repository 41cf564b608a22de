"""Write a small synthetic COCO-format detection dataset of coloured shapes on textured backgrounds.

It exercises what real data does to a detector, in seconds on a CPU: gapped category ids, strong
class imbalance (circles ~60% of objects, rings ~4%), small and large objects, 1-8 objects per image
and ~5% images without objects. The same seed always gives the same bytes.

    python scripts/make_synthetic_dataset.py --output data/synthetic [--seed 0] [--force]

Layout: DIR/{train,val}/*.png and DIR/annotations/instances_{train,val}.json.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# (category id, name, probability per object). Ids are gapped on purpose: labels must be remapped.
CATEGORIES: tuple[tuple[int, str, float], ...] = (
    (1, "circle", 0.60),
    (3, "square", 0.18),
    (7, "triangle", 0.13),
    (10, "cross", 0.05),
    (12, "ring", 0.04),
)
# Object size as a fraction of the image side: small (8-16 px at 128), medium, large (40-80 px at 128).
SIZE_BINS: tuple[tuple[float, float, float], ...] = (
    (1 / 16, 1 / 8, 0.40),
    (1 / 8, 5 / 16, 0.35),
    (5 / 16, 5 / 8, 0.25),
)
EMPTY_FRACTION = 0.05
MAX_OBJECTS = 8
MAX_OVERLAP = 0.25  # intersection / smaller box area allowed between two objects
SPLITS = ("train", "val")
FORMAT_VERSION = 1


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two-colour gradient + faint stripes + noise, so objects are not the only texture in the image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    image = c0 + (c1 - c0) * t[..., None]
    stripe_angle = rng.uniform(0, np.pi)
    freq = rng.uniform(2, 12)
    stripes = np.sin(2 * np.pi * freq * (np.cos(stripe_angle) * xx + np.sin(stripe_angle) * yy))
    image += rng.uniform(0, 25) * stripes[..., None]
    image += rng.normal(0, rng.uniform(3, 15), size=image.shape).astype(np.float32)
    return image


def _shape_mask(name: str, w: int, h: int) -> np.ndarray:
    """Boolean (h, w) mask of a shape that touches all four sides, so its tight box is (0, 0, w, h)."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    box = (0, 0, w - 1, h - 1)
    if name == "circle":
        draw.ellipse(box, fill=255)
    elif name == "square":
        draw.rectangle(box, fill=255)
    elif name == "triangle":
        draw.polygon([(0, h - 1), (w - 1, h - 1), ((w - 1) / 2, 0)], fill=255)
    elif name == "cross":
        tw, th = max(2, w // 3), max(2, h // 3)
        draw.rectangle(((w - tw) // 2, 0, (w - tw) // 2 + tw - 1, h - 1), fill=255)
        draw.rectangle((0, (h - th) // 2, w - 1, (h - th) // 2 + th - 1), fill=255)
    elif name == "ring":
        draw.ellipse(box, outline=255, width=max(2, min(w, h) // 5))
    else:
        raise ValueError(f"unknown shape {name!r}")
    return np.asarray(canvas) > 0


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]) -> bool:
    x, y, w, h = box
    for ox, oy, ow, oh in others:
        iw = min(x + w, ox + ow) - max(x, ox)
        ih = min(y + h, oy + oh) - max(y, oy)
        if iw > 0 and ih > 0 and iw * ih > MAX_OVERLAP * min(w * h, ow * oh):
            return True
    return False


def _make_image(
    rng: np.random.Generator, size: int
) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int], int]]]:
    """One image and its objects as (category id, bbox_xywh in integer pixels, mask area)."""
    image = _background(rng, size)
    num_objects = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, MAX_OBJECTS + 1))
    cat_probs = np.array([p for _, _, p in CATEGORIES])
    bin_probs = np.array([p for _, _, p in SIZE_BINS])
    placed: list[tuple[int, str, tuple[int, int, int, int]]] = []
    for _ in range(num_objects):
        cat_index = int(rng.choice(len(CATEGORIES), p=cat_probs / cat_probs.sum()))
        lo, hi, _ = SIZE_BINS[int(rng.choice(len(SIZE_BINS), p=bin_probs / bin_probs.sum()))]
        side = int(rng.integers(max(2, round(lo * size)), max(3, round(hi * size)) + 1))
        name = CATEGORIES[cat_index][1]
        aspect = rng.uniform(0.6, 1.6) if name == "triangle" else 1.0
        w, h = min(size, max(2, round(side * aspect))), side
        for _attempt in range(20):
            box = (int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1)), w, h)
            if not _overlaps(box, [b for _, _, b in placed]):
                placed.append((CATEGORIES[cat_index][0], name, box))
                break

    objects = []
    # Large objects first, so small ones are drawn on top and never hidden.
    for cat_id, name, (x, y, w, h) in sorted(placed, key=lambda o: -o[2][2] * o[2][3]):
        mask = _shape_mask(name, w, h)
        region = image[y : y + h, x : x + w]
        background_mean = region[mask].mean(axis=0)
        color = rng.uniform(0, 255, size=3)
        for _attempt in range(10):
            if np.abs(color - background_mean).sum() > 150:
                break
            color = rng.uniform(0, 255, size=3)
        region[mask] = color + rng.normal(0, 4, size=(int(mask.sum()), 3))
        objects.append((cat_id, (x, y, w, h), int(mask.sum())))
    return np.clip(image, 0, 255).round().astype(np.uint8), objects


def _params(seed: int, num_images: int, image_size: int) -> dict[str, Any]:
    return {"version": FORMAT_VERSION, "seed": seed, "num_images": num_images, "image_size": image_size}


def _write_split(output_dir: Path, split: str, seed: int, num_images: int, image_size: int) -> None:
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    image_dir = output_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in image_dir.glob("*.png"):
        stale.unlink()
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        pixels, objects = _make_image(rng, image_size)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(image_dir / file_name, format="PNG")
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size, "license": 1})
        for cat_id, bbox_xywh, area in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_id,
                    "bbox": [float(v) for v in bbox_xywh],
                    "area": float(area),
                    "iscrowd": 0,
                }
            )
    dataset = {
        "info": {
            "description": "synthetic shapes (scripts/make_synthetic_dataset.py)",
            "version": str(FORMAT_VERSION),
            "generator": _params(seed, num_images, image_size),
        },
        "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "shape"} for cid, name, _ in CATEGORIES],
    }
    ann_path = output_dir / "annotations" / f"instances_{split}.json"
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = ann_path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(dataset, indent=1, sort_keys=True))
    os.replace(tmp_path, ann_path)  # the json is written last and atomically: its presence marks a complete split


def split_is_complete(annotations: Path, images: Path, params: dict[str, Any]) -> bool:
    """A split written whole (its json comes last) by the generator with these parameters."""
    try:
        dataset = json.loads(annotations.read_text())
    except (OSError, ValueError):
        return False
    if dataset.get("info", {}).get("generator") != params:
        return False
    return all((images / im["file_name"]).is_file() for im in dataset["images"])


def make_dataset(
    output_dir: str | Path,
    seed: int = 0,
    num_train: int = 3000,
    num_val: int = 300,
    image_size: int = 128,
    force: bool = False,
) -> None:
    """Write both splits; a split already complete with the same parameters is kept unless `force`."""
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    output_dir = Path(output_dir)
    for split, num_images in zip(SPLITS, (num_train, num_val)):
        if force or not split_is_complete(output_dir / "annotations" / f"instances_{split}.json", output_dir / split,
                                          _params(seed, num_images, image_size)):
            _write_split(output_dir, split, seed, num_images, image_size)

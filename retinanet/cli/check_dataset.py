"""Check a COCO-format dataset before training on it, and describe it.

    python scripts/check_dataset.py --images DIR --annotations FILE

Runs the same validation as training start-up (every record, every image file's header) and
prints: image and annotation counts, boxes and images per class, a box size histogram with COCO's
small / medium / large totals, images without boxes, and the problems and notes found. Statistics
cover the records training would load (problems left out, as with data.on_invalid=skip).

Exit code: 0 clean (notes allowed), 1 problems found, 2 unusable input (missing folder or file,
not JSON, not a COCO detection file).
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

from retinanet.data.validate import DatasetError, clean_coco, load_coco_json, validate_coco
from retinanet.cli.common import run_cli

EXIT_CLEAN, EXIT_PROBLEMS, EXIT_UNUSABLE = 0, 1, 2
# Histogram edges on sqrt(box area) in pixels; COCO's small < 32^2 <= medium < 96^2 <= large.
SIZE_EDGES = (16, 32, 64, 128, 256)
COCO_SMALL, COCO_LARGE = 32**2, 96**2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="the image folder (file_name is relative to it)")
    parser.add_argument("--annotations", required=True, help="the COCO instances json")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser.parse_args(argv)


def clipped_area(bbox: list[float], width: float, height: float) -> float:
    """Area of a COCO [x, y, w, h] box after clipping to the image, as training sees it."""
    x1, y1 = min(max(bbox[0], 0.0), width), min(max(bbox[1], 0.0), height)
    x2, y2 = min(max(bbox[0] + bbox[2], 0.0), width), min(max(bbox[1] + bbox[3], 0.0), height)
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def size_bucket(area: float) -> str:
    side = math.sqrt(area)
    for low, high in zip((0, *SIZE_EDGES), SIZE_EDGES):
        if side < high:
            return f"<{high}" if low == 0 else f"{low}-{high}"
    return f">={SIZE_EDGES[-1]}"


def describe(dataset: dict) -> list[str]:
    """Counts, per-class table, size histogram and empty images of a (validated, cleaned) dataset."""
    images = {img["id"]: img for img in dataset["images"]}
    anns = dataset["annotations"]
    boxes, crowd, images_of = Counter(), Counter(), {c["id"]: set() for c in dataset["categories"]}
    buckets = Counter({size_bucket(a): 0 for a in (1.0, *(e**2 for e in SIZE_EDGES))})
    coco_sizes = Counter({"small": 0, "medium": 0, "large": 0})
    for ann in anns:
        cat_id = ann["category_id"]
        images_of[cat_id].add(ann["image_id"])
        if ann.get("iscrowd"):
            crowd[cat_id] += 1
            continue
        boxes[cat_id] += 1
        img = images[ann["image_id"]]
        area = clipped_area(ann["bbox"], img["width"], img["height"])
        buckets[size_bucket(area)] += 1
        coco_sizes["small" if area < COCO_SMALL else "medium" if area < COCO_LARGE else "large"] += 1
    with_boxes = {a["image_id"] for a in anns}
    empty = sorted(i for i in images if i not in with_boxes)

    lines = [
        f"images: {len(images)} ({len(empty)} without boxes)",
        f"annotations: {len(anns)} ({sum(crowd.values())} crowd)",
        f"categories: {len(dataset['categories'])} ({sum(1 for c in images_of.values() if c)} used)",
        "",
        f"{'id':>6}  {'name':<24} {'boxes':>7} {'crowd':>6} {'images':>7}",
    ]
    for cat in sorted(dataset["categories"], key=lambda c: c["id"]):
        cat_id = cat["id"]
        name = str(cat.get("name", cat_id))
        lines.append(f"{cat_id:>6}  {name:<24} {boxes[cat_id]:>7} {crowd[cat_id]:>6} {len(images_of[cat_id]):>7}")
    lines += ["", "box sizes, sqrt(area) in px after clipping (crowd boxes left out):"]
    lines += [f"  {bucket:>8}: {count}" for bucket, count in buckets.items()]
    lines.append(
        f"  COCO small (< 32^2): {coco_sizes['small']}, medium: {coco_sizes['medium']}, "
        f"large (>= 96^2): {coco_sizes['large']}"
    )
    shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
    lines += ["", f"images without boxes: {len(empty)}" + (f" (ids {shown})" if empty else "")]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    images_dir, annotations = Path(args.images), Path(args.annotations)
    try:
        if not images_dir.is_dir():
            raise DatasetError(f"--images {images_dir}: not a folder; check the path")
        dataset = load_coco_json(annotations)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    report = validate_coco(dataset, images_dir, check_images=True)
    cleaned = clean_coco(dataset, report).dataset
    print(f"annotations file: {annotations}")
    print(f"images folder:    {images_dir}")
    if not report.ok:
        print("(statistics below leave out the invalid records)")
    print("\n".join(describe(cleaned)))
    print()
    print(report.summary())
    return EXIT_CLEAN if report.ok else EXIT_PROBLEMS


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""Check a COCO-format dataset before training on it, and describe it.

    python scripts/check_dataset.py --images DIR --annotations FILE
    python scripts/check_dataset.py --config FILE [--set KEY=VALUE ...] [--json FILE] [--output-dir DIR [--draw N]]

Runs the same validation as training start-up (every record, every image file's header) and
prints: image and annotation counts, boxes and images per class, a box size histogram with COCO's
small / medium / large totals, images without boxes, and the problems and notes found. Statistics
cover the records training would load (problems left out, as with data.on_invalid=skip).

With --config (its data.train split unless --images/--annotations are given): anchor coverage, the
share of boxes whose best anchor reaches the matcher's fg_iou, per COCO size (after the config's
resize) and per class, with suggested anchors below 90%. --json FILE writes every figure;
--output-dir DIR writes DIR/histograms.png, and with --draw N, DIR/preview_NN.png: the first N
training images after the configured augmentations and resize, as the training loop receives them.

Exit code: 0 clean (notes allowed), 1 problems found, 2 unusable input (missing folder or file,
not JSON, not a COCO detection file, a bad config).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from retinanet.config import ConfigError, load_config
from retinanet.data.loaders import build_dataset
from retinanet.data.previews import training_previews
from retinanet.evaluation.visualize import GREEN, draw_detections, enlarge
from retinanet.data.anchor_coverage import anchor_coverage, format_coverage
from retinanet.data.stats import class_counts, plot_histograms, size_counts, write_check_json
from retinanet.data.validate import DatasetError, clean_coco, load_coco_json, validate_coco
from retinanet.cli.common import run_cli

EXIT_CLEAN, EXIT_PROBLEMS, EXIT_UNUSABLE = 0, 1, 2
PREVIEW_MIN_SIDE = 384  # small images are drawn with each pixel repeated, so boxes and captions stay legible


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="the image folder (file_name is relative to it); default: the config's data.train")
    parser.add_argument("--annotations", help="the COCO instances json; default: the config's data.train")
    parser.add_argument("--config", help="YAML config: its anchors, matcher thresholds, resize and augmentations")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--json", metavar="FILE", help="write every figure to this JSON file")
    parser.add_argument("--output-dir", metavar="DIR", help="write histograms.png (and the --draw previews) here")
    parser.add_argument("--draw", type=int, default=0, metavar="N", help="write N training previews (needs --config)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    if args.config is None and not (args.images and args.annotations):
        parser.error("give --images and --annotations, or --config")
    if args.draw and (args.config is None or args.output_dir is None):
        parser.error("--draw N needs --config (its augmentations and resize) and --output-dir")
    return args


def describe(dataset: dict) -> list[str]:
    """Counts, per-class table, size histogram and empty images of a (validated, cleaned) dataset."""
    images = {img["id"]: img for img in dataset["images"]}
    anns = dataset["annotations"]
    counts = class_counts(dataset)
    buckets, coco_sizes = size_counts(dataset)
    with_boxes = {a["image_id"] for a in anns}
    empty = sorted(i for i in images if i not in with_boxes)

    lines = [
        f"images: {len(images)} ({len(empty)} without boxes)",
        f"annotations: {len(anns)} ({sum(c.crowd for c in counts)} crowd)",
        f"categories: {len(counts)} ({sum(1 for c in counts if c.images)} used)",
        "",
        f"{'id':>6}  {'name':<24} {'boxes':>7} {'crowd':>6} {'images':>7}",
    ]
    lines += [f"{c.id:>6}  {c.name:<24} {c.boxes:>7} {c.crowd:>6} {c.images:>7}" for c in counts]
    lines += ["", "box sizes, sqrt(area) in px after clipping (crowd boxes left out):"]
    lines += [f"  {bucket:>8}: {count}" for bucket, count in buckets.items()]
    lines.append(
        f"  COCO small (< 32^2): {coco_sizes['small']}, medium: {coco_sizes['medium']}, "
        f"large (>= 96^2): {coco_sizes['large']}"
    )
    shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
    lines += ["", f"images without boxes: {len(empty)}" + (f" (ids {shown})" if empty else "")]
    return lines


def figures(dataset: dict) -> dict[str, Any]:
    """The --json figures of a (cleaned) dataset, without anchor coverage."""
    with_boxes = {a["image_id"] for a in dataset["annotations"]}
    return {
        "images": len(dataset["images"]),
        "empty_images": sum(1 for img in dataset["images"] if img["id"] not in with_boxes),
        "annotations": len(dataset["annotations"]),
        "per_class": [vars(c) for c in class_counts(dataset)],
        "coco_sizes": size_counts(dataset)[1],
    }


def write_previews(cfg: Any, config_source: str, count: int, out_dir: Path) -> list[Path]:
    """preview_NN_imageID.png: the first `count` training images with their boxes, as training receives them."""
    train_set = build_dataset(cfg, "train", config_source)
    names = train_set.category_map.names
    written = []
    for index, preview in enumerate(training_previews(cfg, train_set, count)):
        labels = [("crowd " if crowd else "") + names[int(label)] for label, crowd in zip(preview.labels, preview.iscrowd)]
        pixels, factor = enlarge(preview.image_uint8_hwc, PREVIEW_MIN_SIDE)
        drawn = draw_detections(pixels, preview.boxes_xyxy * factor, labels, None, color=GREEN, width=1)
        path = out_dir / f"preview_{index:02d}_image{preview.image_id}.png"
        Image.fromarray(drawn).save(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.set) if args.config else None
    if cfg is not None and not (args.images and args.annotations):
        if not (cfg.data.train.images and cfg.data.train.annotations):
            raise ConfigError(f"{args.config}: data.train.images/annotations are not set; set them or pass --images and --annotations")
    images_dir = Path(args.images or cfg.data.train.images)
    annotations = Path(args.annotations or cfg.data.train.annotations)
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
    result = figures(cleaned)
    if cfg is not None:
        names = {c["id"]: str(c.get("name", c["id"])) for c in cleaned["categories"]}
        coverage = anchor_coverage(cleaned, cfg)
        print()
        print("\n".join(format_coverage(coverage, names)))
        result["anchor_coverage"] = coverage.to_dict(names)
    print()
    print(report.summary())
    result["problems"] = sum(report.counts.values())
    if args.output_dir:
        out_dir = Path(args.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"histograms: {plot_histograms(cleaned, out_dir / 'histograms.png')}")
        if args.draw:
            written = write_previews(cfg, args.config, args.draw, out_dir)
            print(f"previews: {len(written)} training images in {out_dir}")
    if args.json:
        write_check_json(Path(args.json), result)
        print(f"figures: {args.json}")
    return EXIT_CLEAN if report.ok else EXIT_PROBLEMS


if __name__ == "__main__":
    sys.exit(run_cli(main))

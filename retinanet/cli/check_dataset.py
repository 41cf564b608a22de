"""Check a COCO-format dataset before training on it, and describe it.

    python scripts/check_dataset.py --data DIR [--config FILE]        (a Roboflow or COCO export folder)
    python scripts/check_dataset.py --images DIR --annotations FILE
    python scripts/check_dataset.py --config FILE [--set KEY=VALUE ...] [--json FILE] [--output-dir DIR [--draw N]]

Runs the same validation as training start-up (every record, every image file's header) on each split
and prints: image and annotation counts, boxes per class, a box size histogram in original pixels with
COCO's small / medium / large totals (the buckets of evaluation's APs / APm / APl), images without
boxes, and the problems and notes found; then a warning naming each class with fewer than 10 training
boxes or no box in val or test. Statistics cover the records training would load (problems left out,
as with data.on_invalid=skip).

The splits: those of --data DIR (train, val, test), else --images/--annotations (one split), else the
config's data.train, data.val and data.test that are set. With --config: anchor coverage of the training
boxes, the share whose best anchor reaches the matcher's fg_iou, per COCO size (after the config's resize)
and per class, with suggested anchors below 90%, and the input size that suits the anchors. --json FILE
writes every figure; --output-dir DIR writes DIR/histograms.png, and with --draw N, DIR/preview_NN.png:
the first N training images after the configured augmentations and resize, as the training loop
receives them.

Exit code: 0 clean (notes allowed), 1 problems found, 2 unusable input (missing folder or file,
not JSON, not a COCO detection file, a bad config).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from retinanet.cli.common import add_data_argument, run_cli, with_data
from retinanet.config import Config, ConfigError, load_config
from retinanet.data.anchor_coverage import anchor_coverage, format_coverage
from retinanet.data.layouts import SPLITS
from retinanet.data.loaders import build_dataset
from retinanet.data.previews import training_previews
from retinanet.data.stats import (
    class_counts, empty_size_note, format_rare_classes, plot_histograms, rare_classes, size_counts, write_check_json,
)
from retinanet.data.validate import DatasetError, ValidationReport, clean_coco, load_coco_json, validate_coco
from retinanet.evaluation.visualize import GREEN, draw_detections, enlarge

EXIT_CLEAN, EXIT_PROBLEMS, EXIT_UNUSABLE = 0, 1, 2
PREVIEW_MIN_SIDE = 384  # small images are drawn with each pixel repeated, so boxes and captions stay legible


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--images", help="the image folder (file_name is relative to it); default: the config's data.train")
    parser.add_argument("--annotations", help="the COCO instances json; default: the config's data.train")
    parser.add_argument("--config", help="YAML config: its anchors, matcher thresholds, resize and augmentations")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--json", metavar="FILE", help="write every figure to this JSON file")
    parser.add_argument("--output-dir", metavar="DIR", help="write histograms.png (and the --draw previews) here")
    parser.add_argument("--draw", type=int, default=0, metavar="N", help="write N training previews (needs --config)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    if bool(args.images) != bool(args.annotations):
        parser.error("give --images and --annotations together")
    if args.data and args.images:
        parser.error("give --data DIR or --images and --annotations, not both")
    if args.config is None and args.data is None and not args.images:
        parser.error("give --data DIR, --images and --annotations, or --config")
    if args.draw and (args.config is None or args.output_dir is None):
        parser.error("--draw N needs --config (its augmentations and resize) and --output-dir")
    return args


@dataclass(frozen=True)
class Split:
    """One checked split: its files, what validation found, and the records training would load."""

    name: str
    images_dir: Path
    annotations: Path
    report: ValidationReport
    cleaned: dict[str, Any]
    placeholder: str | None  # the name of Roboflow's placeholder category 0, when the file has one


def check_split(name: str, images_dir: Path, annotations: Path, flag: str) -> Split:
    """Validate one split as training start-up does; a DatasetError (naming `flag`) when its files are unusable."""
    if not images_dir.is_dir():
        raise DatasetError(f"{flag} {images_dir}: not a folder; check the path")
    dataset = load_coco_json(annotations)
    report = validate_coco(dataset, images_dir, check_images=True)
    placeholder = next((str(c.get("name")) for c in dataset["categories"]
                        if isinstance(c, dict) and c.get("id") in report.placeholder_category_ids), None)
    return Split(name, images_dir, annotations, report, clean_coco(dataset, report).dataset, placeholder)


def categories_line(split: Split) -> str:
    """The one category count: real classes only, Roboflow's placeholder named apart."""
    counts = class_counts(split.cleaned)
    used = sum(1 for c in counts if c.images)
    placeholder = (f"; Roboflow's placeholder category 0 {split.placeholder!r} left out: not a class"
                   if split.placeholder is not None else "")
    return f"categories: {len(counts)} ({used} used{placeholder})"


def describe(dataset: dict, with_classes: bool = True) -> list[str]:
    """Counts, per-class table (with_classes), size histogram and empty images of a (validated, cleaned) split."""
    images = {img["id"]: img for img in dataset["images"]}
    anns = dataset["annotations"]
    counts = class_counts(dataset)
    buckets, coco_sizes = size_counts(dataset)
    with_boxes = {a["image_id"] for a in anns}
    empty = sorted(i for i in images if i not in with_boxes)

    lines = [
        f"images: {len(images)} ({len(empty)} without boxes)",
        f"annotations: {len(anns)} ({sum(c.crowd for c in counts)} crowd)",
    ]
    if with_classes:
        lines += ["", f"{'id':>6}  {'name':<24} {'boxes':>7} {'crowd':>6} {'images':>7}"]
        lines += [f"{c.id:>6}  {c.name:<24} {c.boxes:>7} {c.crowd:>6} {c.images:>7}" for c in counts]
        lines.append("")
    lines += ["box sizes in original image pixels, sqrt(area) after clipping (crowd boxes left out):"]
    lines += [f"  {bucket:>8}: {count}" for bucket, count in buckets.items()]
    lines.append(
        f"  COCO small (< 32^2): {coco_sizes['small']}, medium: {coco_sizes['medium']}, "
        f"large (>= 96^2): {coco_sizes['large']} (original pixels: the buckets of evaluation's APs, APm, APl)"
    )
    note = empty_size_note(coco_sizes)
    if note is not None:
        lines.append(f"  note: {note}")
    shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
    lines += ["", f"images without boxes: {len(empty)}" + (f" (ids {shown})" if empty else "")]
    return lines


def class_table(splits: list[Split]) -> list[str]:
    """Non-crowd boxes per class in each split, the classes of the first split."""
    counts = {s.name: {c.id: c.boxes for c in class_counts(s.cleaned)} for s in splits}
    lines = [f"{'id':>6}  {'name':<24}" + "".join(f" {s.name:>7}" for s in splits) + "   (boxes, crowd left out)"]
    for c in class_counts(splits[0].cleaned):
        lines.append(f"{c.id:>6}  {c.name:<24}" + "".join(f" {counts[s.name].get(c.id, 0):>7}" for s in splits))
    return lines


def category_mismatches(splits: list[Split]) -> list[str]:
    """Splits whose categories differ from the first's: training stops on them."""
    first = sorted(int(c["id"]) for c in splits[0].cleaned["categories"])
    problems = []
    for split in splits[1:]:
        ids = sorted(int(c["id"]) for c in split.cleaned["categories"])
        if ids != first:
            problems.append(f"problem: {split.name} declares categories {ids[:10]}, {splits[0].name} {first[:10]}; "
                            "both splits must declare the same categories (training stops on this)")
    return problems


def figures(dataset: dict) -> dict[str, Any]:
    """The --json figures of a (cleaned) split, without anchor coverage."""
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


def split_files(args: argparse.Namespace, cfg: Config | None) -> dict[str, tuple[Path, Path]]:
    """split -> (images folder, annotations file): --images/--annotations, else the config's splits that are set."""
    if args.images:
        return {"train": (Path(args.images), Path(args.annotations))}
    assert cfg is not None
    files = {split: (Path(getattr(cfg.data, split).images), Path(getattr(cfg.data, split).annotations))
             for split in SPLITS if getattr(cfg.data, split).annotations}
    if "train" not in files or not cfg.data.train.images:
        source = f"--data {args.data}" if args.data else args.config
        raise ConfigError(f"{source}: data.train.images/annotations are not set; set them or pass --images and "
                          "--annotations")
    return files


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder, overrides = with_data(args.data, args.set)
    cfg = load_config(args.config, overrides) if args.config or folder else None
    try:
        splits = [check_split(name, images, annotations, "--images" if args.images else f"data.{name}.images")
                  for name, (images, annotations) in split_files(args, cfg).items()]
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    several = len(splits) > 1
    for split in splits:
        if several:
            print(f"== {split.name}: {split.annotations} (images in {split.images_dir})")
        else:
            print(f"annotations file: {split.annotations}")
            print(f"images folder:    {split.images_dir}")
        if not split.report.ok:
            print("(statistics below leave out the invalid records)")
        print(categories_line(split))
        print("\n".join(describe(split.cleaned, with_classes=not several)))
        print()
        print(split.report.summary())
        print()
    train = splits[0]
    if several:
        print("\n".join(class_table(splits)))
        print()
    mismatches = category_mismatches(splits)
    rare = rare_classes({s.name: class_counts(s.cleaned) for s in splits})
    for line in [*mismatches, *format_rare_classes(rare, len(train.cleaned["categories"]))]:
        print(line)
    result = figures(train.cleaned)
    result["splits"] = {s.name: {**figures(s.cleaned), "problems": sum(s.report.counts.values())} for s in splits}
    result["rare_classes"] = [vars(c) for c in rare]
    if args.config is not None:
        names = {c["id"]: str(c.get("name", c["id"])) for c in train.cleaned["categories"]}
        coverage = anchor_coverage(train.cleaned, cfg)
        print()
        print("\n".join(format_coverage(coverage, names)))
        result["anchor_coverage"] = coverage.to_dict(names)
    problems = sum(sum(s.report.counts.values()) for s in splits) + len(mismatches)
    result["problems"] = problems
    if args.output_dir:
        out_dir = Path(args.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"histograms: {plot_histograms(train.cleaned, out_dir / 'histograms.png')}")
        if args.draw:
            written = write_previews(cfg, args.config, args.draw, out_dir)
            print(f"previews: {len(written)} training images in {out_dir}")
    if args.json:
        write_check_json(Path(args.json), result)
        print(f"figures: {args.json}")
    return EXIT_CLEAN if problems == 0 else EXIT_PROBLEMS


if __name__ == "__main__":
    sys.exit(run_cli(main))

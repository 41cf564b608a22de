"""Generate a synthetic COCO dataset: the shapes set that `make demo` trains on, or photo-like images.

    python scripts/make_synthetic_dataset.py --output data/synthetic [--seed 0]
    python scripts/make_synthetic_dataset.py --style photos --output DIR [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retinanet.cli.common import run_cli
from retinanet.data.synthetic import make_dataset
from retinanet.data.synthetic_photos import DEFAULT_IMAGE_SIZE, make_photos_dataset

# --style -> (num train, num val, num test, image size as (width, height))
DEFAULTS = {"shapes": (3000, 300, 0, (128, 128)), "photos": (200, 60, 30, DEFAULT_IMAGE_SIZE)}


def _image_size(text: str) -> tuple[int, int]:
    """`128` (a square) or `2048x1371` (width x height)."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"expected N or WIDTHxHEIGHT, got {text!r}")
    return (sizes[0], sizes[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="dataset folder to write")
    parser.add_argument(
        "--style", choices=sorted(DEFAULTS), default="shapes",
        help="shapes: 128 px PNGs for the demo (DIR/{train,val}, DIR/annotations); photos: 2048x1371 JPEGs "
        "in a Roboflow export's layout (DIR/{train,valid,test}/_annotations.coco.json)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, help="training images (shapes 3000, photos 200)")
    parser.add_argument("--num-val", type=int, help="validation images (shapes 300, photos 60: the valid split)")
    parser.add_argument("--num-test", type=int, help="test images (photos only: 30)")
    parser.add_argument("--image-size", type=_image_size, help="N or WIDTHxHEIGHT (shapes 128, square only; photos 2048x1371)")
    parser.add_argument("--force", action="store_true", help="regenerate even if the output is complete")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    num_train, num_val, num_test, size = DEFAULTS[args.style]
    args.num_train = num_train if args.num_train is None else args.num_train
    args.num_val = num_val if args.num_val is None else args.num_val
    args.image_size = size if args.image_size is None else args.image_size
    if args.style == "shapes" and args.num_test is not None:
        parser.error("--num-test: the shapes set has no test split; use --style photos or leave it out")
    if args.style == "shapes" and args.image_size[0] != args.image_size[1]:
        parser.error("--image-size: shapes images are square; give one number")
    args.num_test = num_test if args.num_test is None else args.num_test
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.style == "shapes":
        make_dataset(args.output, args.seed, args.num_train, args.num_val, args.image_size[0], force=args.force)
    else:
        make_photos_dataset(
            args.output, args.seed, args.num_train, args.num_val, args.num_test, args.image_size, force=args.force
        )
    print(f"synthetic dataset in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

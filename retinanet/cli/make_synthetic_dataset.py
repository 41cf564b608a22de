"""Generate the synthetic shapes dataset (COCO format) that `make demo` trains on.

    python scripts/make_synthetic_dataset.py --output data/synthetic [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retinanet.cli.common import run_cli
from retinanet.data.synthetic import make_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="dataset folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-val", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--force", action="store_true", help="regenerate even if the output is complete")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    make_dataset(args.output, args.seed, args.num_train, args.num_val, args.image_size, force=args.force)
    print(f"synthetic dataset in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

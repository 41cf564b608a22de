"""Train RetinaNet from a YAML config.

    python train.py --config configs/demo_cpu.yaml [--output-dir DIR] [--resume] [--set KEY=VALUE ...]

Writes into the output directory: config.yaml (the resolved config), train.log, metrics.jsonl,
TensorBoard event files, checkpoints/last.pt and checkpoints/best.pt, and at the end MODEL_CARD.md
(with model_card.json) and operating_point.json (the max-F1 score thresholds on val).
"""
from __future__ import annotations

import argparse
import sys

from retinanet.cli.common import run_cli
from retinanet.engine.trainer import train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--output-dir", default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last.pt")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return train(args.config, args.set, args.output_dir, args.resume)


if __name__ == "__main__":
    sys.exit(run_cli(main))

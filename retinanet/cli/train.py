"""Train RetinaNet from a YAML config.

    python train.py --config configs/demo_cpu.yaml [--output-dir DIR] [--resume] [--set KEY=VALUE ...]
    python train.py --config configs/sample.yaml --data DIR [--output-dir DIR]   (a Roboflow or COCO export folder)

Writes into the output directory: config.yaml (the resolved config), train.log, metrics.jsonl,
TensorBoard event files, checkpoints/last.pt and checkpoints/best.pt, and at the end MODEL_CARD.md
(with model_card.json) and operating_point.json (the max-F1 score thresholds on val).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retinanet.cli.common import add_data_argument, run_cli, with_data
from retinanet.engine import budget
from retinanet.engine.run_folder import default_output_dir
from retinanet.engine.trainer import train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file")
    add_data_argument(parser)
    parser.add_argument("--output-dir", default=None, help="run folder (default: runs/<config name>; "
                        "with --data, runs/<its folder name>)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last.pt")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """argv None: the process's own command line, whose start-up a time budget counts; a list: a call
    inside a longer process (tests, notebooks), whose budget starts now."""
    started = None if argv is None else budget.CLOCK()
    args = parse_args(argv)
    _, overrides = with_data(args.data, args.set)
    output_dir = args.output_dir
    if output_dir is None and args.data is not None:  # a run per dataset, beside runs/<config name>
        output_dir = str(default_output_dir(args.config).parent / Path(args.data).resolve().name)
    return train(args.config, overrides, output_dir, args.resume, started)


if __name__ == "__main__":
    sys.exit(run_cli(main))

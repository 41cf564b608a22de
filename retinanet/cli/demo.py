"""`make demo`: generate the synthetic shapes set (first time only), then compare focal loss with
alpha-balanced cross-entropy (the paper's Table 1 pair) on configs/demo_cpu.yaml through
scripts/compare_losses.py, and print the comparison table and where the TensorBoard logs are.
The two trainings run side by side (`--jobs 2`, each on half the cores): on 2 cores that is
faster than one after the other with two threads each. Running it again reuses the finished
runs in runs/demo."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from retinanet.cli.common import run_cli
from retinanet.cli.compare_losses import main as compare_losses
from retinanet.data.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[2]

CONFIG = "configs/demo_cpu.yaml"
OUTPUT = "runs/demo"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parse_args(argv)
    start = time.time()
    os.chdir(REPO)  # the config's dataset paths are relative to the repository
    make_dataset(REPO / "data" / "synthetic", seed=0, num_train=3000, num_val=300, image_size=128)
    print(f"comparing focal loss with alpha-balanced CE on {CONFIG} -> {OUTPUT}")
    try:
        return compare_losses(
            ["--config", CONFIG, "--losses", "focal,bce:alpha=0.75", "--seeds", "1", "--jobs", "2",
             "--output-dir", OUTPUT]
        )
    finally:
        print(f"demo finished in {(time.time() - start) / 60:.1f} min")
        print(f"TensorBoard: tensorboard --logdir {OUTPUT}")


if __name__ == "__main__":
    sys.exit(run_cli(main))

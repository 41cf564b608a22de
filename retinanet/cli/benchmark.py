"""Training and inference throughput of our RetinaNet against torchvision's, lever by lever, plus
data-loading and COCO-evaluation time. Prints a table and writes JSON.

    python scripts/benchmark.py [--device cpu|cuda] [--backbone resnet50] [--size 512] [--batch-size 4]
        [--iters 5] [--warmup 1] [--workers 2] [--amp auto|none|bf16] [--compile] [--rows LEVER,...]
        [--loader-batches 20] [--eval-images 300] [--peak-tflops T] [--json FILE] [--profile DIR]
    python scripts/benchmark.py --loader-config CONFIG [--set KEY=VALUE ...] [--loader-epochs 2]
        [--loader-modes full,none,ram,disk] [--json FILE]     (the training loader alone, on a config's data)

The rows and how each is set up: `retinanet/studies/benchmark.py`; measured figures: docs/benchmark.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from retinanet.cli.common import run_cli
from retinanet.studies.benchmark import LOADER_MODES, run_benchmark


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="resnet50", choices=("resnet18", "resnet34", "resnet50", "resnet101"))
    parser.add_argument("--size", type=int, default=512, help="square input side in pixels")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--iters", type=int, default=5, help="timed rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (>= 1: the first counts FLOPs)")
    parser.add_argument("--workers", type=int, default=2, help="data loader workers for the loader row")
    parser.add_argument("--amp", choices=("auto", "none", "bf16"), default="auto", help="autocast of the `ours` row")
    parser.add_argument("--compile", action="store_true", help="add a row with torch.compile on the `ours` setting")
    parser.add_argument(
        "--rows", default="",
        help="comma-separated lever rows, ours_compiled, onnxruntime, openvino_f32, openvino_bf16, openvino_int8 "
        "(default: all); torchvision, torchvision_best, ours_fp32 and ours always run"
    )
    parser.add_argument("--loader-batches", type=int, default=20, help="batches timed in the loader row (0 = skip)")
    parser.add_argument("--eval-images", type=int, default=300, help="images in the COCO-eval timing (0 = skip)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="accelerator peak for MFU (default: by GPU name)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--profile", type=Path, default=None, metavar="DIR",
        help="after timing, profile one train step and one inference of `ours` and of torchvision_best (eager): "
        "phase times printed, op tables and Chrome traces in DIR",
    )
    parser.add_argument("--loader-config", type=Path, default=None, metavar="CONFIG",
                        help="time only the training loader, on this config's data and settings")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="overrides of --loader-config's config, e.g. data.num_workers=0 input.min_size=[512]")
    parser.add_argument("--loader-epochs", type=int, default=2, help="--loader-config: epochs timed per mode")
    parser.add_argument("--loader-modes", default="full,none,ram,disk",
                        help="--loader-config: full (every image decoded in full, no cache) and data.cache none, "
                        "ram, disk, comma-separated")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.iters < 1:
        parser.error("--warmup and --iters must be >= 1")
    if args.set and args.loader_config is None:
        parser.error("--set changes --loader-config's config; give --loader-config CONFIG")
    modes = [m.strip() for m in args.loader_modes.split(",") if m.strip()]
    if not modes or not set(modes) <= set(LOADER_MODES) or len(set(modes)) != len(modes):
        parser.error(f"--loader-modes {args.loader_modes!r}: choose from {', '.join(LOADER_MODES)}, each once")
    if args.loader_epochs < 1:
        parser.error("--loader-epochs must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    # The output folders are created now, so a bad path stops before minutes of timing, not after.
    for flag, folder in (("--json", args.json.parent if args.json else None), ("--profile", args.profile)):
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                parser.error(f"{flag}: cannot create the folder {folder} ({exc.strerror}); give a writable folder path")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main))

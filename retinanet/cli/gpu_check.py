"""Checks that this code runs right on a CUDA device, in one call: one table, one JSON, exit 1 on a failure.

    python scripts/gpu_check.py [--device cuda|cpu] [--json gpu_check.json] [--work-dir DIR] [--only CHECK,...]

`--device cpu` runs every check that needs no CUDA (the test suite runs it). The checks:
`retinanet/studies/gpu_check.py`; what they cover and how to read them: docs/multi_gpu.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from retinanet.cli.common import run_cli
from retinanet.studies.gpu_check import CHECKS, run_gpu_check


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="where to write the results")
    parser.add_argument("--work-dir", type=Path, default=None, help="runs, logs and tracebacks (default: a temp folder)")
    parser.add_argument("--only", default="", help="comma-separated check names (default: all)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; use --device cpu for the checks that need none")
    names = {c.name for c in CHECKS}
    args.only = {n.strip() for n in args.only.split(",") if n.strip()} or None
    if args.only and not args.only <= names:
        parser.error(f"--only: unknown {sorted(args.only - names)}; choose from {', '.join(c.name for c in CHECKS)}")
    if not args.json.parent.is_dir():
        parser.error(f"--json: the folder {args.json.parent} does not exist; give a path in an existing folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.work_dir is not None:
        return run_gpu_check(device, args.work_dir, args.json, args.only)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        return run_gpu_check(device, Path(work), args.json, args.only)


if __name__ == "__main__":
    sys.exit(run_cli(main))

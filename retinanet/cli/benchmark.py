"""Training and inference throughput of our RetinaNet against torchvision's, lever by lever, plus
data-loading and COCO-evaluation time. Prints a table and writes JSON.

    python scripts/benchmark.py [--device cpu|cuda] [--backbone resnet50] [--size 512] [--batch-size 4]
        [--iters 5] [--warmup 1] [--workers 2] [--amp auto|none|bf16] [--compile] [--rows LEVER,...]
        [--loader-batches 20] [--eval-images 300] [--peak-tflops T] [--json FILE]

Every row sees the same random size x size images with 1-8 random boxes each, and the same weights
(torchvision's random init, copied into ours). Both models are set up as for fine-tuning from
ImageNet: frozen BatchNorm, stem and layer1 frozen (torchvision's trainable_backbone_layers=3), P6
from P5 (torchvision v1), 256-channel 4-conv heads, 80 classes.

- `torchvision`: `torchvision.models.detection.RetinaNet` as `retinanet_resnet50_fpn` builds it with a
  backbone checkpoint (min_size = max_size = size, so its transform does not resize), fp32, default
  memory format, SGD momentum 0.9 (its references). Train step: model(images, targets), losses
  summed, backward, step. Inference: model.eval()(images). Its transform normalizes inside the step;
  ours does that in the data loader (`loader` row).
- `torchvision_best`: the same torchvision model at its own best on this hardware, what a torchvision
  user gets in two lines: bf16 autocast where the hardware has bf16 units (CUDA, AMX; fp32 elsewhere),
  channels_last, and torch.compile with --compile. The table gives every row against both.
- `ours_*`: build_model / build_criterion / build_postprocess from the paper's recipe config, the
  optimizer of `engine.build_optimizer` (fused SGD), `engine.autocast` and `engine.place_model`.
  Train step: `engine.trainer.train_step`, the step training runs. Inference: `engine.predict` (forward and
  the batched PostProcess). One row per lever: fp32 or bf16 autocast, NCHW or channels_last, and
  with --compile torch.compile on the recommended setting (its JSON adds compile_s and
  compile_break_even_steps: the train steps whose gain over `ours` repays the compile).
- `ours`: the recommended setting, channels_last plus `--amp` (auto: bf16 on CUDA and on CPUs with
  AMX; fp32 on other CPUs, where oneDNN's bf16 convolutions are slower than fp32 ones).

Timing interleaves the rows: every round runs one train step of each row, then one inference of
each, so load from other processes spreads over all rows alike. A figure is the median over
`--iters` rounds after `--warmup` rounds (CUDA synchronized around every step). The first warm-up
train step counts FLOPs (torch.utils.flop_counter, forward + backward); on CUDA the table adds MFU
against the GPU's dense bf16 peak and the peak memory of a step (model and optimizer state plus
what the step allocates).

`loader`: images/s of `data.loaders.build_train_loader` with `--workers` workers over a synthetic
set at size x size (PNG decode, flip, resize, normalize, pad), from the first batch to the last.
`coco_eval`: seconds for `CocoEvaluator` update + compute on 100 generated detections per image
of a synthetic val set, per backend (pycocotools, faster-coco-eval when installed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from retinanet.cli.common import run_cli
from retinanet.studies.benchmark import run_benchmark


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
        "--rows", default="", help="comma-separated lever rows (default: all); torchvision, ours_fp32 and ours always run"
    )
    parser.add_argument("--loader-batches", type=int, default=20, help="batches timed in the loader row (0 = skip)")
    parser.add_argument("--eval-images", type=int, default=300, help="images in the COCO-eval timing (0 = skip)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="accelerator peak for MFU (default: by GPU name)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.iters < 1:
        parser.error("--warmup and --iters must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""Export a checkpoint to one self-contained ONNX file: network, anchors, decoding, NMS and metadata.

    python scripts/export.py --checkpoint CKPT [--output model.onnx] [--opset 18] [--dynamic] [--batch-size 1]

The graph takes `images` (N, 3, H, W), normalized and padded as `prepare_images` makes them, and
`image_sizes` (N, 2), each image's resized (H, W) before padding; it returns `boxes` (N, D, 4, xyxy in
input pixels), `scores` (N, D), `labels` (N, D) and `num_detections` (N,), D = detections_per_img.
Without --dynamic the graph takes exactly --batch-size images of the largest padded size (max_size
rounded up to size_divisible); with it N, H and W are free. Run it with `scripts/predict.py --model`
or `retinanet.modeling.onnx_detector.OnnxDetector`; docs/deploy.md lists the metadata keys.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retinanet.cli.common import run_cli
from retinanet.engine.deploy import export_checkpoint
from retinanet.modeling.export import DEFAULT_OPSET


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by train.py")
    parser.add_argument("--output", type=Path, default=None, help="the .onnx file (default: the checkpoint's path, .onnx)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument("--dynamic", action="store_true", help="batch size, height and width free")
    parser.add_argument("--batch-size", type=int, default=1, help="images per batch of a static graph")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = export_checkpoint(Path(args.checkpoint), args.output, args.opset, args.dynamic, args.batch_size)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

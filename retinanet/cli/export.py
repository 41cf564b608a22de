"""Export a checkpoint to one self-contained file: network, anchors, decoding, NMS and metadata.

    python scripts/export.py --checkpoint CKPT [--output model.onnx] [--opset 18] [--dynamic] [--batch-size 1]
    python scripts/export.py --checkpoint CKPT --format openvino [--output model.xml]          (OpenVINO IR, f32)
    python scripts/export.py --checkpoint CKPT --int8 --calibration-config CONFIG [--calibration-images 100]

The graph takes `images` (N, 3, H, W), normalized and padded as `prepare_images` makes them, and
`image_sizes` (N, 2), each image's resized (H, W) before padding; it returns `boxes` (N, D, 4, xyxy in
input pixels), `scores` (N, D), `labels` (N, D) and `num_detections` (N,), D = detections_per_img.
Without --dynamic the graph takes exactly --batch-size images of the largest padded size (max_size
rounded up to size_divisible); with it N, H and W are free. BatchNorm is folded into the convolution
weights. --int8 quantizes with NNCF (post-training, calibrated on CONFIG's data.train images) and
writes an OpenVINO IR. Run the file with `scripts/predict.py --model` (`--runtime openvino` for
OpenVINO) or `retinanet.deploy.onnx_detector.OnnxDetector` / `openvino_detector.OpenVinoDetector`;
docs/deploy.md lists the metadata keys.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retinanet.cli.common import run_cli
from retinanet.deploy.export import DEFAULT_OPSET
from retinanet.deploy.export_checkpoint import FORMATS, check_request, export_checkpoint
from retinanet.deploy.quantize import DEFAULT_CALIBRATION_IMAGES, Calibration


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by train.py")
    parser.add_argument("--output", type=Path, default=None,
                        help="the file (default: the checkpoint's path, .onnx, .xml or _int8.xml)")
    parser.add_argument("--format", default=None, help=f"{' or '.join(FORMATS)} (default: onnx; openvino with --int8)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument("--dynamic", action="store_true", help="batch size, height and width free")
    parser.add_argument("--batch-size", type=int, default=1, help="images per batch of a static graph")
    parser.add_argument("--int8", action="store_true", help="INT8 OpenVINO IR by NNCF post-training quantization")
    parser.add_argument("--calibration-config", type=Path, default=None, metavar="CONFIG",
                        help="--int8: YAML config whose data.train images calibrate the quantization")
    parser.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                        help=f"--int8: number of calibration images (default {DEFAULT_CALIBRATION_IMAGES})")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fmt = args.format or ("openvino" if args.int8 else "onnx")
    calibration = Calibration(args.calibration_config, args.calibration_images) if args.calibration_config else None
    check_request(fmt, calibration, args.int8)
    path = export_checkpoint(Path(args.checkpoint), args.output, args.opset, args.dynamic, args.batch_size, fmt,
                             calibration)
    print(f"wrote {path}" + (" (INT8, calibrated on "
                             f"{calibration.images} images of {calibration.config}'s data.train)" if calibration else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""Run a checkpoint on an image or a folder of images through `retinanet.Detector`.

    python scripts/predict.py --checkpoint runs/demo_cpu/checkpoints/best.pt --input IMAGE_OR_DIR \
        [--output-dir DIR] [--score-thresh 0.3] [--device auto]
    python scripts/predict.py --model model.onnx --input IMAGE_OR_DIR ...   (an exported file, onnxruntime on CPU)
    python scripts/predict.py --model model.onnx|model.xml --runtime openvino [--precision auto|f32|bf16] ...

Score thresholds: by default the operating point stored in the checkpoint's run folder
(`operating_point.json` beside `checkpoints/`, written by train.py and by evaluate.py --target-* or
--cost-fn; for --model, the one exported into the file's metadata), per class when it has them;
`--score-thresh` sets one threshold for every class; without either, 0.3. The thresholds used are printed.

Score drift (checkpoints): when the run's model card stores the val score distribution, the scores and the
detections per image on these images (before the thresholds) are compared with it, and a warning
with the figures and what to do is printed when they differ by more than `retinanet.evaluation.drift`'s
bound; on fewer than `drift.MIN_IMAGES` (50) images it only says that they are too few to judge.

Precision: eval.amp of the checkpoint's config, none (fp32) unless `--set eval.amp=auto|bf16`: the
same detections on every machine, and those of the exported file (docs/speed.md).

Writes every image with its boxes, class names and scores drawn, and `detections.json`
(COCO results with the checkpoint's category ids; `image_id` is the position in the sorted
file list, `file_name` names the image and `amp` the precision it ran under).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from retinanet.data.decode import decode_for_input, load_image, upright_size
from retinanet.modeling.detector import Detector
from retinanet.deploy.exported_detector import ExportedDetector
from retinanet.deploy.load import RUNTIMES, open_model
from retinanet.deploy.openvino_detector import PRECISIONS
from retinanet.engine.checkpoint import Checkpoint, load_model_weights
from retinanet.engine.runtime import autocast, place_model, resolve_device, resolve_eval_amp
from retinanet.evaluation.drift import check_drift, format_drift
from retinanet.evaluation.model_card import load_model_card
from retinanet.evaluation.operating_point import (
    FILE_NAME, OperatingPointReport, keep_mask, load_report, thresholds_for,
)
from retinanet.cli.common import run_cli
from retinanet.evaluation.evaluator import detections_to_coco
from retinanet.structures import Detections
from retinanet.evaluation.visualize import draw_detections

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
DEFAULT_SCORE_THRESH = 0.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="checkpoint written by train.py")
    model.add_argument("--model", help="ONNX file or OpenVINO IR (.xml) written by scripts/export.py (CPU)")
    parser.add_argument("--runtime", choices=RUNTIMES, default=None,
                        help="--model: onnxruntime (default for .onnx) or openvino (default for .xml)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="--runtime openvino: float precision (auto: bf16 where the CPU has AMX)")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output-dir", default="predictions")
    parser.add_argument(
        "--score-thresh", type=float, default=None,
        help=f"minimum score for every class (default: the run's {FILE_NAME}, else {DEFAULT_SCORE_THRESH})",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="overrides of the checkpoint's config, e.g. eval.amp=bf16 (default none: fp32)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser.parse_args(argv)


def list_images(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return files
        raise FileNotFoundError(f"--input {path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    raise FileNotFoundError(f"--input {path}: no such file or folder")


def choose_thresholds(
    score_thresh: float | None, read_report: Callable[[], OperatingPointReport | None], where: str, missing: str,
    ckpt_iteration: int | None, categories: list[dict],
) -> tuple[list[float], str]:
    """One score threshold per contiguous label, and a line saying where they come from.

    `read_report()` gives the operating point at `where` (None: `missing` says why there is none);
    it is not read when --score-thresh is given.
    """
    k = len(categories)
    if score_thresh is not None:
        return [score_thresh] * k, f"score threshold {score_thresh:g} for every class (--score-thresh)"
    report = read_report()
    values, how = thresholds_for(report, [c["id"] for c in categories]) if report is not None else ([None] * k, "")
    if all(v is None for v in values):
        why = missing if report is None else f"{where} has no defined threshold"
        return [DEFAULT_SCORE_THRESH] * k, (
            f"{why}; using the default score threshold {DEFAULT_SCORE_THRESH:g} for every class "
            "(evaluate.py --target-precision P stores one; --score-thresh sets one)"
        )
    values = [DEFAULT_SCORE_THRESH if v is None else v for v in values]
    listed = ", ".join(f"{c['name']} {v:.5g}" for c, v in zip(categories, values))
    note = f"score thresholds from {where} ({report.describe_target()}, {how}): {listed}"
    iteration = report.source.get("iteration")
    if iteration is not None and iteration != ckpt_iteration:
        note += (f" [found for {report.source.get('checkpoint')} at iteration {iteration}; this checkpoint is at "
                 f"iteration {ckpt_iteration}]")
    return values, note


@dataclass(frozen=True)
class CheckpointDetector:
    """A checkpoint's `Detector` under eval.amp's autocast, with its input sizes as an `ExportedDetector` has them."""

    detector: Detector
    device: torch.device
    amp: str

    @property
    def min_size(self) -> int:
        return self.detector.min_size

    @property
    def max_size(self) -> int:
        return self.detector.max_size

    def __call__(
        self, images: list[torch.Tensor], orig_sizes: list[tuple[int, int]] | None = None
    ) -> list[dict[str, torch.Tensor]]:
        with autocast(self.device, self.amp):
            return self.detector(images, orig_sizes)


def load_checkpoint_model(
    ckpt_path: Path, device_name: str, overrides: list[str]
) -> tuple[CheckpointDetector, list[dict], tuple, str]:
    """The PyTorch Detector (under eval.amp), its categories, where its operating point is, and the precision."""
    ckpt = Checkpoint.load(ckpt_path)
    cfg = ckpt.build_config(f"{ckpt_path} (config)", overrides)
    device = resolve_device(device_name)
    detector = Detector.from_config(cfg, num_classes=len(ckpt.categories))
    load_model_weights(detector.model, ckpt.inference_weights, ckpt_path)
    detector.model = place_model(detector.model, device, cfg.train.channels_last)  # as evaluate.py places it
    detector.eval()
    amp, why = resolve_eval_amp(cfg.eval.amp, device, f"{ckpt_path} (config)")  # not train.amp: see eval.amp
    print(f"precision {amp} ({why})")
    run_dir = ckpt_path.parent.parent
    source = (lambda: load_report(run_dir), str(run_dir / FILE_NAME), f"no {FILE_NAME} in {run_dir}", ckpt.iteration)
    return CheckpointDetector(detector, device, amp), ckpt.categories, source, amp


def load_exported_model(path: Path, runtime: str | None, precision: str) -> tuple[ExportedDetector, list[dict], tuple]:
    """The exported file's detector, its categories, and the operating point exported into its metadata."""
    detector = open_model(path, runtime, precision)
    print(f"runtime {detector.describe()}")
    raw = detector.metadata.operating_point
    source = (lambda: OperatingPointReport.from_dict(raw) if raw is not None else None, f"{path} (metadata)",
              f"no operating point in {path}'s metadata", detector.metadata.source.get("iteration"))
    return detector, detector.categories, source


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model:
        detector, categories, threshold_source = load_exported_model(Path(args.model), args.runtime, args.precision)
        amp = detector.amp
    else:
        detector, categories, threshold_source, amp = load_checkpoint_model(Path(args.checkpoint), args.device, args.set)

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [c["name"] for c in categories]
    category_ids = [c["id"] for c in categories]
    thresholds, note = choose_thresholds(args.score_thresh, *threshold_source, categories)
    print(note)
    records = []
    all_scores: list[float] = []
    per_image: list[int] = []
    for image_id, path in enumerate(list_images(Path(args.input))):
        # Read as the evaluation loader reads the val split: the same decode for the same resize target.
        orig_hw = upright_size(path)
        pixels = decode_for_input(path, orig_hw, detector.min_size, detector.max_size)
        det = detector([torch.from_numpy(pixels).permute(2, 0, 1)], [orig_hw])[0]  # uint8: no float round trip
        image = pixels if pixels.shape[:2] == orig_hw else load_image(path)  # drawn at full size
        all_scores += det["scores"].tolist()
        per_image.append(int(det["scores"].numel()))
        keep = keep_mask(det["scores"], det["labels"], thresholds)
        kept = Detections(det["boxes"][keep].cpu(), det["scores"][keep].cpu(), det["labels"][keep].cpu())
        drawn = draw_detections(image, kept.boxes_xyxy, [names[int(l)] for l in kept.labels], kept.scores.tolist())
        Image.fromarray(drawn).save(out_dir / f"{path.stem}.png")
        records += [{**r, "file_name": path.name, "amp": amp} for r in detections_to_coco(image_id, kept, category_ids)]
        print(f"{path.name}: {int(keep.sum())} detections")
    (out_dir / "detections.json").write_text(json.dumps(records))
    print(f"wrote {out_dir}/ (drawn images and detections.json)")
    card = load_model_card(Path(args.checkpoint).parent.parent) if args.checkpoint else None
    if card is not None and card.score_distribution is not None:
        drift = format_drift(check_drift(card.score_distribution, all_scores, per_image), len(per_image))
        if drift:
            print(drift)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

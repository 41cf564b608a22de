"""COCO evaluation of a checkpoint, or of an existing COCO results file, on the val, test or train split.

    python evaluate.py --config FILE --checkpoint CKPT [--split val|test|train] [--output-dir DIR] [--set KEY=VALUE ...]
    python evaluate.py --config FILE --checkpoint CKPT --data DIR --split test   (a Roboflow or COCO export folder)
    python evaluate.py --config FILE --predictions RESULTS.json [--output-dir DIR]
    python evaluate.py --config FILE --model model.onnx [--output-dir DIR]   (an exported file, onnxruntime on CPU)
    python evaluate.py --config FILE --model model.onnx|model.xml --runtime openvino [--precision auto|f32|bf16]
    add --target-precision P, --target-recall R or --cost-fn C [--cost-fp F] to choose score thresholds
    (operating point; --cost-fn: the least C x missed + F x false positives, F = 1 by default)

The output folder is named after the split: RUN/eval_<split> for a run's checkpoint RUN/checkpoints/X.pt,
else <stem>_eval_<split> beside the evaluated file; --output-dir chooses another. It gets metrics.json
(AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, per_class; for --model also `runtime`, the engine and
precision it ran under) and, with a checkpoint or a model, detections.json (COCO results: original image
and category ids). With a target: OUTPUT_DIR/operating_point.json and, for a run's checkpoint evaluated
on val, operating_point.json and MODEL_CARD.md in its run folder, where predict.py finds them; the run's
files are never written from another split (thresholds are chosen on val, and the test split stays
unseen). Then the report (docs/evaluation_report.md): OUTPUT_DIR/report.html with curves, confusion
matrix, error types and worst images, at the run's operating point (or --score-thresh, else max F1).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retinanet.data.coco import CocoDetection
from retinanet.data.layouts import SPLITS, DataFolder
from retinanet.data.loaders import DatasetError, build_dataset, build_val_loader
from retinanet.config import Config, ConfigError, load_config, replace
from retinanet.fileio import RunFileError
from retinanet.deploy.exported_detector import ExportedDetector
from retinanet.deploy.load import RUNTIMES, open_model
from retinanet.deploy.openvino_detector import PRECISIONS
from retinanet.modeling.preprocess import IMAGENET_MEAN, IMAGENET_STD
from retinanet.engine.runtime import place_model, resolve_device, resolve_eval_amp
from retinanet.engine.inference import evaluate
from retinanet.engine.checkpoint import Checkpoint, load_model_weights
from retinanet.cli.common import add_data_argument, run_cli, with_data
from retinanet.evaluation.evaluator import STAT_NAMES, CocoEvaluator, format_metrics_table
from retinanet.modeling.model import build_model, build_postprocess
from retinanet.evaluation.model_card import update_model_card
from retinanet.evaluation.operating_point import (
    IOU, OperatingPointReport, format_operating_point_table, load_report, save_report, search,
)
from retinanet.evaluation.report import Thresholds, fixed_thresholds, max_f1_thresholds, thresholds_from, write_report

log = logging.getLogger("retinanet")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (its data.<split> is evaluated)")
    add_data_argument(parser)
    parser.add_argument("--split", choices=SPLITS, default="val",
                        help="the split to evaluate (default val); test: the held-out split, never used in training")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint written by train.py")
    source.add_argument("--predictions", help="COCO results JSON to evaluate without a model")
    source.add_argument("--model", help="ONNX file or OpenVINO IR (.xml) written by scripts/export.py; its own "
                        "preprocessing is used")
    parser.add_argument("--runtime", choices=RUNTIMES, default=None,
                        help="--model: onnxruntime (default for .onnx) or openvino (default for .xml)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="--runtime openvino: float precision (auto: bf16 where the CPU has AMX)")
    parser.add_argument("--output-dir", default=None, help="where to write metrics.json and the report (default: RUN/eval_SPLIT "
                        "for RUN/checkpoints/X.pt; else STEM_eval_SPLIT beside --checkpoint, --predictions or --model)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--target-precision", metavar="P", help="score thresholds: most recall at precision >= P")
    target.add_argument("--target-recall", metavar="R", help="the highest score thresholds with recall >= R")
    target.add_argument("--cost-fn", metavar="C", help="score thresholds of least C x missed + cost-fp x false positives")
    parser.add_argument("--cost-fp", metavar="F", default="1", help="cost of a false positive with --cost-fn (default 1)")
    parser.add_argument("--score-thresh", type=float, default=None, metavar="T",
                        help="report: score threshold of the confusion matrix and worst images (default: operating point)")
    parser.add_argument("--worst", type=int, default=12, metavar="N", help="report: draw the N worst images")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser.parse_args(argv)


def metrics_for_file(metrics: dict[str, Any], amp: str | None) -> dict[str, Any]:
    """The documented metrics.json layout: the 12 COCO numbers, per_class keyed by category name, and
    `amp`, the precision the detections were computed under (None for a --predictions file)."""
    out = {k: None if math.isnan(metrics[k]) else metrics[k] for k in STAT_NAMES}
    out["per_class"] = metrics["per_class"]
    out["amp"] = amp
    return out


def parse_target(args: argparse.Namespace) -> dict[str, float] | None:
    """--target-precision / --target-recall / --cost-fn -> search() keywords, checked."""
    if args.cost_fn is not None:
        costs = {}
        for flag, key in (("--cost-fn", "cost_fn"), ("--cost-fp", "cost_fp")):
            try:
                costs[key] = float(getattr(args, key))
            except ValueError:
                costs[key] = math.nan
            if not costs[key] > 0 or math.isinf(costs[key]):
                raise ConfigError(f"{flag} {getattr(args, key)}: must be a number > 0, e.g. {flag} 5")
        return costs
    for flag, key in (("--target-precision", "target_precision"), ("--target-recall", "target_recall")):
        raw = getattr(args, key)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"{flag} {raw}: must be a number in (0, 1], e.g. {flag} 0.9")
        return {key: value}
    return None


def load_results(path: Path) -> list[dict]:
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--predictions {path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"--predictions {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(records, list) or any(not {"image_id", "category_id", "bbox", "score"} <= set(r) for r in records):
        raise DatasetError(
            f"--predictions {path}: expected a COCO results list of {{image_id, category_id, bbox, score}} records"
        )
    return records


def with_model_input(cfg: Config, detector: ExportedDetector) -> Config:
    """The config with the exported model's preprocessing, so the val set is prepared as the file expects."""
    pre = detector.metadata.preprocess
    if (tuple(pre["mean"]), tuple(pre["std"])) != (IMAGENET_MEAN, IMAGENET_STD):
        raise RunFileError(f"{detector.path}: normalization mean/std {pre['mean']}/{pre['std']} differ from the "
                           "evaluation loader's ImageNet ones; evaluate it with its detector in your own loop")
    size = int(pre["min_size"])
    return replace(cfg, input=dataclasses.replace(cfg.input, min_size=(size,), eval_min_size=size,
                                                   max_size=int(pre["max_size"]),
                                                   size_divisible=int(pre["size_divisible"])))


def evaluate_onnx(
    detector: ExportedDetector, cfg: Config, val_set: CocoDetection, evaluator: CocoEvaluator
) -> tuple[dict[str, Any], list[dict]]:
    """COCO metrics and result records of an exported model, through the loop that evaluates checkpoints.

    The graph does all but the preparation (`with_model_input`): the model is the identity and
    `detect_prepared` stands in for PostProcess.
    """
    if detector.category_ids != val_set.category_map.category_ids:
        raise DatasetError(
            f"{cfg.data.val.annotations}: categories {val_set.category_map.category_ids[:10]} differ from the "
            f"model's {detector.category_ids[:10]} ({detector.path}); evaluate on a set with the training categories"
        )
    metrics, results, _ = evaluate(
        nn.Identity(), detector.detect_prepared, build_val_loader(cfg, val_set), evaluator,
        val_set.category_map.category_ids, torch.device("cpu"),
    )
    return metrics, results


def check_inputs(args: argparse.Namespace) -> None:
    """The arguments that cost nothing to check, before any config, checkpoint or dataset is read."""
    for flag, value in (("--checkpoint", args.checkpoint), ("--predictions", args.predictions), ("--model", args.model)):
        if value is not None and not Path(value).is_file():
            raise FileNotFoundError(f"{flag} {value}: file not found; check the path")
    if args.score_thresh is not None and not 0.0 <= args.score_thresh <= 1.0:
        raise ConfigError(f"--score-thresh {args.score_thresh}: must be in [0, 1], e.g. --score-thresh 0.3")
    if args.worst < 0:
        raise ConfigError(f"--worst {args.worst}: must be >= 0 images")


def run_folder_of(args: argparse.Namespace) -> Path | None:
    """The run folder of a checkpoint in RUN/checkpoints/, where the run's operating point and card live."""
    if args.checkpoint is None or Path(args.checkpoint).parent.name != "checkpoints":
        return None
    return Path(args.checkpoint).parent.parent


def output_dir(args: argparse.Namespace) -> Path:
    """--output-dir, else a folder named after the split: RUN/eval_<split>, or <stem>_eval_<split> beside the file.

    The run folder itself holds what training chose on val (operating_point.json, MODEL_CARD.md): another
    split's results never go there.
    """
    run_dir = run_folder_of(args)
    if args.output_dir is None:
        if run_dir is not None:
            return run_dir / f"eval_{args.split}"
        source = Path(args.checkpoint or args.predictions or args.model)
        return source.parent / f"{source.stem}_eval_{args.split}"
    out_dir = Path(args.output_dir)
    if args.split != "val" and run_dir is not None and out_dir.resolve() == run_dir.resolve():
        raise ConfigError(f"--output-dir {out_dir}: the run folder keeps what training chose on val; write the "
                          f"{args.split} split's results elsewhere (the default is {run_dir / f'eval_{args.split}'})")
    return out_dir


def split_paths(cfg: Config, args: argparse.Namespace, folder: DataFolder | None) -> Config:
    """The config whose data.val is the --split to evaluate (build_dataset augments only "train"), its paths checked."""
    split = args.split
    paths = getattr(cfg.data, split)
    if folder is not None and not folder.has(split) and not paths.annotations:  # an explicit --set data.* wins
        raise ConfigError(f"--split {split}: --data {folder.root} has no {split} split ({folder.looked_for(split)})")
    if not paths.annotations or not paths.images:
        raise ConfigError(f"--split {split}: data.{split}.images/annotations are not set in {args.config}; pass --data "
                          f"DIR or --set data.{split}.images=DIR data.{split}.annotations=FILE")
    for key in ("images", "annotations"):
        if not Path(getattr(paths, key)).exists():
            raise ConfigError(f"{args.config}: data.{split}.{key}: {getattr(paths, key)} does not exist; check the path")
    return cfg if split == "val" else replace(cfg, **{"data.val": paths})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    target = parse_target(args)
    check_inputs(args)
    folder, overrides = with_data(args.data, args.set)
    cfg = load_config(args.config, overrides)
    cfg = split_paths(cfg, args, folder)
    out_dir = output_dir(args)
    records = load_results(Path(args.predictions)) if args.predictions else None
    detector = open_model(Path(args.model), args.runtime, args.precision) if args.model else None
    if detector is not None:
        log.info("runtime %s", detector.describe())
        cfg = with_model_input(cfg, detector)
    if args.checkpoint:
        ckpt_path = Path(args.checkpoint)
        device = resolve_device(cfg.train.device)
        amp, why = resolve_eval_amp(cfg.eval.amp, device, args.config)
        ckpt = Checkpoint.load(ckpt_path)
    val_set = build_dataset(cfg, "val", args.config)
    evaluator = CocoEvaluator(val_set.coco, backend=cfg.eval.backend, keep_matches=True)
    print(f"evaluating the {args.split} split: {val_set.annotations_file}")

    out_dir.mkdir(parents=True, exist_ok=True)
    if records is not None:
        evaluator.update(records)
        metrics = evaluator.compute()
        amp = None
    elif detector is not None:
        amp = detector.amp
        metrics, results = evaluate_onnx(detector, cfg, val_set, evaluator)
        (out_dir / "detections.json").write_text(json.dumps(results))
    else:
        print(f"evaluation precision {amp} ({why})")
        ckpt_ids = ckpt.category_ids
        if ckpt_ids and ckpt_ids != val_set.category_map.category_ids:
            raise DatasetError(
                f"{val_set.annotations_file}: categories {val_set.category_map.category_ids[:10]} differ from the "
                f"checkpoint's {ckpt_ids[:10]}; evaluate on a set with the training categories"
            )
        cfg = replace(cfg, **{"model.num_classes": len(ckpt_ids) or val_set.category_map.num_classes})
        model = place_model(build_model(cfg), device, cfg.train.channels_last)
        load_model_weights(model, ckpt.inference_weights, ckpt_path)
        metrics, results, _ = evaluate(
            model, build_postprocess(cfg), build_val_loader(cfg, val_set), evaluator,
            val_set.category_map.category_ids, device, amp,
        )
        (out_dir / "detections.json").write_text(json.dumps(results))
        log.info("wrote %d detections to %s", len(results), out_dir / "detections.json")

    runtime = {"runtime": detector.describe()} if detector is not None else {}  # what an exported file ran under
    (out_dir / "metrics.json").write_text(json.dumps({**metrics_for_file(metrics, amp), **runtime}, indent=2))
    print(format_metrics_table(metrics))
    print(f"metrics: {out_dir / 'metrics.json'}")
    if target is not None:
        names = {entry["id"]: name for name, entry in metrics["per_class"].items()}
        source = {"split": str(val_set.annotations_file)}
        run_dir = run_folder_of(args)
        if args.predictions or args.model:
            source["predictions" if args.predictions else "model"] = str(args.predictions or args.model)
        else:
            source["checkpoint"] = str(ckpt_path.relative_to(run_dir)) if run_dir else str(ckpt_path)
            source["iteration"] = ckpt.iteration
        report = search(evaluator.matches(iou=IOU), names, source=source, **target)
        print(format_operating_point_table(report))
        # A run's checkpoint stores its operating point and card with the run, when they are chosen on val.
        keep_with_run = run_dir is not None and args.split == "val"
        written = save_report(report, out_dir, *([run_dir] if keep_with_run else []))
        if keep_with_run:
            facts = {"config": ckpt.config, "train_seconds": ckpt.train_seconds, "iteration": ckpt.iteration}
            written.append(
                update_model_card(run_dir, cfg, val_set.summary(), metrics, report, ckpt_path, facts, evaluator)
            )
        elif run_dir is not None:
            print(f"the run's operating point ({run_dir / 'operating_point.json'}) stays the one chosen on val")
        print("operating point: " + ", ".join(str(p) for p in written))
    report_thresholds = _report_thresholds(args, evaluator, metrics, report if target is not None else None)
    write_report(out_dir, evaluator, metrics, report_thresholds, val_set.images_dir, num_worst=args.worst)
    print(f"report: {out_dir / 'report.html'} (operating point: {report_thresholds.source})")
    return 0


def _report_thresholds(
    args: argparse.Namespace, evaluator: CocoEvaluator, metrics: dict[str, Any], report: OperatingPointReport | None
) -> Thresholds:
    """--score-thresh, else this run's target, else the checkpoint's run operating_point.json, else max F1."""
    category_ids = [entry["id"] for entry in metrics["per_class"].values()]
    if args.score_thresh is not None:
        return fixed_thresholds(args.score_thresh, category_ids)
    if report is not None:
        return thresholds_from(report, category_ids, "this evaluation's target")
    if args.checkpoint:
        run_dir = Path(args.checkpoint).parent.parent
        stored = load_report(run_dir)
        if stored is not None:
            return thresholds_from(stored, category_ids, str(run_dir / "operating_point.json"))
    names = {entry["id"]: name for name, entry in metrics["per_class"].items()}
    return max_f1_thresholds(evaluator.matches(iou=IOU), names)


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""COCO evaluation of a checkpoint, or of an existing COCO results file.

    python evaluate.py --config FILE --checkpoint CKPT [--output-dir DIR] [--set KEY=VALUE ...]
    python evaluate.py --config FILE --predictions RESULTS.json [--output-dir DIR]

Writes OUTPUT_DIR/metrics.json (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, per_class) and,
with a checkpoint, OUTPUT_DIR/detections.json (COCO results: original image and category ids).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from data.loaders import DatasetError, build_dataset, build_val_loader
from retinanet.config import load_config, replace
from retinanet.engine import check_amp, evaluate, load_checkpoint, load_model_weights, place_model, resolve_device
from retinanet.errors import run_cli
from retinanet.evaluator import STAT_NAMES, CocoEvaluator, format_metrics_table
from retinanet.model import build_model, build_postprocess

log = logging.getLogger("retinanet")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (its data.val split is evaluated)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint written by train.py")
    source.add_argument("--predictions", help="COCO results JSON to evaluate without a model")
    parser.add_argument("--output-dir", default=None, help="where to write metrics.json (default: beside the input)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser.parse_args(argv)


def metrics_for_file(metrics: dict[str, Any]) -> dict[str, Any]:
    """The documented metrics.json layout: the 12 COCO numbers and per_class keyed by category name."""
    out = {k: None if math.isnan(metrics[k]) else metrics[k] for k in STAT_NAMES}
    out["per_class"] = metrics["per_class"]
    return out


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    val_set = build_dataset(cfg, "val", args.config)
    evaluator = CocoEvaluator(val_set.coco)

    default_dir = Path(args.predictions).parent if args.predictions else Path(args.checkpoint).parent.parent
    out_dir = Path(args.output_dir or default_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.predictions:
        evaluator.update(load_results(Path(args.predictions)))
        metrics = evaluator.compute()
    else:
        ckpt_path = Path(args.checkpoint)
        device = resolve_device(cfg.train.device)
        check_amp(cfg.train.amp, device, args.config)
        state = load_checkpoint(ckpt_path)
        ckpt_ids = [c["id"] for c in state.get("categories", [])]
        if ckpt_ids and ckpt_ids != val_set.category_map.category_ids:
            raise DatasetError(
                f"{cfg.data.val.annotations}: categories {val_set.category_map.category_ids[:10]} differ from the "
                f"checkpoint's {ckpt_ids[:10]}; evaluate on a set with the training categories"
            )
        cfg = replace(cfg, **{"model.num_classes": len(ckpt_ids) or val_set.category_map.num_classes})
        model = place_model(build_model(cfg), device, cfg.train.channels_last)
        load_model_weights(model, state["model"], ckpt_path)
        metrics, results, _ = evaluate(
            model, build_postprocess(cfg), build_val_loader(cfg, val_set), evaluator,
            val_set.category_map.category_ids, device, cfg.train.amp,
        )
        (out_dir / "detections.json").write_text(json.dumps(results))
        log.info("wrote %d detections to %s", len(results), out_dir / "detections.json")

    (out_dir / "metrics.json").write_text(json.dumps(metrics_for_file(metrics), indent=2))
    print(format_metrics_table(metrics))
    print(f"metrics: {out_dir / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

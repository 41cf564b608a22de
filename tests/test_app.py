"""End-to-end: train.py, evaluate.py and scripts/predict.py on small real files."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from retinanet.cli import evaluate
from retinanet.cli import predict as predict_cli
from retinanet.config import load_config
from tests.helpers import REPO, SHARED_TINY_COCO, TINY_MODEL, run_train, synthetic_overrides

def test_run_folder_contents(trained_run: Path) -> None:
    for name in ("config.yaml", "train.log", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (trained_run / name).is_file(), name
    assert list(trained_run.glob("events.out.tfevents.*"))
    lines = [json.loads(l) for l in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if l["kind"] == "train"] == [1, 2, 3, 4]
    assert [l["step"] for l in lines if l["kind"] == "eval"] == [2, 4]
    assert {"loss", "loss_cls", "loss_box", "lr", "pos_per_image", "grad_norm", "images_per_s"} <= set(lines[0])
    # the saved config is itself a valid --config, with K taken from the data
    cfg = load_config(trained_run / "config.yaml")
    assert cfg.model.num_classes == 5 and cfg.train.max_iters == 4
    state = torch.load(trained_run / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 4
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config", "categories"} <= set(state)
    assert [c["id"] for c in state["categories"]] == [1, 3, 7, 10, 12]


def test_tensorboard_tags(trained_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained_run), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_cls", "train/loss_box", "train/lr", "train/pos_per_image",
            "train/grad_norm", "train/images_per_s", "eval/AP", "eval/AP50", "eval/AP75"} <= scalars
    assert any(t.startswith("eval_per_class/") for t in scalars)
    images = acc.Tags()["images"]
    assert any(t.startswith("eval/pr_curve_iou50") for t in images)
    assert any(t.startswith("eval/predictions") for t in images)


def test_evaluate_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    code = evaluate.main(
        ["--config", str(trained_run / "config.yaml"), "--checkpoint", str(trained_run / "checkpoints" / "best.pt"),
         "--output-dir", str(tmp_path), "--set", "model.postprocess.score_thresh=0.0"]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "per_class"} <= set(metrics)
    assert metrics["per_class"]["circle"]["id"] == 1
    detections = json.loads((tmp_path / "detections.json").read_text())
    assert detections and {d["category_id"] for d in detections} <= {1, 3, 7, 10, 12}


def test_evaluate_ground_truth_as_predictions_gives_ap_one(synthetic: Path, tmp_path: Path) -> None:
    gt = json.loads((synthetic / "annotations" / "instances_val.json").read_text())
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
    ]
    (tmp_path / "results.json").write_text(json.dumps(results))
    code = evaluate.main(
        ["--config", str(REPO / "configs" / "demo_cpu.yaml"), "--predictions", str(tmp_path / "results.json"),
         "--set", *synthetic_overrides(synthetic)]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "results_eval_val" / "metrics.json").read_text())  # named after the file and split
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["AP50"] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_continues_exactly(synthetic: Path, tmp_path: Path, workers: int) -> None:
    """Kill after checkpoint 2 (simulated with the kept previous checkpoint), resume, end equal."""
    sets = synthetic_overrides(synthetic) + [
        "train.max_iters=4", "train.eval_every=0", "train.checkpoint_every=2", f"data.num_workers={workers}",
        "train.deterministic=true",  # bitwise on a GPU too
    ]
    full = tmp_path / "full"
    assert run_train(full, sets) == 0
    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "checkpoints" / "last.prev.pt", interrupted / "checkpoints" / "last.pt")
    assert torch.load(interrupted / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 2
    assert run_train(interrupted, sets, resume=True) == 0
    lines = [json.loads(l) for l in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if l["kind"] == "train"] == [3, 4]
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(interrupted / "checkpoints" / "last.pt", weights_only=True)
    assert b["iteration"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_refuses_to_overwrite_a_run(trained_run: Path) -> None:
    with pytest.raises(FileExistsError, match="--resume"):
        run_train(trained_run, [])


def test_predict_script(trained_run: Path, synthetic: Path, tmp_path: Path) -> None:
    code = predict_cli.main(
        ["--checkpoint", str(trained_run / "checkpoints" / "last.pt"), "--input", str(synthetic / "val"),
         "--output-dir", str(tmp_path), "--score-thresh", "0.0"]
    )
    assert code == 0
    assert len(list(tmp_path.glob("*.png"))) == 8
    records = json.loads((tmp_path / "detections.json").read_text())
    assert all(r["category_id"] in {1, 3, 7, 10, 12} for r in records)


def test_cli_config_error_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("_base_: " + str(REPO / "configs" / "demo_cpu.yaml") + "\ntrain:\n  lr: -1\n")
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {bad}: train.lr: must be > 0"]


@pytest.mark.skipif(not SHARED_TINY_COCO.is_dir(), reason="../shared/data/tiny_coco not present beside the repo")
def test_tiny_coco_real_photos(tmp_path: Path) -> None:
    root = SHARED_TINY_COCO
    sets = [
        f"data.train.images={root / 'train2017'}",
        f"data.train.annotations={root / 'annotations' / 'instances_train2017.json'}",
        f"data.val.images={root / 'val2017'}",
        f"data.val.annotations={root / 'annotations' / 'instances_val2017.json'}",
        "input.min_size=[128]",
        "input.max_size=192",
        "model.anchors.sizes=[16,32,64,128,256]",
        "train.max_iters=2",
        "train.eval_every=2",
        "train.checkpoint_every=2",
        *TINY_MODEL,
    ]
    out = tmp_path / "tiny_coco"
    assert run_train(out, sets) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == 80  # K from the declared categories, ids 1..90 with gaps
    code = evaluate.main(
        ["--config", str(out / "config.yaml"), "--checkpoint", str(out / "checkpoints" / "last.pt"),
         "--output-dir", str(out / "eval")]
    )
    assert code == 0
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["per_class"]["person"]["id"] == 1

"""The evaluation's progress bar: images done out of the val set, then a line while COCO evaluates; rank 0 only."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from retinanet.engine import distributed
from retinanet.engine.inference import evaluate
from retinanet.evaluation.evaluator import CocoEvaluator
from retinanet.modeling.model import build_model, build_postprocess
from retinanet.structures import Batch, Target
from tests.helpers import REPO, make_coco

CPU = torch.device("cpu")


class Loader:
    """A val loader of one 2-image batch, with the `dataset` a DataLoader has (the bar's total)."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.dataset = [0, 0]

    def __iter__(self) -> Iterator[Batch]:
        yield self.batch


def run_evaluation(tiny_cfg) -> dict:
    model = build_model(tiny_cfg, num_classes=1)
    targets = [Target(torch.tensor([[10.0, 10, 60, 70]]), torch.tensor([0]), image_id=i, orig_size=(64, 64))
               for i in (1, 2)]
    batch = Batch(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), [(64, 64)] * 2, targets)
    coco = make_coco({
        "images": [{"id": i, "width": 64, "height": 64} for i in (1, 2)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 50, 60], "area": 3000,
                         "iscrowd": 0} for i in (1, 2)],
        "categories": [{"id": 1, "name": "a"}],
    })
    metrics, _, _ = evaluate(model, build_postprocess(tiny_cfg), Loader(batch), CocoEvaluator(coco), [1], CPU)
    return metrics


def test_the_bar_counts_images_then_says_coco_runs(tiny_cfg, capsys) -> None:
    if os.environ.get("TQDM_DISABLE"):
        pytest.skip("TQDM_DISABLE is set for this process (test_no_bar_with_tqdm_disable covers it)")
    run_evaluation(tiny_cfg)
    err = capsys.readouterr().err
    assert "evaluation:   0%|" in err and " 0/2 [" in err  # the total is the val set's image count
    # The last update before COCOeval: every image done, and the step that shows no progress of its own named.
    assert " 2/2 [" in err and "COCO evaluation of " in err
    assert err.endswith("\r")  # leave=False: the bar clears its line, the next log line starts clean


def test_no_bar_on_other_ranks(tiny_cfg, capsys, monkeypatch) -> None:
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    metrics = run_evaluation(tiny_cfg)
    assert capsys.readouterr().err == "" and "AP" in metrics


def test_no_bar_with_tqdm_disable() -> None:
    """tqdm reads TQDM_DISABLE when it is imported, so in a fresh process (the variable the doc tests set)."""
    code = ("from retinanet.engine.inference import progress_bar, _coco_status\n"
            "with progress_bar([], sharded=False) as bar:\n    bar.update(0)\n    _coco_status(bar, 0)\n")
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]

"""torchrun training: 2 gloo processes on CPU must train, resume and evaluate like one process."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from retinanet.cli import evaluate
from retinanet.data.loaders import build_dataset, build_train_loader
from retinanet.engine import distributed
from retinanet.config import ConfigError, load_config
from retinanet.evaluation.evaluator import STAT_NAMES
from retinanet.modeling.model import build_criterion, build_model
from retinanet.structures import Target
from tests.helpers import REPO, TINY_OVERRIDES, run_train, synthetic_overrides

pytestmark = [
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                       reason="torch.distributed with gloo is not available"),
    pytest.mark.slow,
]

# GroupNorm everywhere: per-rank BatchNorm statistics would differ from the single-process batch's.
# SGD: AdamW's first step is sign(grad), which turns float noise in near-zero gradients into lr-sized steps.
# score_thresh 0: the barely trained model still detects something, so the COCO numbers are not all 0.
DDP_SETS = [
    "train.device=cpu",  # gloo on CPU: with device auto a GPU machine would put rank 1 on cuda:1
    "model.backbone.norm=gn", "train.optimizer=sgd", "train.lr=0.01", "train.grad_clip=10",
    "model.postprocess.score_thresh=0.0", "train.eval_every=0", "train.checkpoint_every=0",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out: Path, sets: list[str], resume: bool = False, timeout: int = 240) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(REPO / "train.py"), "--config", str(REPO / "configs" / "demo_cpu.yaml"), "--output-dir", str(out),
           "--set", *sets, *(["--resume"] if resume else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def lines(run: Path, kind: str) -> list[dict]:
    return [l for l in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if l["kind"] == kind]


def run_files(run: Path) -> set[str]:
    """Names in a run folder, event files left out (their names hold the time and pid)."""
    return {p.name for p in run.iterdir() if not p.name.startswith("events.out.tfevents.")}


def test_two_processes_train_resume_and_evaluate_like_one(synthetic: Path, tmp_path: Path) -> None:
    """One torchrun launch (imports dominate its time) resumes a 1-iteration run and trains iterations 2 and 3."""
    sets = synthetic_overrides(synthetic) + DDP_SETS
    single = tmp_path / "single"
    assert run_train(single, sets + ["train.max_iters=1"]) == 0
    ddp = tmp_path / "ddp"
    (ddp / "checkpoints").mkdir(parents=True)
    shutil.copy(single / "checkpoints" / "last.pt", ddp / "checkpoints" / "last.pt")
    assert run_train(single, sets + ["train.max_iters=3"], resume=True) == 0  # exact as uninterrupted: test_app

    torchrun(ddp, sets + ["train.max_iters=3"], resume=True)
    # Only rank 0 writes: one log, one event file, every metrics line once.
    assert len(list(ddp.glob("events.out.tfevents.*"))) == 1
    assert len(list(ddp.glob("*.log"))) == 1
    assert [l["step"] for l in lines(ddp, "train")] == [2, 3]
    assert run_files(ddp) == run_files(single)
    a = torch.load(single / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(ddp / "checkpoints" / "last.pt", weights_only=True)
    assert b["iteration"] == 3
    assert a["model"].keys() == b["model"].keys()  # saved unwrapped: no "module." prefix
    diff = max((a["model"][k].float() - b["model"][k].float()).abs().max().item() for k in a["model"])
    assert diff < 1e-5, diff  # measured: 1.2e-7
    # The logged losses are the global batch's, not one rank's half.
    for x, y in zip(lines(single, "train")[1:], lines(ddp, "train"), strict=True):
        for key in ("loss", "loss_cls", "loss_box", "pos_per_image"):
            assert y[key] == pytest.approx(x[key], rel=1e-5), (x["step"], key)

    # The final evaluation was sharded over both ranks; one process on the same weights agrees exactly.
    sharded = lines(ddp, "eval")[-1]
    assert sharded["step"] == 3 and sharded["AP50"] > 0
    code = evaluate.main(["--config", str(ddp / "config.yaml"), "--checkpoint", str(ddp / "checkpoints" / "last.pt"),
                          "--output-dir", str(tmp_path / "eval")])
    assert code == 0
    whole = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert [sharded[k] for k in STAT_NAMES] == [whole[k] for k in STAT_NAMES]


def test_two_processes_train_compiled_like_one(synthetic: Path, tmp_path: Path) -> None:
    """train.compile=true under torchrun: DDP wraps the compiled parts; 2 iterations end on the single process's weights."""
    sets = synthetic_overrides(synthetic) + DDP_SETS + ["train.max_iters=2", "train.compile=true"]
    single = tmp_path / "single"
    assert run_train(single, sets) == 0
    ddp = tmp_path / "ddp"
    torchrun(ddp, sets, timeout=600)  # measured: about 2 minutes, nearly all of it compiling in both processes
    a = torch.load(single / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(ddp / "checkpoints" / "last.pt", weights_only=True)
    assert b["iteration"] == 2 and list(a["model"]) == list(b["model"])  # plain module keys on both
    diff = max((a["model"][k].float() - b["model"][k].float()).abs().max().item() for k in a["model"])
    assert diff < 1e-5, diff
    assert json.loads((ddp / "model_card.json").read_text())["runtime"]["compile"] is True
    for x, y in zip(lines(single, "train"), lines(ddp, "train"), strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5), x["step"]


def test_global_batch_is_split_between_ranks(synthetic: Path) -> None:
    """Union of the ranks' batches == the single-process batch, every epoch reshuffled, from any start batch."""
    cfg = load_config(None, synthetic_overrides(synthetic) + ["train.batch_size=6", "data.aspect_ratio_grouping=true"])
    dataset = build_dataset(cfg, "train")

    def batches(rank: int, world: int, start: int) -> list[list]:
        sampler = build_train_loader(cfg, dataset, start_batch=start, rank=rank, world_size=world).batch_sampler
        it = iter(sampler)
        return [next(it) for _ in range(8)]  # 16 images / 6 per batch: 8 batches span 3+ epochs

    whole = batches(0, 1, 0)
    for world in (2, 3):
        parts = [batches(rank, world, 0) for rank in range(world)]
        assert all(len(b) == 6 // world for p in parts for b in p)
        assert [sum((p[i] for p in parts), []) for i in range(8)] == whole
    assert sum(batches(0, 2, 3)[:5], []) == sum((b[:3] for b in whole[3:]), [])  # resume at batch 3
    epoch_orders = [[k[0] for b in whole[i : i + 2] for k in b] for i in (0, 2)]
    assert epoch_orders[0] != epoch_orders[1]
    with pytest.raises(ValueError, match="not divisible"):
        build_train_loader(cfg, dataset, rank=0, world_size=4)


def test_loss_shares_sum_to_the_global_loss() -> None:
    """Each rank divides by the global positive count, so the ranks' losses add up to the one-process loss."""
    cfg = load_config(None, TINY_OVERRIDES + ["loss.normalizer_momentum=0.9"])
    model = build_model(cfg, num_classes=3)
    images = torch.randn(2, 3, 128, 128)
    targets = [
        Target(torch.tensor([[10.0, 10.0, 60.0, 70.0]]), torch.tensor([0]), torch.zeros(1, dtype=torch.bool), 1, (128, 128)),
        Target(torch.tensor([[30.0, 20.0, 90.0, 50.0], [5.0, 70.0, 40.0, 120.0]]), torch.tensor([1, 2]),
               torch.zeros(2, dtype=torch.bool), 2, (128, 128)),
    ]
    with torch.no_grad():
        outputs = model(images)
    whole = build_criterion(cfg, 3)(outputs, targets)
    total = whole["num_pos"]
    shares, emas = [], []
    for i in range(2):
        criterion = build_criterion(cfg, 3, sum_across_ranks=lambda n: torch.full_like(n, int(total)))
        part = dataclasses.replace(
            outputs, cls_logits=outputs.cls_logits[i : i + 1], box_deltas=outputs.box_deltas[i : i + 1]
        )
        losses = criterion(part, targets[i : i + 1])
        assert 0 < losses["num_pos"] < total  # this rank's own count is returned, for logging
        shares.append(losses)
        emas.append(criterion.ema_normalizer)
    for key in ("loss", "loss_cls", "loss_box"):
        assert (shares[0][key] + shares[1][key]).item() == pytest.approx(whole[key].item(), rel=1e-6)
    expected_ema = 0.9 * 100.0 + 0.1 * float(total)
    assert emas == [pytest.approx(expected_ema)] * 2


def test_batch_not_divisible_by_processes_and_cpu_sync_bn_are_config_errors(
    synthetic: Path, tmp_path: Path, monkeypatch
) -> None:
    sets = synthetic_overrides(synthetic) + ["train.max_iters=1"]
    with pytest.raises(ConfigError, match="train.sync_bn needs CUDA"):
        run_train(tmp_path / "a", sets + ["train.sync_bn=true", "train.device=cpu"])
    monkeypatch.setattr(distributed, "get_world_size", lambda: 3)
    with pytest.raises(ConfigError, match=r"train.batch_size=4 .*divisible by the 3 processes"):
        run_train(tmp_path / "b", sets)
    assert not (tmp_path / "b").exists()

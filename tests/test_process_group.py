"""Collectives on a GPU process group, checked on a CPU with a double of torch.distributed.

NCCL has no CPU tensors; a gloo test on the CPU cannot show a CPU tensor reaching a CUDA group.
The double below is the group `init_from_env` creates for a CUDA device: it rejects every tensor
whose device type has no backend in the group, and it stands for rank 0 of two, where rank 1
contributes nothing (a zero in each sum, an empty shard), so the results equal one process's.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import torch

from retinanet.engine import distributed
from retinanet.engine.inference import evaluate
from retinanet.engine.trainer import StepOptions, train_step
from retinanet.evaluation.evaluator import CocoEvaluator
from retinanet.modeling.model import build_criterion, build_model, build_postprocess
from retinanet.structures import Batch, Target
from tests.helpers import make_coco

CPU = torch.device("cpu")
BACKEND_DEVICES = {"nccl": "cuda", "gloo": "cpu"}


class FakeGroup:
    """torch.distributed as rank 0 of 2 sees it, for a group created with `backend`."""

    def __init__(self, backend: str) -> None:
        pairs = [p.split(":") for p in backend.split(",")]
        self.devices = {p[0] for p in pairs if len(p) == 2} | {BACKEND_DEVICES[p[0]] for p in pairs if len(p) == 1}
        self.seen: list[str] = []

    def check(self, tensor: torch.Tensor) -> None:
        self.seen.append(tensor.device.type)
        if tensor.device.type not in self.devices:
            raise RuntimeError(f"no backend of the group for a {tensor.device.type} tensor (group: {self.devices})")

    def all_reduce(self, tensor: torch.Tensor, op: Any = None) -> None:
        self.check(tensor)  # rank 1 adds 0 (or has the smaller max): the tensor keeps its value

    def gather_object(self, obj: Any, gathered: list | None, dst: int = 0) -> None:
        gathered[:] = [obj, ([], [])]  # rank 1's shard is empty

    def broadcast_object_list(self, box: list, src: int = 0) -> None:
        pass  # rank 0 sends its own


def cuda_group_backend(monkeypatch) -> tuple[str, dict[str, Any]]:
    """The backend and options `init_from_env` asks for on a CUDA device (no GPU needed: the calls are recorded)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(distributed.dist, "is_available", lambda: True)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    assert distributed.init_from_env(torch.device("cuda")) == torch.device("cuda", 0)
    return calls[0]


def install(monkeypatch, group: FakeGroup) -> None:
    for name in ("all_reduce", "gather_object", "broadcast_object_list"):
        monkeypatch.setattr(distributed.dist, name, getattr(group, name))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda group=None: 0)


def tiny_setup(tiny_cfg):
    model = build_model(tiny_cfg, num_classes=2).train()
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    targets = [Target(torch.tensor([[10.0, 10, 60, 70]]), torch.tensor([1]), image_id=1, orig_size=(128, 128)),
               Target(torch.tensor([[30.0, 40, 120, 100]]), torch.tensor([0]), image_id=2, orig_size=(128, 128))]
    coco = make_coco({
        "images": [{"id": i, "width": 128, "height": 128} for i in (1, 2)],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 10, 50, 60], "area": 3000, "iscrowd": 0},
                        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [30, 40, 90, 60], "area": 5400,
                         "iscrowd": 0}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    })
    return model, Batch(images, [(128, 128)] * 2, targets), coco


def run_step_and_evaluation(tiny_cfg) -> tuple[Any, dict[str, Any]]:
    model, batch, coco = tiny_setup(tiny_cfg)
    criterion = build_criterion(tiny_cfg, 2, distributed.all_reduce_sum if distributed.is_distributed() else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the evaluation sees the same weights in both runs
    stats = train_step(model, criterion, optimizer, torch.amp.GradScaler("cpu", enabled=False), [batch],
                       StepOptions(CPU, world_size=distributed.get_world_size()))
    metrics, _, _ = evaluate(model, build_postprocess(tiny_cfg), [batch], CocoEvaluator(coco), [1, 2], CPU,
                             criterion=build_criterion(tiny_cfg, 2))
    distributed.all_reduce_max(0, CPU)
    return stats, metrics


def test_the_cuda_group_takes_every_collective_of_a_train_step_and_a_sharded_evaluation(tiny_cfg, monkeypatch) -> None:
    torch.manual_seed(0)
    single_stats, single = run_step_and_evaluation(tiny_cfg)
    backend, options = cuda_group_backend(monkeypatch)
    group = FakeGroup(backend)
    install(monkeypatch, group)
    assert distributed.is_distributed()
    torch.manual_seed(0)
    stats, metrics = run_step_and_evaluation(tiny_cfg)
    assert {"cpu"} <= set(group.seen) and len(group.seen) >= 4  # the step's stats, the loss's count, val loss, stop flag
    # Rank 1 added nothing: the two-rank numbers are one process's (the loss of a rank's share is x2 here).
    assert stats.loss == pytest.approx(single_stats.loss) and stats.num_pos == single_stats.num_pos
    keys = ("loss", "loss_cls", "loss_box", "AP", "AR100")
    assert [metrics[k] for k in keys] == pytest.approx([single[k] for k in keys])
    assert options["timeout"] >= timedelta(minutes=30)  # rank 0 alone runs COCOeval while the others wait


def test_the_double_rejects_a_cpu_tensor_in_a_plain_nccl_group(monkeypatch) -> None:
    """The double can fail: this is what a plain `nccl` group did to the val loss on torchrun."""
    install(monkeypatch, FakeGroup("nccl"))
    with pytest.raises(RuntimeError, match="no backend of the group for a cpu tensor"):
        distributed.all_reduce_sum(torch.zeros(4, dtype=torch.float64))

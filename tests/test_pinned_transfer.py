"""Host-to-GPU copies: on CUDA the loaders pin their batches and every tensor of a batch moves non_blocking."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from retinanet.config import load_config
from retinanet.data.loaders import build_train_loader, build_val_loader
from retinanet.data.synthetic import make_dataset
from retinanet.data.loaders import build_dataset
from retinanet.structures import Batch, Target


class RecordTo(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.non_blocking: list[bool | None] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is Tensor.to:
            self.non_blocking.append(kwargs.get("non_blocking"))
        return func(*args, **kwargs)


def test_every_tensor_of_a_batch_moves_non_blocking() -> None:
    targets = [Target(torch.zeros(2, 4), torch.tensor([0, 1])), Target(torch.zeros(1, 4), torch.tensor([2]))]
    with RecordTo() as spy:
        Batch(torch.zeros(2, 3, 8, 8), [(8, 8)] * 2, targets).to("cpu", non_blocking=True)
    assert spy.non_blocking == [True] * (1 + 3 * len(targets))  # images, then boxes, labels, iscrowd of each


def test_loaders_pin_memory_when_asked(tmp_path) -> None:
    make_dataset(tmp_path, seed=0, num_train=2, num_val=2, image_size=32)
    sets = [f"data.{s}.{k}={tmp_path / d}" for s in ("train", "val")
            for k, d in (("images", s), ("annotations", f"annotations/instances_{s}.json"))]
    cfg = load_config(None, sets + ["data.num_workers=0", "train.batch_size=2"])
    train_set, val_set = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert build_train_loader(cfg, train_set, pin_memory=True).pin_memory
    assert build_val_loader(cfg, val_set, pin_memory=True).pin_memory
    assert not build_train_loader(cfg, train_set).pin_memory  # the CPU path copies nothing

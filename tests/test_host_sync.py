"""Host-device syncs reached in one train_step and one postprocess, counted on the CPU (engine.host_sync).

Each counted call makes a GPU run wait for the GPU's queue to drain. Before these counts were
brought down a train_step reached 14 (a tensor of Python counts, 7 boolean-mask indexings, 2
bool() reads, a nonzero, .cpu(), .tolist(), float()) and a postprocess of 2 images 30.
"""
from __future__ import annotations

import torch

from retinanet.engine.host_sync import count_host_syncs
from retinanet.engine.trainer import StepOptions, train_step
from retinanet.modeling.model import build_criterion, build_model, build_postprocess
from retinanet.structures import Batch, Target

CPU = torch.device("cpu")


def batch_of(n: int) -> Batch:
    """n images, each with a box, the last with a crowd box too (the matcher's crowd path)."""
    targets = [Target(torch.tensor([[10.0, 10, 60, 70]]), torch.tensor([1]), image_id=i, orig_size=(256, 256))
               for i in range(n - 1)]
    targets.append(Target(torch.tensor([[30.0, 40, 120, 100], [5.0, 5, 50, 50]]), torch.tensor([0, 1]),
                          torch.tensor([False, True]), image_id=n, orig_size=(256, 256)))
    return Batch(torch.rand(n, 3, 128, 128), [(128, 128)] * n, targets)


def test_the_counter_sees_each_kind_of_sync() -> None:
    x = torch.arange(6.0)
    with count_host_syncs() as counts:
        x.item() if x.numel() == 1 else x.sum().item()
        bool(x.any())
        _ = x[x > 2]
        torch.tensor([1, 2], device=CPU)
        torch.nonzero(x)
        _ = x + 1  # not a sync
    assert counts == {"item": 1, "__bool__": 1, "__getitem__[mask]": 1, "tensor(device=)": 1, "nonzero": 1}


def test_one_train_step_waits_for_the_device_twice(tiny_cfg) -> None:
    model = build_model(tiny_cfg, num_classes=2).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with count_host_syncs() as counts:
        train_step(model, build_criterion(tiny_cfg, 2), optimizer, scaler, [batch_of(2)], StepOptions(CPU))
    # The positives' indices (their number is data), and one read-back of the stats, the grad norm and the
    # finite flags (3 before the grad norm joined it: float(grad_norm) was a read-back of its own).
    assert counts == {"nonzero": 1, "tolist": 1}


def test_postprocess_syncs_do_not_grow_with_the_images(tiny_cfg) -> None:
    model, postprocess = build_model(tiny_cfg, num_classes=2).eval(), build_postprocess(tiny_cfg)
    totals = []
    for n in (2, 4):
        batch = batch_of(n)
        with torch.no_grad():
            outputs = model(batch.images)
        with count_host_syncs() as counts:
            postprocess(outputs, batch.image_sizes, [t.orig_size for t in batch.targets])
        totals.append(sum(counts.values()))
        assert "tensor(device=)" not in counts and "__getitem__[mask]" not in counts
    levels = len(tiny_cfg.model.anchors.sizes)
    assert totals == [levels + 3] * 2  # a nonzero per level, the finite boxes, the sizes, the per-image counts

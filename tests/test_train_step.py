"""engine.trainer.train_step: proven against torchvision's own training, and its skip and clip rules."""
from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from retinanet.structures import Batch
from retinanet.engine.trainer import StepOptions, train_step
from retinanet.modeling.compat import convert_state_dict, from_torchvision, loss_from_torchvision
from retinanet.engine.profiling import TRAIN_PHASES, profile_call
from retinanet.modeling.model import build_criterion, build_model
from retinanet.structures import Target

CPU = torch.device("cpu")


@pytest.mark.slow
def test_five_sgd_steps_end_with_torchvisions_weights() -> None:
    """Same weights, same image, batch 1: 5 steps of train_step and of torchvision's training loop.

    At batch 1 the paper's normalizer (positives in the batch) and torchvision's (per image, then
    the mean) agree, so any difference would be a bug in the step. The backbone has frozen BN, as
    when fine-tuning from ImageNet weights: trainable BN statistics over one image are so badly
    conditioned that float rounding alone parts two identical runs within three steps. Both run in
    float64 for the same reason: an unnormalized random ResNet gives FPN features near 100, and
    float32 rounding then moves a head gradient by a few percent (the float64 gradients agree to 1e-8).
    """
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    tv = RetinaNet(backbone, num_classes=4, min_size=128, max_size=192)
    ours = from_torchvision(tv.eval())
    tv, ours.model = tv.double(), ours.model.double()
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(3, 120, 180, generator=gen, dtype=torch.float64)
    boxes = torch.tensor([[10.0, 20, 90, 100], [60, 30, 170, 110], [100, 5, 140, 40]], dtype=torch.float64)
    labels = torch.tensor([1, 3, 0])

    tv.train()
    inputs, tv_targets = tv.transform([image], [{"boxes": boxes, "labels": labels}])
    batch = Batch(inputs.tensors, list(inputs.image_sizes), [Target(tv_targets[0]["boxes"], labels)])
    model, criterion = ours.model.train(), loss_from_torchvision(tv)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    tv_sgd = torch.optim.SGD(tv.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    our_sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(5):
        tv_sgd.zero_grad()
        tv_loss = sum(tv([image], [{"boxes": boxes, "labels": labels}]).values())
        tv_loss.backward()
        tv_loss = float(tv_loss.detach())
        tv_sgd.step()
        stats = train_step(model, criterion, our_sgd, scaler, [batch], StepOptions(CPU))
        assert stats.finite and stats.num_pos > 3
        assert stats.loss == pytest.approx(tv_loss, rel=1e-5, abs=1e-5)
    expected = convert_state_dict(tv.state_dict())
    got = model.state_dict()
    assert set(expected) == set(got)
    for name, value in got.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-5, msg=name)
    moved = (got["head.cls_logits.weight"] - initial["head.cls_logits.weight"]).abs().max()
    assert moved > 1e-4  # the weights did train (10x the tolerance): not two untouched models


def _tiny(tiny_cfg):
    model = build_model(tiny_cfg, num_classes=2).train()
    criterion = build_criterion(tiny_cfg, 2)
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    targets = [Target(torch.tensor([[10.0, 10, 60, 70]]), torch.tensor([1])),
               Target(torch.tensor([[30.0, 40, 120, 100]]), torch.tensor([0]))]
    return model, criterion, Batch(images, [(128, 128)] * 2, targets)


def test_nonfinite_loss_leaves_the_parameters_untouched(tiny_cfg) -> None:
    model, criterion, batch = _tiny(tiny_cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nan_batch = Batch(batch.images * float("nan"), batch.image_sizes, batch.targets)
    stats = train_step(model, criterion, optimizer, torch.amp.GradScaler("cpu", enabled=False), [batch, nan_batch],
                       StepOptions(CPU))
    assert not stats.finite and stats.images == 0
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
        assert p.grad is None
    assert not optimizer.state  # no momentum buffer was created


def test_clipping_bounds_the_update_and_reports_the_norm_before_it(tiny_cfg) -> None:
    model, criterion, batch = _tiny(tiny_cfg)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    stats = train_step(model, criterion, optimizer, torch.amp.GradScaler("cpu", enabled=False), [batch],
                       StepOptions(CPU, grad_clip=1e-3))
    assert stats.grad_norm > 1e-3
    step = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach() - b)
                                                 for p, b in zip(model.parameters(), before)]))
    assert float(step) == pytest.approx(1e-3, rel=1e-3)  # lr 1: the step is the clipped gradient
    assert stats.images == 2 and stats.loss == pytest.approx(stats.loss_cls + stats.loss_box, rel=1e-6)


def test_train_step_marks_its_phases_for_the_profiler(tiny_cfg) -> None:
    model, criterion, batch = _tiny(tiny_cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    step = lambda: train_step(model, criterion, optimizer, torch.amp.GradScaler("cpu", enabled=False), [batch],  # noqa: E731
                              StepOptions(CPU))
    profiled = profile_call("train", step, TRAIN_PHASES, {"backbone": model.backbone, "head": model.head}, CPU)
    assert list(profiled.phases) == ["forward", "backbone", "head", "loss", "backward", "optimizer"]
    assert all(ms > 0 for ms in profiled.phases.values())
    assert profiled.phases["backbone"] + profiled.phases["head"] <= profiled.phases["forward"]
    assert sum(profiled.phases[name] for name in TRAIN_PHASES) <= profiled.wall_ms

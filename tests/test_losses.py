import math
import itertools

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss as tv_focal

from retinanet.modeling.box_coder import BoxCoder
from retinanet.modeling.losses import DetectionLoss, sigmoid_focal_loss
from retinanet.modeling.matcher import Matcher
from retinanet.structures import HeadOutputs, Target

GRID = list(itertools.product([0.0, 0.5, 2.0, 5.0], [-1.0, 0.25, 0.75], ["none", "mean", "sum"]))


@pytest.mark.parametrize("gamma,alpha,reduction", GRID)
def test_focal_equals_torchvision_values_and_grads(gamma: float, alpha: float, reduction: str) -> None:
    logits = (torch.randn(64, 7) * 3).requires_grad_()
    ref_logits = logits.detach().clone().requires_grad_()
    targets = (torch.rand(64, 7) > 0.7).float()
    ours = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    ref = tv_focal(ref_logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    upstream = torch.rand_like(ours)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, atol=1e-6, rtol=1e-6)


def test_focal_identities() -> None:
    logits = torch.randn(100)
    targets = (torch.rand(100) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    # gamma 0 without alpha is plain BCE; focal never exceeds it
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0.0), bce)
    assert (sigmoid_focal_loss(logits, targets, alpha=-1, gamma=2.0) <= bce + 1e-7).all()
    # an easy example (p_t = 0.9) is down-weighted by (1 - 0.9)^2 = 0.01
    x = torch.logit(torch.tensor([0.9]))
    ratio = sigmoid_focal_loss(x, torch.ones(1), alpha=-1, gamma=2.0) / sigmoid_focal_loss(x, torch.ones(1), alpha=-1, gamma=0.0)
    torch.testing.assert_close(ratio, torch.tensor([0.01]))


def test_focal_rejects_bad_reduction() -> None:
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(torch.zeros(2), torch.zeros(2), reduction="max")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_focal_under_autocast_is_float32_and_finite(dtype: torch.dtype) -> None:
    layer = torch.nn.Linear(8, 5)
    x = torch.randn(32, 8) * 40  # large logits: log(sigmoid) would underflow in half precision
    targets = (torch.rand(32, 5) > 0.5).float()
    with torch.autocast("cpu", dtype=dtype):
        logits = layer(x)
        assert logits.dtype == dtype
        loss = sigmoid_focal_loss(logits, targets, reduction="sum")
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


def _outputs(n: int, anchors: torch.Tensor, k: int, requires_grad: bool = True) -> HeadOutputs:
    r = anchors.shape[0]
    return HeadOutputs(
        cls_logits=torch.randn(n, r, k, requires_grad=requires_grad),
        box_deltas=torch.randn(n, r, 4, requires_grad=requires_grad) * 0.1,
        anchors=anchors,
        num_anchors_per_level=[r],
    )


ANCHORS = torch.tensor(
    [[0, 0, 10, 10], [0, 0, 20, 20], [30, 30, 40, 40], [50, 50, 60, 60], [5, 0, 15, 10], [100, 100, 110, 110]],
    dtype=torch.float32,
)


def _criterion(**kwargs) -> DetectionLoss:
    return DetectionLoss(3, Matcher(0.5, 0.4, allow_low_quality=False), BoxCoder((1.0, 1.0, 1.0, 1.0), math.log(1000 / 16)), **kwargs)


def test_empty_image_has_finite_cls_and_zero_box_loss() -> None:
    out = _outputs(1, ANCHORS, 3)
    losses = _criterion()(out, [Target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))])
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    assert losses["loss_box"].item() == 0.0
    assert losses["num_pos"].item() == 0
    losses["loss"].backward()
    # every anchor is background: all K targets are 0
    expected = sigmoid_focal_loss(out.cls_logits.detach()[0], torch.zeros(6, 3), reduction="sum")
    torch.testing.assert_close(losses["loss_cls"].detach(), expected)


def test_loss_is_batched_sum_over_total_positives() -> None:
    out = _outputs(2, ANCHORS, 3)
    targets = [
        Target(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([2])),  # anchor 0 IoU 1; anchor 4 IoU 1/3 (bg)
        Target(torch.tensor([[30.0, 30, 40, 40], [0, 0, 19, 19]]), torch.tensor([0, 1])),  # anchors 2 and 1
    ]
    losses = _criterion(box_loss="l1")(out, targets)
    assert losses["num_pos"].item() == 3
    logits = out.cls_logits.detach()
    onehot = torch.zeros(2, 6, 3)
    onehot[0, 0, 2] = 1
    onehot[1, 2, 0] = 1
    onehot[1, 1, 1] = 1
    # image 0, anchor 1: IoU with [0,0,10,10] is 0.25 -> background; nothing lies in the ignore band here
    expected_cls = tv_focal(logits, onehot, reduction="sum") / 3
    torch.testing.assert_close(losses["loss_cls"].detach(), expected_cls)
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0), math.log(1000 / 16))
    d = out.box_deltas.detach()
    expected_box = (
        (d[0, 0] - coder.encode(targets[0].boxes_xyxy[0], ANCHORS[0])).abs().sum()
        + (d[1, 2] - coder.encode(targets[1].boxes_xyxy[0], ANCHORS[2])).abs().sum()
        + (d[1, 1] - coder.encode(targets[1].boxes_xyxy[1], ANCHORS[1])).abs().sum()
    ) / 3
    torch.testing.assert_close(losses["loss_box"].detach(), expected_box)


def test_ignored_anchors_do_not_contribute() -> None:
    out = _outputs(1, ANCHORS, 3)
    # IoU of [0,0,10,10] with anchor 4 ([5,0,15,10]) is 1/3 < 0.4; with [0,0,14,10] it is 9/15 = 0.6 -> fg;
    # box [0,0,12,10]: anchor 0 IoU 10/12=0.83 fg, anchor 4 IoU 7/15=0.467 -> ignored
    target = [Target(torch.tensor([[0.0, 0, 12, 10]]), torch.tensor([1]))]
    losses = _criterion()(out, target)
    logits = out.cls_logits.detach()[0]
    keep = torch.tensor([0, 1, 2, 3, 5])
    onehot = torch.zeros(6, 3)
    onehot[0, 1] = 1
    torch.testing.assert_close(losses["loss_cls"].detach(), tv_focal(logits[keep], onehot[keep], reduction="sum"))


def test_crowd_boxes_never_positive() -> None:
    out = _outputs(1, ANCHORS, 3)
    target = [Target(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([1]), iscrowd=torch.tensor([True]))]
    losses = _criterion()(out, target)
    assert losses["num_pos"].item() == 0
    assert losses["loss_box"].item() == 0.0


def test_ema_normalizer() -> None:
    crit = _criterion(normalizer_momentum=0.9)
    out = _outputs(1, ANCHORS, 3)
    target = [Target(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([1]))]
    plain = _criterion()(out, target)["loss_cls"]  # divided by 1 positive
    ema = crit(out, target)["loss_cls"]
    assert crit.ema_normalizer == pytest.approx(0.9 * 100 + 0.1 * 1)
    torch.testing.assert_close(ema, plain / crit.ema_normalizer)
    state = crit.state_dict()
    other = _criterion(normalizer_momentum=0.9)
    other.load_state_dict(state)
    assert other.ema_normalizer == crit.ema_normalizer


@pytest.mark.parametrize("box_loss", ["smooth_l1", "l1", "giou"])
def test_box_losses_zero_at_perfect_prediction(box_loss: str) -> None:
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0), math.log(1000 / 16))
    gt = torch.tensor([[1.0, 2, 11, 13]])
    out = _outputs(1, ANCHORS, 3)
    with torch.no_grad():
        out.box_deltas[0, 0] = coder.encode(gt[0], ANCHORS[0])
    losses = _criterion(box_loss=box_loss)(out, [Target(gt, torch.tensor([0]))])
    assert losses["num_pos"].item() == 1
    assert losses["loss_box"].item() == pytest.approx(0.0, abs=1e-5)

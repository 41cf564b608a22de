"""focal_loss_sum (closed-form backward, no one-hot targets) equals autograd through sigmoid_focal_loss."""
from __future__ import annotations

import math
import pytest
import torch
import torch.nn.functional as F

from retinanet.modeling.box_coder import BoxCoder
from retinanet.modeling.losses import DetectionLoss, focal_loss_sum, sigmoid_focal_loss
from retinanet.modeling.matcher import Matcher
from retinanet.structures import HeadOutputs, Target

N, R, K = 2, 300, 7


def problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits from -30 to 30 (past softplus's threshold 20), labels with background K and ignored -1."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, R, K, generator=gen, dtype=torch.float64).float() * 8
    logits[0, :5] = torch.tensor([-30.0, -21.0, 0.0, 21.0, 30.0])[:, None]
    labels = torch.randint(0, K + 1, (N, R), generator=gen)
    labels[torch.rand(N, R, generator=gen) < 0.7] = K  # mostly background
    labels[torch.rand(N, R, generator=gen) < 0.1] = -1  # ignored
    return logits, labels, labels != -1


def reference(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, alpha: float, gamma: float, eps: float):
    targets = F.one_hot(labels[valid], K + 1)[:, :K].float() * (1 - eps)
    return sigmoid_focal_loss(logits[valid], targets, alpha, gamma, reduction="sum")


def fast(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, alpha: float, gamma: float, eps: float):
    pos = valid & (labels != K)
    flat = torch.nonzero(pos.reshape(-1)).squeeze(1)
    index = flat * K + labels.reshape(-1)[flat]
    return focal_loss_sum(logits, valid, index, torch.full(index.shape, 1 - eps), alpha, gamma)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.5])
@pytest.mark.parametrize("alpha", [0.25, 0.75, -1.0])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_value_and_gradient_match_autograd(gamma: float, alpha: float, eps: float) -> None:
    logits, labels, valid = problem()
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    expected = reference(a, labels, valid, alpha, gamma, eps)
    got = fast(b, labels, valid, alpha, gamma, eps)
    (expected * 3).backward()
    (got * 3).backward()
    assert expected.item() > 1.0
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    # With gamma < 1 autograd through (1 - p_t) ** gamma gives nan where p_t rounds to 1 (0 * inf);
    # the closed form stays finite on every negative entry. Elsewhere the two agree.
    finite = torch.isfinite(a.grad)
    assert gamma < 1 or finite.all()
    torch.testing.assert_close(b.grad[finite], a.grad[finite], rtol=1e-5, atol=1e-6)
    negative = valid[..., None] & (labels[..., None] != torch.arange(K))
    assert torch.isfinite(b.grad[negative]).all()
    assert (b.grad[~valid] == 0).all()


def test_no_positives_and_bf16_logits() -> None:
    logits, labels, valid = problem(1)
    labels[labels < K] = K
    x = logits.bfloat16().requires_grad_()
    loss = fast(x, labels, valid, 0.25, 2.0, 0.0)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, reference(logits.bfloat16().float(), labels, valid, 0.25, 2.0, 0.0), rtol=1e-6, atol=0)


def test_detection_loss_gradient_matches_one_hot_autograd() -> None:
    """The whole DetectionLoss: gradients w.r.t. logits and deltas as the one-hot formulation gives them."""
    anchors = torch.tensor([[x, y, x + s, y + s] for s in (16.0, 32.0) for x in range(0, 96, 8) for y in range(0, 96, 8)])
    r = anchors.shape[0]
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, r, 3, generator=gen)
    deltas = torch.randn(2, r, 4, generator=gen) * 0.1
    targets = [
        Target(torch.tensor([[10.0, 10, 40, 40], [50, 20, 90, 60]]), torch.tensor([0, 2]), torch.tensor([False, True])),
        Target(torch.tensor([[0.0, 0, 30, 30]]), torch.tensor([1])),
    ]
    crit = DetectionLoss(3, Matcher(0.5, 0.4, True), BoxCoder((1.0, 1.0, 1.0, 1.0), math.log(1000 / 16)), label_smoothing=0.1)
    x = logits.clone().requires_grad_()
    out = crit(HeadOutputs(x, deltas, anchors, [r]), targets)
    out["loss_cls"].backward()

    labels, _ = crit.assign(anchors, targets)
    valid = labels != -1
    assert (labels == -1).any() and ((labels >= 0) & (labels < 3)).sum() > 3
    y = logits.clone().requires_grad_()
    onehot = F.one_hot(labels[valid], 4)[:, :3].float() * 0.9
    expected = sigmoid_focal_loss(y[valid], onehot, 0.25, 2.0, reduction="sum") / out["num_pos"]
    expected.backward()
    torch.testing.assert_close(out["loss_cls"], expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-7)

"""The classification loss types: focal, bce (alpha-balanced CE) and ohem, plus label smoothing."""
import math
import logging

import pytest
import torch

from retinanet.modeling.box_coder import BoxCoder
from retinanet.config import ConfigError, load_config
from retinanet.modeling.losses import DetectionLoss, sigmoid_focal_loss
from retinanet.modeling.matcher import Matcher
from retinanet.modeling.model import build_criterion
from retinanet.structures import HeadOutputs, Target
from tests.helpers import TINY_OVERRIDES

ANCHORS = torch.tensor(
    [[0, 0, 10, 10], [0, 0, 20, 20], [30, 30, 40, 40], [50, 50, 60, 60], [5, 0, 15, 10], [100, 100, 110, 110]],
    dtype=torch.float32,
)
TARGETS = [Target(torch.tensor([[0.0, 0, 10, 10], [30, 30, 40, 40]]), torch.tensor([2, 0]))]


def _outputs() -> HeadOutputs:
    torch.manual_seed(0)
    return HeadOutputs(torch.randn(1, 6, 3) * 2, torch.randn(1, 6, 4) * 0.1, ANCHORS, [6])


def _loss(**kw) -> DetectionLoss:
    return DetectionLoss(3, Matcher(0.5, 0.4, allow_low_quality=False), BoxCoder((1.0, 1.0, 1.0, 1.0), math.log(1000 / 16)), **kw)


def test_bce_equals_focal_with_gamma_zero() -> None:
    out = _outputs()
    bce = _loss(cls_loss="bce", gamma=2.0, alpha=0.75)(out, TARGETS)
    focal0 = _loss(cls_loss="focal", gamma=0.0, alpha=0.75)(out, TARGETS)
    focal2 = _loss(cls_loss="focal", gamma=2.0, alpha=0.75)(out, TARGETS)
    assert torch.equal(bce["loss_cls"], focal0["loss_cls"])
    assert not torch.allclose(bce["loss_cls"], focal2["loss_cls"])
    assert torch.equal(bce["loss_box"], focal2["loss_box"])  # only the classification loss changes


def test_label_smoothing_on_positives_only() -> None:
    out = _outputs()
    got = _loss(label_smoothing=0.1)(out, TARGETS)["loss_cls"]
    # anchors 0 and 2 are positives (classes 2 and 0); anchor 4 (IoU 1/3) and the rest are background
    targets = torch.zeros(6, 3)
    targets[0, 2] = 0.9
    targets[2, 0] = 0.9
    expected = sigmoid_focal_loss(out.cls_logits[0], targets, reduction="sum") / 2
    torch.testing.assert_close(got, expected)


def test_ohem_picks_the_hardest_anchors_by_hand() -> None:
    crit = _loss(cls_loss="ohem", ohem_batch_size=10, ohem_neg_pos_ratio=1.0)
    loss = torch.tensor([[0.1, 5.0, 4.0, 0.2, 3.0, 2.0, 9.0, 0.5]])
    valid = torch.tensor([[True, True, True, True, True, True, False, True]])  # anchor 6 is ignored
    pos = torch.tensor([[True, False, False, True, False, False, False, False]])
    out = HeadOutputs(torch.zeros(1, 8, 3), torch.zeros(1, 8, 4), torch.zeros(8, 4), [8])

    def picked(**kw) -> list[int]:
        for k, v in kw.items():
            setattr(crit, k, v)
        return torch.nonzero(crit.ohem_select(loss, valid, pos, out)[0]).squeeze(1).tolist()

    assert picked() == [0, 1, 2, 3]  # both positives + the 1 * 2 hardest negatives
    assert picked(ohem_batch_size=3) == [0, 1, 3]  # budget 3: positives first, then 1 negative
    assert picked(ohem_neg_pos_ratio=0.0, ohem_batch_size=3) == [1, 2, 4]  # no ratio: top 3 by loss
    pos[:] = False  # no positives: ratio 1 still trains on the single hardest negative
    assert picked(ohem_neg_pos_ratio=1.0, ohem_batch_size=10) == [1]


def test_ohem_nms_suppresses_overlapping_examples() -> None:
    crit = _loss(cls_loss="ohem", ohem_batch_size=10, ohem_neg_pos_ratio=0.0, ohem_nms=0.7)
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10.5], [50, 50, 60, 60]])
    out = HeadOutputs(torch.zeros(1, 3, 2), torch.zeros(1, 3, 4), anchors, [3])
    loss = torch.tensor([[1.0, 2.0, 0.5]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    sel = crit.ohem_select(loss, valid, torch.zeros_like(valid), out)
    assert sel[0].tolist() == [False, True, True]  # anchor 0 overlaps the harder anchor 1


def test_ohem_loss_sums_selected_anchors() -> None:
    out = _outputs()
    crit = _loss(cls_loss="ohem", alpha=-1, ohem_batch_size=256, ohem_neg_pos_ratio=0.0)
    # the budget covers every anchor, so OHEM equals plain BCE (no alpha) over the valid anchors
    expected = _loss(cls_loss="bce", alpha=-1)(out, TARGETS)["loss_cls"]
    torch.testing.assert_close(crit(out, TARGETS)["loss_cls"], expected)


def test_config_and_gamma_warning(caplog) -> None:
    cfg = load_config(None, TINY_OVERRIDES + ["loss.type=ohem", "loss.ohem_neg_pos_ratio=0"])
    crit = build_criterion(cfg, 3)
    assert crit.cls_loss == "ohem" and crit.ohem_neg_pos_ratio == 0
    with pytest.raises(ConfigError, match="loss.type: 'ce' is not one of focal, bce, ohem"):
        load_config(None, ["loss.type=ce"])
    with pytest.raises(ConfigError, match="loss.label_smoothing"):
        load_config(None, ["loss.label_smoothing=1.5"])
    with caplog.at_level(logging.WARNING, logger="retinanet"):
        build_criterion(load_config(None, ["loss.gamma=6"]), 3)
    assert any("degrading above gamma 5" in r.getMessage() for r in caplog.records)

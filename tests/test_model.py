import math

import pytest
import torch

from retinanet import Detector, build_criterion, build_model
from retinanet.config import load_config
from retinanet.structures import Target
from tests.helpers import TINY_OVERRIDES


def test_same_outputs_in_train_and_eval(tiny_cfg) -> None:
    model = build_model(tiny_cfg, num_classes=3)
    images = torch.randn(2, 3, 128, 256)
    train_out = model.train()(images)
    eval_out = model.eval()(images)
    assert type(train_out) is type(eval_out)
    r = sum((128 // s) * (256 // s) * 9 for s in (8, 16, 32, 64, 128))
    assert train_out.cls_logits.shape == eval_out.cls_logits.shape == (2, r, 3)
    assert eval_out.box_deltas.shape == (2, r, 4)
    assert eval_out.anchors.shape == (r, 4)
    assert eval_out.num_anchors_per_level == [(128 // s) * (256 // s) * 9 for s in (8, 16, 32, 64, 128)]


def test_prior_probability_init(tiny_cfg) -> None:
    model = build_model(tiny_cfg, num_classes=4)
    bias = model.head.cls_logits.bias
    torch.testing.assert_close(torch.sigmoid(bias), torch.full_like(bias, 0.01))
    assert model.head.cls_logits.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.all(model.head.box_deltas.bias == 0)


def test_head_norm_and_channels(tiny_cfg) -> None:
    model = build_model(tiny_cfg, num_classes=2)
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in model.head.cls_tower) == 2
    assert model.fpn.p6.in_channels == 512  # resnet18 C5 feeds P6 (the paper)
    p5 = build_model(load_config(None, TINY_OVERRIDES + ["model.fpn.p6_from=p5"]), num_classes=2)
    assert p5.fpn.p6.in_channels == 32


def test_frozen_stages_with_weights(tmp_path) -> None:
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    cfg = load_config(
        None,
        TINY_OVERRIDES + [f"model.backbone.weights={path}", "model.backbone.frozen_stages=2", "model.backbone.norm=frozen_bn"],
    )
    model = build_model(cfg, num_classes=2)
    body = model.backbone.body
    assert not any(p.requires_grad for p in body["stem"].parameters())
    assert not any(p.requires_grad for p in body["layer1"].parameters())
    assert all(p.requires_grad for p in body["layer2"].parameters())


def test_missing_weights_file_is_clear(tiny_cfg) -> None:
    from retinanet.modeling.backbone import WeightsError

    cfg = load_config(None, TINY_OVERRIDES + ["model.backbone.weights=/no/such/file.pth"])
    with pytest.raises(WeightsError, match="file not found"):
        build_model(cfg, num_classes=2)


def test_detector_contract(tiny_cfg) -> None:
    det = Detector.from_config(tiny_cfg, num_classes=3)
    with torch.no_grad():
        det.model.head.cls_logits.bias.fill_(2.0)  # make every anchor confident so detections exist
    images = [torch.rand(3, 100, 150), torch.rand(3, 240, 90)]
    out = det(images)
    assert len(out) == 2
    for o, im in zip(out, images):
        assert set(o) == {"boxes", "scores", "labels"}
        assert 0 < len(o["boxes"]) <= 100
        assert o["boxes"][:, 2].max() <= im.shape[2] and o["boxes"][:, 3].max() <= im.shape[1]
        assert o["labels"].max() < 3
    with pytest.raises(ValueError, match="float in \\[0, 1\\] or uint8"):
        det([torch.zeros(3, 10, 10, dtype=torch.int32)])
    with pytest.raises(ValueError, match="float in \\[0, 1\\] or uint8"):
        det([torch.zeros(1, 10, 10)])


def test_overfit_one_batch(tiny_cfg) -> None:
    """30 steps on one tiny batch must drive the loss well down."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg, num_classes=2)
    criterion = build_criterion(tiny_cfg, 2)
    images = torch.randn(2, 3, 128, 128)
    targets = [
        Target(torch.tensor([[10.0, 20, 60, 90], [70, 70, 120, 110]]), torch.tensor([0, 1])),
        Target(torch.tensor([[30.0, 30, 100, 100]]), torch.tensor([1])),
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(30):
        out = criterion(model(images), targets)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.35 * losses[0], losses


def test_model_card_prints_the_frozen_stages_build_model_applies(tmp_path) -> None:
    """weights=none trains every stage whatever frozen_stages says; the card says 0, as the model does."""
    import torchvision

    from retinanet.evaluation.model_card import _config_section

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    for weights, expected in (("none", 0), (str(path), 2)):
        cfg = load_config(None, TINY_OVERRIDES + [f"model.backbone.weights={weights}", "model.backbone.frozen_stages=2"])
        model = build_model(cfg, num_classes=2)
        assert model.backbone.frozen_stages == expected
        assert f"frozen stages {expected})" in "\n".join(_config_section(cfg, world_size=1))

"""Same weights as torchvision's RetinaNet -> same logits, deltas, detections and (batch 1) loss."""
import pytest
import torch
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2

from retinanet.modeling.compat import (
    convert_state_dict,
    from_torchvision,
    load_torchvision_state_dict,
    loss_from_torchvision,
    torchvision_head_outputs,
)
from retinanet.structures import Target

BUILDERS = {"v1": retinanet_resnet50_fpn, "v2": retinanet_resnet50_fpn_v2}


def _tv_model(version: str, num_classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(1)
    tv = BUILDERS[version](weights=None, weights_backbone=None, num_classes=num_classes, min_size=160, max_size=256)
    with torch.no_grad():  # random but informative heads: many scores above 0.05, varied boxes
        for p in tv.head.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        tv.head.classification_head.cls_logits.bias.fill_(-1.0)
    return tv.eval()


@pytest.fixture(scope="module", params=["v1", "v2"])
def pair(request):
    tv = _tv_model(request.param)
    return request.param, tv, from_torchvision(tv)


_gen = torch.Generator().manual_seed(0)  # fixed inputs: the suite's import order must not change them
IMAGES = [torch.rand(3, 150, 200, generator=_gen), torch.rand(3, 190, 120, generator=_gen)]


def test_architecture_settings(pair) -> None:
    version, tv, det = pair
    assert det.model.fpn.p6_from == ("p5" if version == "v1" else "c5")
    assert det.model.num_classes == 5
    assert (det.min_size, det.max_size, det.size_divisible) == (160, 256, 32)
    assert det.postprocess.detections_per_img == 300 and det.postprocess.topk_candidates == 1000


def test_same_logits_and_deltas(pair) -> None:
    _, tv, det = pair
    torch.manual_seed(2)
    cls_tv, box_tv, anchors_tv = torchvision_head_outputs(tv, IMAGES)
    batch = tv.transform(IMAGES)[0].tensors  # the same input tensor: our resize is OpenCV's (docs/design.md)
    with torch.no_grad():
        out = det.model.eval()(batch)
    torch.testing.assert_close(out.cls_logits, cls_tv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.box_deltas, box_tv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.anchors, anchors_tv)


def test_same_detections(pair) -> None:
    _, tv, det = pair
    with torch.no_grad():
        expected = tv.eval()(IMAGES)
        inputs = tv.transform(IMAGES)[0]
        outputs = det.model.eval()(inputs.tensors)
    orig = [tuple(im.shape[-2:]) for im in IMAGES]
    got = [d.as_dict() for d in det.postprocess(outputs, inputs.image_sizes, orig)]
    for e, g in zip(expected, got):
        assert len(e["boxes"]) > 50  # the check is about real detections, not empty lists
        assert torch.equal(e["labels"], g["labels"])
        torch.testing.assert_close(g["scores"], e["scores"], atol=1e-4, rtol=0)
        torch.testing.assert_close(g["boxes"], e["boxes"], atol=1e-2, rtol=0)


def test_same_loss_at_batch_one(pair) -> None:
    _, tv, det = pair
    image = [IMAGES[0]]
    boxes = torch.tensor([[10.0, 20, 90, 120], [50, 50, 70, 80], [120, 10, 195, 60]])
    labels = torch.tensor([1, 3, 0])
    tv.train()
    torch.manual_seed(3)
    tv_losses = tv(image, [{"boxes": boxes, "labels": labels}])
    tv.eval()
    inputs = tv.transform(image)[0]
    batch, sizes = inputs.tensors, inputs.image_sizes
    scale = torch.tensor([sizes[0][1] / 200, sizes[0][0] / 150] * 2)
    det.model.train()
    out = det.model(batch)
    det.model.eval()
    ours = loss_from_torchvision(tv)(out, [Target(boxes * scale, labels)])
    assert ours["num_pos"].item() > 3
    torch.testing.assert_close(ours["loss_cls"], tv_losses["classification"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["loss_box"], tv_losses["bbox_regression"], rtol=1e-5, atol=1e-5)


def test_state_dict_loader_round_trip(pair) -> None:
    _, tv, det = pair
    fresh = from_torchvision(_tv_model("v1" if det.model.fpn.p6_from == "p5" else "v2"))
    with torch.no_grad():
        for p in fresh.model.parameters():
            p.zero_()
    load_torchvision_state_dict(fresh.model, tv.state_dict())
    for (k, a), b in zip(det.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_state_dict_loader_rejects_wrong_num_classes(pair) -> None:
    _, tv, det = pair
    other = _tv_model("v1" if det.model.fpn.p6_from == "p5" else "v2", num_classes=7)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_torchvision_state_dict(det.model, other.state_dict())
    assert set(convert_state_dict(tv.state_dict(), 4, "gn" if det.model.fpn.p6_from == "c5" else "none")) == set(
        det.model.state_dict()
    )

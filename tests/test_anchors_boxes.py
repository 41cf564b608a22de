import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from retinanet.modeling.anchors import AnchorGenerator, cell_anchors, sizes_per_level
from retinanet.modeling.box_coder import BoxCoder


def test_anchors_on_tiny_grid_by_hand() -> None:
    gen = AnchorGenerator([[32.0]], [1.0])
    anchors, counts = gen((64, 64), [(2, 2)], torch.device("cpu"), torch.float32)
    expected = torch.tensor(
        [[-16, -16, 16, 16], [16, -16, 48, 16], [-16, 16, 16, 48], [16, 16, 48, 48]], dtype=torch.float32
    )
    torch.testing.assert_close(anchors, expected)
    assert counts == [4]


def test_cell_anchor_ratios_and_order_by_hand() -> None:
    # ratio = h / w, area kept at size**2; order: ratio-major, then size
    cell = cell_anchors([10.0, 20.0], [0.5, 2.0])
    r = math.sqrt(0.5)
    expected = torch.tensor(
        [
            [-5 / r, -5 * r, 5 / r, 5 * r],
            [-10 / r, -10 * r, 10 / r, 10 * r],
            [-5 * r, -5 / r, 5 * r, 5 / r],
            [-10 * r, -10 / r, 10 * r, 10 / r],
        ]
    )
    torch.testing.assert_close(cell, expected)


def test_paper_defaults_nine_anchors_per_location() -> None:
    levels = sizes_per_level([32, 64, 128, 256, 512], [1.0, 2 ** (1 / 3), 2 ** (2 / 3)])
    gen = AnchorGenerator(levels, [0.5, 1.0, 2.0])
    assert gen.num_anchors_per_location == 9
    p3 = gen.cell[0]
    w, h = p3[:, 2] - p3[:, 0], p3[:, 3] - p3[:, 1]
    torch.testing.assert_close(w * h, torch.tensor([32.0**2, 40.3175**2, 50.7968**2] * 3), rtol=1e-4, atol=0)
    torch.testing.assert_close(h / w, torch.tensor([0.5] * 3 + [1.0] * 3 + [2.0] * 3))


def test_strides_follow_padded_size_and_cache() -> None:
    gen = AnchorGenerator([[16.0], [32.0]], [1.0])
    a1, counts = gen((256, 128), [(32, 16), (16, 8)], torch.device("cpu"), torch.float32)
    assert counts == [512, 128]
    centres = (a1[:, :2] + a1[:, 2:]) / 2
    assert centres[1, 0].item() == 8.0  # stride 8 on level 0
    assert centres[512 + 1, 0].item() == 16.0  # stride 16 on level 1
    a2, _ = gen((256, 128), [(32, 16), (16, 8)], torch.device("cpu"), torch.float32)
    assert a2 is a1


def test_matches_torchvision_generator() -> None:
    sizes = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in [32, 64, 128, 256, 512])
    tv = TVAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    ours = AnchorGenerator([list(s) for s in sizes], (0.5, 1.0, 2.0), round_to_int=True)
    feats = [torch.zeros(1, 1, 160 // s, 224 // s) for s in (8, 16, 32)] + [torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 2, 2)]
    tv_anchors = tv(ImageList(torch.zeros(1, 3, 160, 224), [(160, 224)]), feats)[0]
    our_anchors, _ = ours((160, 224), [f.shape[-2:] for f in feats], torch.device("cpu"), torch.float32)
    torch.testing.assert_close(our_anchors, tv_anchors)


def test_encode_by_hand() -> None:
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0), math.log(1000 / 16))
    deltas = coder.encode(torch.tensor([[5.0, 5, 15, 25]]), torch.tensor([[0.0, 0, 10, 10]]))
    torch.testing.assert_close(deltas, torch.tensor([[5.0, 10.0, 0.0, 5 * math.log(2.0)]]))


def test_encode_decode_round_trip() -> None:
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0), math.log(1000 / 16))
    xy = torch.rand(100, 2) * 100
    boxes = torch.cat([xy, xy + 1 + torch.rand(100, 2) * 80], dim=1)
    axy = torch.rand(100, 2) * 100
    anchors = torch.cat([axy, axy + 8 + torch.rand(100, 2) * 60], dim=1)
    torch.testing.assert_close(coder.decode(coder.encode(boxes, anchors), anchors), boxes, atol=1e-4, rtol=1e-5)


def test_decode_clamps_scale() -> None:
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0), math.log(1000 / 16))
    box = coder.decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    assert torch.isfinite(box).all()
    assert (box[0, 2] - box[0, 0]).item() == pytest.approx(1000.0, rel=1e-4)

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import box_area, box_iou

import retinanet.modeling.matcher as matcher_module
from retinanet.modeling.matcher import BACKGROUND, IGNORE, Matcher


def test_thresholds_and_ignore_band() -> None:
    iou = torch.tensor([[0.9, 0.45, 0.30, 0.10, 0.50], [0.2, 0.55, 0.35, 0.39, 0.40]])
    m = Matcher(0.5, 0.4, allow_low_quality=False).match_iou(iou)
    # 0.5 is foreground (>=), 0.4 is in the band (not < 0.4), 0.39 background
    assert m.tolist() == [0, 1, BACKGROUND, BACKGROUND, 0]
    iou2 = torch.tensor([[0.30, 0.45, 0.10]])
    assert Matcher(0.5, 0.4, allow_low_quality=False).match_iou(iou2).tolist() == [BACKGROUND, IGNORE, BACKGROUND]


def test_low_quality_matches() -> None:
    iou = torch.tensor([[0.30, 0.45, 0.10, 0.45], [0.05, 0.20, 0.35, 0.00]])
    m = Matcher(0.5, 0.4, allow_low_quality=True).match_iou(iou)
    # box 0's best (0.45) is shared by anchors 1 and 3 (ties all kept); box 1's best is anchor 2 at 0.35
    assert m.tolist() == [BACKGROUND, 0, 1, 0]
    off = Matcher(0.5, 0.4, allow_low_quality=False).match_iou(iou)
    assert off.tolist() == [BACKGROUND, IGNORE, BACKGROUND, IGNORE]


def test_low_quality_anchor_takes_its_own_best_box() -> None:
    # anchor 0 is box 1's best (0.3) but its best box is box 0 (0.35): it is matched to box 0, like torchvision
    iou = torch.tensor([[0.35, 0.9], [0.30, 0.1]])
    assert Matcher(0.5, 0.4, True).match_iou(iou).tolist() == [0, 0]


def test_box_with_zero_overlap_adds_no_match() -> None:
    iou = torch.tensor([[0.0, 0.0, 0.0]])
    assert Matcher(0.5, 0.4, True).match_iou(iou).tolist() == [BACKGROUND] * 3


def test_no_boxes_all_background() -> None:
    m = Matcher(0.5, 0.4, True)(torch.zeros(0, 4), torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]]))
    assert m.tolist() == [BACKGROUND, BACKGROUND]


def test_crowd_is_never_positive_and_ignores_covered_anchors() -> None:
    anchors = torch.tensor([[0.0, 0, 10, 10], [2, 2, 8, 8], [50, 50, 60, 60], [100, 100, 110, 110], [0, 0, 30, 30]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    iscrowd = torch.tensor([True, False])
    m = Matcher(0.5, 0.4, True)(boxes, anchors, iscrowd)
    # anchor 0: IoU 1 with the crowd box -> ignored, not positive; anchor 1 lies inside it -> ignored;
    # anchor 2 matches box 1 (index into the full box list); anchor 3 background;
    # anchor 4 covers the crowd box but is mostly outside it (IoA 1/9) -> background
    assert m.tolist() == [IGNORE, IGNORE, 1, BACKGROUND, BACKGROUND]


def test_all_crowd() -> None:
    anchors = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110]])
    m = Matcher(0.5, 0.4, True)(torch.tensor([[0.0, 0, 10, 10]]), anchors, torch.tensor([True]))
    assert m.tolist() == [IGNORE, BACKGROUND]


def reference_match(matcher: Matcher, boxes: torch.Tensor, anchors: torch.Tensor, iscrowd: torch.Tensor) -> torch.Tensor:
    """One image, the straightforward way: match the non-crowd boxes, then ignore background inside crowds."""
    keep = torch.nonzero(~iscrowd).squeeze(1)
    result = matcher.match_iou(box_iou(boxes[keep], anchors))
    result = torch.where(result >= 0, keep[result.clamp(min=0)] if keep.numel() else result, result)
    crowd = boxes[iscrowd]
    if crowd.numel():
        lt = torch.max(anchors[:, None, :2], crowd[None, :, :2])
        rb = torch.min(anchors[:, None, 2:], crowd[None, :, 2:])
        ioa = (rb - lt).clamp(min=0).prod(dim=2) / box_area(anchors)[:, None]
        in_crowd = ioa.max(dim=1).values >= matcher.crowd_ioa
        result = torch.where((result == BACKGROUND) & in_crowd, torch.full_like(result, IGNORE), result)
    return result


@pytest.mark.parametrize("max_elements", [1 << 26, 1])  # one block, and one image per chunk
def test_batched_matching_equals_image_by_image(monkeypatch, max_elements: int) -> None:
    monkeypatch.setattr(matcher_module, "_MAX_ELEMENTS", max_elements)
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(400, 2, generator=gen) * 90
    anchors = torch.cat([xy, xy + 4 + torch.rand(400, 2, generator=gen) * 30], dim=1)
    anchors = torch.cat([anchors, anchors[:5]])  # duplicate anchors: ties in the low-quality step
    images = []
    for count in (5, 0, 1, 9, 3):  # an image with no boxes, different box counts
        xy = torch.rand(count, 2, generator=gen) * 80
        boxes = torch.cat([xy, xy + 2 + torch.rand(count, 2, generator=gen) * 40], dim=1)
        images.append((boxes, torch.rand(count, generator=gen) < 0.3))
    images[3] = (torch.cat([images[3][0], images[3][0][:2]]), torch.cat([images[3][1], torch.tensor([False, True])]))
    matcher = Matcher(0.5, 0.4, allow_low_quality=True)
    boxes = pad_sequence([b for b, _ in images], batch_first=True)
    crowd = pad_sequence([c for _, c in images], batch_first=True)
    counts = torch.tensor([len(b) for b, _ in images])
    valid = torch.arange(boxes.shape[1])[None] < counts[:, None]
    batched = matcher.match_batch(boxes, valid, crowd, anchors)
    for i, (b, c) in enumerate(images):
        expected = reference_match(matcher, b, anchors, c)
        assert torch.equal(batched[i], expected), i
        assert torch.equal(matcher(b, anchors, c), expected), i
    assert (batched >= 0).any() and (batched == IGNORE).any() and (batched == BACKGROUND).any()

import torch

from retinanet.matcher import BACKGROUND, IGNORE, Matcher


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
    m = Matcher()(torch.zeros(0, 4), torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]]))
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
    m = Matcher()(torch.tensor([[0.0, 0, 10, 10]]), anchors, torch.tensor([True]))
    assert m.tolist() == [IGNORE, BACKGROUND]

import math
import torch

from retinanet.modeling.box_coder import BoxCoder
from retinanet.modeling.postprocess import PostProcess
from retinanet.structures import HeadOutputs

# two levels: 3 anchors then 2 anchors, K = 2 classes
ANCHORS = torch.tensor(
    [[0, 0, 10, 10], [1, 1, 11, 11], [40, 40, 60, 60], [0, 0, 40, 40], [60, 60, 100, 100]], dtype=torch.float32
)


def _outputs(scores: list[list[list[float]]]) -> HeadOutputs:
    probs = torch.tensor(scores, dtype=torch.float32)  # (N, R, K)
    return HeadOutputs(
        cls_logits=torch.logit(probs),
        box_deltas=torch.zeros(probs.shape[0], 5, 4),
        anchors=ANCHORS,
        num_anchors_per_level=[3, 2],
    )


def _post(**kw) -> PostProcess:
    args = dict(score_thresh=0.05, topk_candidates=1000, nms_thresh=0.5, detections_per_img=100)
    args.update(kw)
    return PostProcess(BoxCoder((1.0, 1.0, 1.0, 1.0), math.log(1000 / 16)), **args)


def test_threshold_nms_and_order() -> None:
    scores = [[[0.9, 0.01], [0.8, 0.7], [0.04, 0.3], [0.2, 0.01], [0.01, 0.01]]]
    det = _post()(_outputs(scores), [(100, 100)])[0]
    # anchor 1 class 0 (0.8) overlaps anchor 0 class 0 (IoU 0.68) -> suppressed; class 1 kept (class-wise NMS)
    assert det.scores.tolist() == torch.tensor([0.9, 0.7, 0.3, 0.2]).tolist()
    assert det.labels.tolist() == [0, 1, 1, 0]
    torch.testing.assert_close(det.boxes_xyxy, ANCHORS[[0, 1, 2, 3]])


def test_topk_is_per_level_and_cap_per_image() -> None:
    scores = [[[0.9, 0.01], [0.01, 0.7], [0.6, 0.3], [0.2, 0.01], [0.5, 0.01]]]
    det = _post(topk_candidates=1)(_outputs(scores), [(100, 100)])[0]
    assert det.scores.tolist() == torch.tensor([0.9, 0.5]).tolist()  # best of level 0, best of level 1
    det = _post(detections_per_img=2)(_outputs(scores), [(100, 100)])[0]
    assert det.scores.tolist() == torch.tensor([0.9, 0.7]).tolist()


def test_batch_images_are_independent_and_rescaled() -> None:
    a = [[0.9, 0.01], [0.01, 0.01], [0.01, 0.01], [0.01, 0.01], [0.01, 0.01]]
    b = [[0.01, 0.01], [0.01, 0.01], [0.01, 0.01], [0.01, 0.01], [0.01, 0.6]]
    dets = _post()(_outputs([a, b]), [(100, 100), (80, 90)], orig_sizes=[(200, 50), (80, 90)])
    torch.testing.assert_close(dets[0].boxes_xyxy, torch.tensor([[0.0, 0, 5, 20]]))  # x * 0.5, y * 2
    # image 1: box [60,60,100,100] clipped to its resized size (80 high, 90 wide)
    torch.testing.assert_close(dets[1].boxes_xyxy, torch.tensor([[60.0, 60, 90, 80]]))
    assert dets[1].labels.tolist() == [1]


def test_non_finite_inputs_do_not_crash() -> None:
    out = _outputs([[[0.9, 0.01], [0.8, 0.7], [0.6, 0.3], [0.2, 0.01], [0.5, 0.5]]])
    out.cls_logits[0, 0, 0] = float("nan")
    out.cls_logits[0, 1, 1] = float("inf")
    out.box_deltas[0, 2] = float("nan")
    out.box_deltas[0, 3] = torch.tensor([float("inf"), float("-inf"), float("inf"), 1e9])
    det = _post()(out, [(100, 100)])[0]
    assert torch.isfinite(det.boxes_xyxy).all() and torch.isfinite(det.scores).all()
    assert len(det.scores) > 0


def test_empty() -> None:
    det = _post()(_outputs([[[0.01, 0.01]] * 5]), [(100, 100)], orig_sizes=[(50, 50)])[0]
    assert det.boxes_xyxy.shape == (0, 4) and det.scores.shape == (0,) and det.labels.shape == (0,)

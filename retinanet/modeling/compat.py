"""torchvision RetinaNet <-> ours: architecture, weights, preprocessing and postprocess settings.

`from_torchvision(tv_model)` accepts the `retinanet_resnet50_fpn` (v1) and
`retinanet_resnet50_fpn_v2` architectures (any ResNet depth and num_classes) and returns a
`Detector` that computes the same outputs. `load_torchvision_state_dict` maps a torchvision
state dict (for example its COCO weights, where the user has them) onto our module names.

Two torchvision details are reproduced here rather than in our defaults: anchor sizes are
truncated to integers and base anchors rounded, and inputs are padded to a multiple of 32.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet
from torchvision.ops import FrozenBatchNorm2d

from retinanet.modeling.anchors import AnchorGenerator
from retinanet.modeling.backbone import ResNetBackbone
from retinanet.modeling.box_coder import BoxCoder
from retinanet.modeling.detector import Detector
from retinanet.modeling.fpn import FPN
from retinanet.modeling.head import RetinaNetHead
from retinanet.modeling.losses import DetectionLoss
from retinanet.modeling.matcher import Matcher
from retinanet.modeling.model import RetinaNet
from retinanet.modeling.postprocess import PostProcess

_DEPTHS = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34", (3, 4, 23, 3): "resnet101"}


def _backbone_name(body: nn.Module) -> str:
    blocks = tuple(len(getattr(body, f"layer{i}")) for i in range(1, 5))
    bottleneck = hasattr(body.layer1[0], "conv3")
    if blocks == (3, 4, 6, 3):
        return "resnet50" if bottleneck else "resnet34"
    if blocks in _DEPTHS:
        return _DEPTHS[blocks]
    raise ValueError(f"unsupported torchvision backbone with blocks {blocks}")


def _norm_kind(module: nn.Module) -> str:
    if isinstance(module, FrozenBatchNorm2d):
        return "frozen_bn"
    if isinstance(module, nn.BatchNorm2d):
        return "bn"
    if isinstance(module, nn.GroupNorm):
        return "gn"
    raise ValueError(f"unsupported torchvision norm layer {type(module).__name__}")


def _head_norm(tv_model: TorchvisionRetinaNet) -> tuple[int, str]:
    convs = tv_model.head.classification_head.conv
    norm = "gn" if any(isinstance(m, nn.GroupNorm) for m in convs.modules()) else "none"
    return len(convs), norm


def from_torchvision(tv_model: TorchvisionRetinaNet) -> Detector:
    """A Detector with the same architecture, weights, preprocessing and postprocess as tv_model."""
    body = tv_model.backbone.body
    fpn_tv = tv_model.backbone.fpn
    channels = tv_model.backbone.out_channels
    backbone = ResNetBackbone(_backbone_name(body), norm=_norm_kind(body.bn1), frozen_stages=0, weights="none")
    fpn = FPN(backbone.out_channels, channels, p6_from="p5" if fpn_tv.extra_blocks.use_P5 else "c5")
    ag = tv_model.anchor_generator
    ratios = ag.aspect_ratios[0]
    if any(tuple(r) != tuple(ratios) for r in ag.aspect_ratios):
        raise ValueError("torchvision anchor generators with different ratios per level are not supported")
    anchors = AnchorGenerator([list(s) for s in ag.sizes], ratios, round_to_int=True)
    num_convs, head_norm = _head_norm(tv_model)
    cls_head = tv_model.head.classification_head
    head = RetinaNetHead(channels, cls_head.num_anchors, cls_head.num_classes, num_convs, head_norm, prior_prob=0.01)
    model = RetinaNet(backbone, fpn, head, anchors)
    model.load_state_dict(convert_state_dict(tv_model.state_dict(), num_convs, head_norm))
    model.eval()

    coder = tv_model.box_coder
    post = PostProcess(
        BoxCoder(coder.weights, coder.bbox_xform_clip),
        score_thresh=tv_model.score_thresh,
        topk_candidates=tv_model.topk_candidates,
        nms_thresh=tv_model.nms_thresh,
        detections_per_img=tv_model.detections_per_img,
    )
    t = tv_model.transform
    return Detector(
        model,
        post,
        min_size=int(t.min_size[-1]),
        max_size=int(t.max_size),
        size_divisible=int(t.size_divisible),
        mean=t.image_mean,
        std=t.image_std,
    )


def loss_from_torchvision(tv_model: TorchvisionRetinaNet) -> DetectionLoss:
    """Our DetectionLoss with tv_model's matcher, box coder and box loss (focal alpha 0.25, gamma 2)."""
    m = tv_model.proposal_matcher
    box_loss = tv_model.head.regression_head._loss_type
    if box_loss not in ("l1", "smooth_l1", "giou"):
        raise ValueError(f"unsupported torchvision box loss {box_loss!r}")
    return DetectionLoss(
        tv_model.head.classification_head.num_classes,
        Matcher(m.high_threshold, m.low_threshold, m.allow_low_quality_matches),
        BoxCoder(tv_model.box_coder.weights, tv_model.box_coder.bbox_xform_clip),
        gamma=2.0,
        alpha=0.25,
        box_loss=box_loss,
        smooth_l1_beta=1.0,
    )


def convert_state_dict(tv_state: dict[str, Tensor], num_convs: int = 4, head_norm: str = "none") -> dict[str, Tensor]:
    """Rename a torchvision RetinaNet state dict to our module names."""
    per_layer = 3 if head_norm == "gn" else 2  # conv, [norm,] relu
    out: dict[str, Tensor] = {}
    for key, value in tv_state.items():
        new = key
        new = re.sub(r"^backbone\.body\.conv1\.", "backbone.body.stem.0.", new)
        new = re.sub(r"^backbone\.body\.bn1\.", "backbone.body.stem.1.", new)
        new = re.sub(r"^backbone\.fpn\.inner_blocks\.(\d)\.0\.", r"fpn.lateral.\1.", new)
        new = re.sub(r"^backbone\.fpn\.layer_blocks\.(\d)\.0\.", r"fpn.output.\1.", new)
        new = re.sub(r"^backbone\.fpn\.extra_blocks\.(p6|p7)\.", r"fpn.\1.", new)
        new = new.replace("head.classification_head.cls_logits.", "head.cls_logits.")
        new = new.replace("head.regression_head.bbox_reg.", "head.box_deltas.")
        match = re.match(r"^head\.(classification|regression)_head\.conv\.(\d+)\.(\d)\.(.*)$", new)
        if match:
            tower = "cls_tower" if match.group(1) == "classification" else "box_tower"
            index = int(match.group(2)) * per_layer + int(match.group(3))
            new = f"head.{tower}.{index}.{match.group(4)}"
        out[new] = value
    return out


def load_torchvision_state_dict(model: RetinaNet, tv_state: dict[str, Tensor]) -> None:
    """Load torchvision RetinaNet weights (e.g. its COCO checkpoint file) into a model of ours."""
    towers = [m for m in model.head.cls_tower if isinstance(m, nn.Conv2d)]
    norm = "gn" if any(isinstance(m, nn.GroupNorm) for m in model.head.cls_tower) else "none"
    missing, unexpected = model.load_state_dict(convert_state_dict(tv_state, len(towers), norm), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"torchvision weights do not fit this model: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); check backbone, head norm and num_classes"
        )


@torch.no_grad()
def torchvision_head_outputs(tv_model: TorchvisionRetinaNet, images: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """torchvision's own (cls_logits (N,R,K), bbox_regression (N,R,4), anchors of image 0 (R,4)), for checks."""
    tv_model.eval()
    batch, _ = tv_model.transform(images)
    features = list(tv_model.backbone(batch.tensors).values())
    out = tv_model.head(features)
    anchors = tv_model.anchor_generator(batch, features)
    return out["cls_logits"], out["bbox_regression"], anchors[0]

"""RetinaNet: backbone -> FPN -> shared heads, plus the anchors of the input.

Shape legend used across the package:
    N  images in a batch
    R  anchors over all pyramid levels of one image (sum over levels of H_l * W_l * A)
    A  anchors per feature-map location (len(ratios) * len(scales), 9 by default)
    K  object classes, without background
    M  ground-truth boxes in one image
    D  detections in one image

The model returns the same `HeadOutputs` in train and eval mode. The loss
(`retinanet.losses.DetectionLoss`) and postprocess (`retinanet.postprocess.PostProcess`)
are separate callables built from the same config by `build_criterion` and `build_postprocess`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from retinanet.modeling.anchors import AnchorGenerator, sizes_per_level
from retinanet.modeling.backbone import ResNetBackbone
from retinanet.modeling.box_coder import BoxCoder
from retinanet.config import BackboneConfig, Config, ConfigError
from retinanet.modeling.fpn import FPN
from retinanet.modeling.head import RetinaNetHead
from retinanet.modeling.losses import DetectionLoss, class_balanced_alpha
from retinanet.modeling.matcher import Matcher
from retinanet.modeling.postprocess import PostProcess
from retinanet.structures import HeadOutputs

log = logging.getLogger("retinanet")


class RetinaNet(nn.Module):
    def __init__(self, backbone: nn.Module, fpn: FPN, head: RetinaNetHead, anchor_generator: AnchorGenerator):
        super().__init__()
        if head.num_anchors != anchor_generator.num_anchors_per_location:
            raise ValueError(
                f"head predicts {head.num_anchors} anchors per location, generator makes "
                f"{anchor_generator.num_anchors_per_location}"
            )
        self.backbone = backbone
        self.fpn = fpn
        self.head = head
        self.anchor_generator = anchor_generator

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(self, images: Tensor) -> HeadOutputs:
        """images: (N, 3, H, W) normalized and padded -> HeadOutputs with (N, R, K), (N, R, 4), (R, 4).

        The anchors are float32 whatever the autocast: in bf16 (8 significant bits) a coordinate near
        1000 px lands on a 4-8 px grid, and matching, regression targets and decoding all use them.
        """
        features = self.fpn(self.backbone(images))
        cls_logits, box_deltas = self.head(features)
        anchors, per_level = self.anchor_generator(
            tuple(images.shape[-2:]), [tuple(f.shape[-2:]) for f in features], images.device, torch.float32
        )
        return HeadOutputs(cls_logits=cls_logits, box_deltas=box_deltas, anchors=anchors, num_anchors_per_level=per_level)


def effective_frozen_stages(backbone: BackboneConfig) -> int:
    """The stages build_model freezes: none when the backbone starts from random weights (`weights: none`)."""
    return backbone.frozen_stages if backbone.weights != "none" else 0


def build_model(cfg: Config, num_classes: int | None = None) -> RetinaNet:
    """Model from config; num_classes overrides cfg.model.num_classes (0 there means: from the data)."""
    m = cfg.model
    k = num_classes or m.num_classes
    if k <= 0:
        raise ValueError("model.num_classes is 0 (from the dataset) but no dataset class count was given")
    if m.backbone.weights == "none" and m.backbone.norm == "frozen_bn":
        log.warning(
            "model.backbone.norm=frozen_bn with weights=none: frozen BN on random weights normalizes nothing; "
            "use norm=bn or gn to train from scratch"
        )
    backbone = ResNetBackbone(
        m.backbone.name,
        norm=m.backbone.norm,
        frozen_stages=effective_frozen_stages(m.backbone),
        weights=m.backbone.weights,
    )
    fpn = FPN(backbone.out_channels, m.fpn.channels, m.fpn.p6_from)
    anchors = AnchorGenerator(sizes_per_level(m.anchors.sizes, m.anchors.scales), m.anchors.ratios)
    if m.head.channels != m.fpn.channels:
        raise ValueError(f"model.head.channels ({m.head.channels}) must equal model.fpn.channels ({m.fpn.channels})")
    head = RetinaNetHead(
        m.fpn.channels, anchors.num_anchors_per_location, k, m.head.num_convs, m.head.norm, m.head.prior_prob
    )
    return RetinaNet(backbone, fpn, head, anchors)


def build_box_coder(cfg: Config) -> BoxCoder:
    return BoxCoder(cfg.model.box_coder.weights, cfg.model.box_coder.scale_clamp)


def build_criterion(
    cfg: Config,
    num_classes: int,
    sum_across_ranks: Callable[[Tensor], Tensor] | None = None,
    class_counts: Sequence[int] | None = None,
) -> DetectionLoss:
    """The loss of the config; `sum_across_ranks` (DDP) makes it normalize by the global positive count.

    class_counts: training boxes per contiguous label (`CocoDetection.class_box_counts()`), which
    `loss.alpha: effective_number` needs.
    """
    mc, lc = cfg.model.matcher, cfg.loss
    if lc.type == "focal" and lc.gamma > 5:
        log.warning("loss.gamma=%g: the paper reports focal loss degrading above gamma 5", lc.gamma)
    return DetectionLoss(
        num_classes,
        Matcher(mc.fg_iou, mc.bg_iou, mc.allow_low_quality),
        build_box_coder(cfg),
        gamma=lc.gamma,
        alpha=resolve_alpha(cfg, num_classes, class_counts),
        box_loss=lc.box_loss,
        smooth_l1_beta=lc.smooth_l1_beta,
        box_weight=lc.box_weight,
        normalizer_momentum=lc.normalizer_momentum,
        cls_loss=lc.type,
        label_smoothing=lc.label_smoothing,
        ohem_batch_size=lc.ohem_batch_size,
        ohem_neg_pos_ratio=lc.ohem_neg_pos_ratio,
        ohem_nms=lc.ohem_nms,
        sum_across_ranks=sum_across_ranks,
    )


def resolve_alpha(cfg: Config, num_classes: int, class_counts: Sequence[int] | None = None) -> float | list[float]:
    """`loss.alpha` as DetectionLoss takes it: one number, or one alpha per class."""
    alpha = cfg.loss.alpha
    if isinstance(alpha, float):
        return alpha
    if isinstance(alpha, tuple):
        if len(alpha) != num_classes:
            raise ConfigError(f"loss.alpha: {len(alpha)} values for {num_classes} classes; give one per class, in label order")
        return list(alpha)
    if class_counts is None:
        raise ConfigError(
            "loss.alpha: effective_number needs the training boxes per class, which this command does not have; "
            "set loss.alpha to a number or a per-class list"
        )
    if len(class_counts) != num_classes:
        raise ValueError(f"{len(class_counts)} class counts for {num_classes} classes")
    values = class_balanced_alpha(class_counts, cfg.loss.cb_beta, cfg.loss.cb_alpha)
    log.info(
        "loss.alpha=effective_number (cb_beta %g, mean %g): per-class alpha %s for %s training boxes",
        cfg.loss.cb_beta, cfg.loss.cb_alpha, [round(v, 4) for v in values], list(class_counts),
    )
    return values


def build_postprocess(cfg: Config) -> PostProcess:
    p = cfg.model.postprocess
    return PostProcess(build_box_coder(cfg), p.score_thresh, p.topk_candidates, p.nms_thresh, p.detections_per_img)

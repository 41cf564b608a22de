"""Constant folding before export: every BatchNorm after a convolution goes into that convolution's weights.

Training computes frozen BatchNorm as a multiply on the convolution weights at each forward
(`FrozenBNConv2d`), which an exported graph would repeat on every call and which a post-training
quantizer cannot treat as constant weights ("FakeQuantize on weights was not folded"). Here the
scale and shift are applied once: conv(x, W) * s + t == conv(x, W * s) + t, so the exported weights
are plain constants and each BN node disappears. The same holds for `FrozenBatchNorm2d` and
`nn.BatchNorm2d` (eval mode: running statistics) directly after a bias-free or biased conv.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from retinanet.modeling.backbone import FoldedFrozenBatchNorm2d, FrozenBNConv2d


def _scale_and_shift(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """(C,) s, t with bn(x) == x * s + t (running statistics; BatchNorm2d must be in eval mode)."""
    var = bn.running_var
    weight = bn.weight if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(var)
    scale = weight * (var + bn.eps).rsqrt()
    return scale, bias - bn.running_mean * scale


def _folded_conv(conv: nn.Conv2d, scale: Tensor, shift: Tensor) -> nn.Conv2d:
    """A plain nn.Conv2d computing conv(x) * scale + shift with constant weights and bias."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, bias=True, padding_mode=conv.padding_mode)
    with torch.no_grad():
        out.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
        out.bias.copy_(bias * scale + shift)
    return out.to(conv.weight.device)


def _is_bn(module: nn.Module) -> bool:
    return isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d)) and not isinstance(module, FoldedFrozenBatchNorm2d)


def _conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of (conv, BN) children where the BN directly follows the conv: torchvision ResNet's convN/bnN, or
    neighbours in an nn.Sequential (the stem, a downsample)."""
    children = dict(module.named_children())
    if isinstance(module, nn.Sequential):
        names = list(children)
        candidates = list(zip(names, names[1:]))
    else:
        candidates = [(name, "bn" + name[4:]) for name in children if name.startswith("conv")]
    return [(c, b) for c, b in candidates
            if isinstance(children.get(c), nn.Conv2d) and not isinstance(children[c], FrozenBNConv2d)
            and _is_bn(children.get(b, nn.Identity()))]


def fold_constants(model: nn.Module) -> nn.Module:
    """A copy of the eval-mode `model` with every BN folded into its convolution (the input is not changed).

    The copy's outputs equal the model's up to float rounding; its state dict has other names
    (no BN buffers), so it is for export only.
    """
    if model.training:
        raise ValueError("fold_constants needs an eval-mode model: training BatchNorm uses batch statistics")
    folded = copy.deepcopy(model)
    for module in list(folded.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, FrozenBNConv2d):
                setattr(module, name, _folded_conv(child, *child._bn[0].scale_and_shift()))
            elif isinstance(child, FoldedFrozenBatchNorm2d):
                setattr(module, name, nn.Identity())
        for conv_name, bn_name in _conv_bn_pairs(module):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            setattr(module, conv_name, _folded_conv(conv, *_scale_and_shift(bn)))
            setattr(module, bn_name, nn.Identity())
    return folded.eval()

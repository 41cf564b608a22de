"""ResNet bodies from torchvision, returning C3, C4, C5."""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

log = logging.getLogger("retinanet")

_WEIGHTS_ENUMS = {
    "resnet18": torchvision.models.ResNet18_Weights,
    "resnet34": torchvision.models.ResNet34_Weights,
    "resnet50": torchvision.models.ResNet50_Weights,
    "resnet101": torchvision.models.ResNet101_Weights,
}
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


class WeightsError(RuntimeError):
    """Pretrained weights could not be obtained; the message says how to fix it."""


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "gn":
        return lambda channels: nn.GroupNorm(32, channels)
    raise ValueError(f"norm must be frozen_bn, bn or gn, got {kind!r}")


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A FrozenBatchNorm2d whose affine is applied by the preceding FrozenBNConv2d: forward is the identity.

    It keeps its buffers (and so the state-dict names of torchvision's ResNet); the conv reads them.
    """

    def forward(self, x: Tensor) -> Tensor:
        return x

    def scale_and_shift(self) -> tuple[Tensor, Tensor]:
        """(C,) scale and shift of the frozen affine: x * scale + shift == FrozenBatchNorm2d(x)."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale


class FrozenBNConv2d(nn.Conv2d):
    """A bias-free conv and the frozen BN after it, computed as one conv with the BN folded in.

    conv(x, W) * s + t == conv(x, W * s) + t with s, t the BN's per-channel scale and shift: one
    oneDNN / cuDNN call with a fused bias instead of a conv plus two full-size elementwise passes
    forward and one backward. Folded at every forward from the BN's current buffers, so loading
    a state dict or moving the model needs nothing special; parameter names do not change.
    """

    def __init__(self, conv: nn.Conv2d, bn: FoldedFrozenBatchNorm2d):
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, bias=False, device="meta",  # no init (and no RNG draw): the weight is conv's
        )
        self.weight = conv.weight
        self._bn = (bn,)  # a tuple: not registered again as a submodule, the block owns it

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self._bn[0].scale_and_shift()
        return self._conv_forward(x, self.weight * scale.reshape(-1, 1, 1, 1), shift)


def fold_frozen_bn(resnet: nn.Module) -> None:
    """Replace every (conv, FrozenBatchNorm2d) pair of a torchvision ResNet by FrozenBNConv2d + identity BN."""

    def fold(owner: nn.Module, conv_name: str, bn_name: str) -> None:
        bn = getattr(owner, bn_name)
        folded_bn = FoldedFrozenBatchNorm2d(bn.weight.numel(), bn.eps)
        folded_bn.load_state_dict(bn.state_dict())
        setattr(owner, conv_name, FrozenBNConv2d(getattr(owner, conv_name), folded_bn))
        setattr(owner, bn_name, folded_bn)

    fold(resnet, "conv1", "bn1")
    for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        for block in layer:
            for i in (1, 2, 3):
                if hasattr(block, f"conv{i}"):
                    fold(block, f"conv{i}", f"bn{i}")
            if block.downsample is not None:
                fold(block.downsample, "0", "1")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier; forward returns {"c3", "c4", "c5"}."""

    def __init__(self, name: str, norm: str, frozen_stages: int, weights: str):
        super().__init__()
        if name not in _WEIGHTS_ENUMS:
            raise ValueError(f"backbone must be one of {', '.join(_WEIGHTS_ENUMS)}, got {name!r}")
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer(norm))
        resnet.fc = nn.Identity()
        if weights != "none":
            resnet.load_state_dict(_load_weights(name, weights))
        if norm == "frozen_bn":
            fold_frozen_bn(resnet)
        self.body = nn.ModuleDict(
            OrderedDict(
                stem=nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool),
                layer1=resnet.layer1,
                layer2=resnet.layer2,
                layer3=resnet.layer3,
                layer4=resnet.layer4,
            )
        )
        self.out_channels = [self._channels(resnet.layer2), self._channels(resnet.layer3), self._channels(resnet.layer4)]
        self.frozen_stages = frozen_stages
        for stage in STAGES[:frozen_stages]:
            for p in self.body[stage].parameters():
                p.requires_grad_(False)

    @staticmethod
    def _channels(layer: nn.Sequential) -> int:
        block = layer[-1]
        return block.conv3.out_channels if hasattr(block, "conv3") else block.conv2.out_channels

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = self.body["stem"](images)
        c2 = self.body["layer1"](x)
        c3 = self.body["layer2"](c2)
        c4 = self.body["layer3"](c3)
        c5 = self.body["layer4"](c4)
        return {"c3": c3, "c4": c4, "c5": c5}


def _load_weights(name: str, weights: str) -> dict[str, Tensor]:
    """ImageNet weights through torchvision's enum (downloads once), or a local state dict."""
    if weights == "imagenet":
        enum = _WEIGHTS_ENUMS[name].IMAGENET1K_V1
        try:
            state = enum.get_state_dict(progress=False)
        except Exception as exc:  # noqa: BLE001 - any download failure gets the same advice
            raise WeightsError(
                f"model.backbone.weights=imagenet: could not download {enum.url} ({type(exc).__name__}); "
                f"download it where there is internet and set model.backbone.weights=/path/to/file.pth, "
                f"or use model.backbone.weights=none"
            ) from None
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"model.backbone.weights={weights}: file not found; give a ResNet state dict path, imagenet or none")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    log.info("loaded %s backbone weights from %s", name, weights)
    return state

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


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier; forward returns {"c3", "c4", "c5"}."""

    def __init__(self, name: str = "resnet50", norm: str = "frozen_bn", frozen_stages: int = 0, weights: str = "none"):
        super().__init__()
        if name not in _WEIGHTS_ENUMS:
            raise ValueError(f"backbone must be one of {', '.join(_WEIGHTS_ENUMS)}, got {name!r}")
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer(norm))
        resnet.fc = nn.Identity()
        if weights != "none":
            resnet.load_state_dict(_load_weights(name, weights))
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

"""RetinaNet with sigmoid focal loss (Lin et al. 2017): the public API.

Layers, each importing only from those below: cli > studies > engine > evaluation | data >
modeling > config, structures (docs/design.md).
"""
from retinanet.config import Config, ConfigError, load_config
from retinanet.engine.checkpoint import Checkpoint
from retinanet.modeling.compat import from_torchvision, load_torchvision_state_dict
from retinanet.modeling.detector import Detector
from retinanet.modeling.losses import DetectionLoss, sigmoid_focal_loss
from retinanet.modeling.model import RetinaNet, build_criterion, build_model, build_postprocess
from retinanet.modeling.preprocess import prepare_images
from retinanet.structures import Batch, Detections, HeadOutputs, Target

__all__ = [
    "Batch",
    "Checkpoint",
    "Config",
    "ConfigError",
    "DetectionLoss",
    "Detections",
    "Detector",
    "HeadOutputs",
    "RetinaNet",
    "Target",
    "build_criterion",
    "build_model",
    "build_postprocess",
    "from_torchvision",
    "load_config",
    "load_torchvision_state_dict",
    "prepare_images",
    "sigmoid_focal_loss",
]

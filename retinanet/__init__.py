"""RetinaNet with sigmoid focal loss (Lin et al. 2017)."""
from retinanet.config import Config, ConfigError, load_config
from retinanet.modeling.detector import Detector
from retinanet.modeling.losses import DetectionLoss, sigmoid_focal_loss
from retinanet.modeling.model import RetinaNet, build_criterion, build_model, build_postprocess
from retinanet.structures import Detections, HeadOutputs, Target

__all__ = [
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
    "load_config",
    "sigmoid_focal_loss",
]

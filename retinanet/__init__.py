"""RetinaNet with sigmoid focal loss (Lin et al. 2017)."""
from .config import Config, ConfigError, load_config
from .detector import Detector
from .losses import DetectionLoss, sigmoid_focal_loss
from .model import RetinaNet, build_criterion, build_model, build_postprocess
from .types import Detections, HeadOutputs, Target

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

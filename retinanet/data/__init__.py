"""Data pipeline: COCO-format datasets, albumentations transforms, batching.

Normalization and padding are not here: `retinanet.preprocess` owns them so that training
and inference prepare inputs identically.
"""
from retinanet.data.collate import Batch, aspect_ratio_group_ids, collate, seed_worker
from retinanet.data.coco import CategoryMap, CocoDetection, load_image
from retinanet.data.transforms import DEFAULT_TRAIN_AUGMENTATIONS, DetectionTransform, ResizeShortSide, build_transforms

__all__ = [
    "Batch",
    "CategoryMap",
    "CocoDetection",
    "DEFAULT_TRAIN_AUGMENTATIONS",
    "DetectionTransform",
    "ResizeShortSide",
    "aspect_ratio_group_ids",
    "build_transforms",
    "collate",
    "load_image",
    "seed_worker",
]

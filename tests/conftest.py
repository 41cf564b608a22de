"""Shared fixtures: tiny models and configs that run in well under a second on 2 CPU cores."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retinanet.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_TINY_COCO = REPO.parent / "shared" / "data" / "tiny_coco"

TINY_OVERRIDES = [
    "model.backbone.name=resnet18",
    "model.backbone.weights=none",
    "model.backbone.norm=bn",
    "model.fpn.channels=32",
    "model.head.channels=32",
    "model.head.num_convs=2",
    "model.head.norm=gn",
    "model.anchors.sizes=[16,32,64,128,256]",
    "input.min_size=[128]",
    "input.max_size=160",
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_cfg() -> Config:
    return load_config(None, TINY_OVERRIDES)

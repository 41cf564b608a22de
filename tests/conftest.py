"""Shared fixtures: tiny models and configs that run in well under a second (helpers: tests/helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retinanet.config import Config, load_config
from retinanet.data.synthetic import make_dataset
from tests.helpers import TINY_OVERRIDES, run_train, synthetic_overrides


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_cfg() -> Config:
    return load_config(None, TINY_OVERRIDES)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_dataset(root, seed=1, num_train=16, num_val=8, image_size=64)
    return root


@pytest.fixture(scope="session")
def trained_run(synthetic, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "demo"
    sets = synthetic_overrides(synthetic) + ["train.max_iters=4", "train.eval_every=2", "train.checkpoint_every=2"]
    assert run_train(out, sets) == 0
    return out




def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that train on the synthetic set are end to end: mark them slow (`make test-fast` skips them).
    Tests marked `cuda` are skipped on a machine without a CUDA device."""
    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if {"synthetic", "trained_run"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
            item.add_marker(no_cuda)

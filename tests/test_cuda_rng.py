"""CUDA RNG state in checkpoints: a run saved with 8 visible GPUs resumes where fewer are visible.

No GPU needed: torch.cuda's RNG calls are replaced by a fake machine with N devices whose
generator states are tensors; asking for a device it does not have raises IndexError, as torch does.
"""
from __future__ import annotations

import pytest
import torch

from retinanet.engine.checkpoint import rng_state, set_rng_state


class FakeCuda:
    """`count` devices, the current one 0; device i's state is a uint8 tensor holding i."""

    def __init__(self, count: int) -> None:
        self.states = [torch.full((8,), i, dtype=torch.uint8) for i in range(count)]

    def index(self, device: int | str | torch.device = "cuda") -> int:
        i = device if isinstance(device, int) else (torch.device(device).index or 0)
        if i >= len(self.states):
            raise IndexError(f"device {i} of {len(self.states)}")
        return i

    def get_rng_state(self, device: int | str | torch.device = "cuda") -> torch.Tensor:
        return self.states[self.index(device)].clone()

    def set_rng_state(self, state: torch.Tensor, device: int | str | torch.device = "cuda") -> None:
        self.states[self.index(device)] = state.clone()

    def install(self, monkeypatch) -> "FakeCuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.states))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        for module in (torch.cuda, torch.cuda.random):
            monkeypatch.setattr(module, "get_rng_state", self.get_rng_state)
            monkeypatch.setattr(module, "set_rng_state", self.set_rng_state)
            monkeypatch.setattr(module, "get_rng_state_all", lambda: [self.get_rng_state(i)
                                                                       for i in range(len(self.states))])
            monkeypatch.setattr(module, "set_rng_state_all", lambda states: [self.set_rng_state(s, i)
                                                                              for i, s in enumerate(states)])
        return self


@pytest.mark.parametrize("resume_gpus", [1, 2])
def test_a_checkpoint_of_8_cuda_states_resumes_on_fewer_gpus(resume_gpus: int, monkeypatch) -> None:
    """An older checkpoint (one state per GPU visible at save time) restores cuda:0's state, the one rank 0 used."""
    saved = rng_state()
    saved["cuda"] = [torch.full((8,), 100 + i, dtype=torch.uint8) for i in range(8)]
    resumed = FakeCuda(resume_gpus).install(monkeypatch)
    set_rng_state(saved)
    assert torch.equal(resumed.states[0], saved["cuda"][0])


def test_the_current_device_state_alone_is_saved_and_restored(monkeypatch) -> None:
    at_save = FakeCuda(8).install(monkeypatch)
    at_save.states[0] = torch.full((8,), 42, dtype=torch.uint8)
    state = rng_state()
    assert len(state["cuda"]) == 1  # the same checkpoint on 1 or 8 GPUs
    resumed = FakeCuda(1).install(monkeypatch)
    set_rng_state(state)
    assert torch.equal(resumed.states[0], torch.full((8,), 42, dtype=torch.uint8))

"""Counting the host-device synchronizations a piece of code reaches, on any device (a CPU included).

On a GPU each of these makes the CPU wait for the GPU to drain its queue: a value read back
(`.item()`, `.tolist()`, `bool()`, `float()`, `.cpu()`), an op whose output size depends on the
data (`nonzero`, boolean-mask indexing, `masked_select`), or a tensor built from Python values on
a device (`torch.tensor(..., device=...)`, a blocking copy). `count_host_syncs` counts the calls
that reach torch (a TorchFunctionMode), so a CPU test sees what a GPU would wait for;
`torch.cuda.set_sync_debug_mode` is the GPU's own count of the same thing.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

_READ_BACK = {Tensor.item, Tensor.tolist, Tensor.__bool__, Tensor.__float__, Tensor.__int__, Tensor.cpu}
_DYNAMIC_SHAPE = {torch.nonzero, Tensor.nonzero, torch.masked_select, Tensor.masked_select, torch.argwhere,
                  Tensor.argwhere}
_FROM_PYTHON = {torch.tensor, torch.as_tensor}


def _is_mask(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in items)


def _name(func: Any) -> str:
    return getattr(func, "__name__", str(func))


class _SyncCounter(TorchFunctionMode):
    def __init__(self, counts: Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _READ_BACK or func in _DYNAMIC_SHAPE:
            self.counts[_name(func)] += 1
        elif func in _FROM_PYTHON and kwargs.get("device") is not None and not isinstance(args[0], Tensor):
            self.counts[f"{_name(func)}(device=)"] += 1
        elif func in (Tensor.__getitem__, Tensor.__setitem__) and len(args) > 1 and _is_mask(args[1]):
            self.counts[f"{_name(func)}[mask]"] += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def count_host_syncs() -> Iterator[Counter]:
    """`with count_host_syncs() as counts:` -> counts[call] = how often the block reached it."""
    counts: Counter = Counter()
    with _SyncCounter(counts):
        yield counts

"""Process-group helpers for torchrun (env:// rendezvous); every function is a no-op in one process.

`torchrun --nproc_per_node=N train.py ...` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; `init_from_env` joins the group when WORLD_SIZE > 1 and pins each process to the GPU
of its LOCAL_RANK. Plain `python train.py` never creates a group, so the single-process path runs
no collective at all. Every collective of the package goes through the functions here.

On CUDA the group is `cpu:gloo,cuda:nccl`: CUDA tensors (gradients, step stats) go over NCCL and
CPU tensors over gloo. NCCL has no CPU tensors, so a plain `nccl` group fails on any collective
of a CPU tensor (the val loss once did); the mixed group makes every device a tensor may live on
valid, and the object collectives (pickles: COCO records, metrics, checkpoints) stay in host
memory over gloo instead of being copied to the GPU and back.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

# How long a collective waits for the slowest rank before the group aborts. Rank 0 alone runs the
# COCO evaluation and writes checkpoints while the others wait in the next collective: on a large
# val set that passes torch's 10-minute NCCL default, so the wait allowed here is one hour.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=60)
CUDA_BACKEND = "cpu:gloo,cuda:nccl"


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 without torchrun), readable before the group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 writes every file (logs, TensorBoard, config, checkpoints); the other ranks write nothing."""
    return get_rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join the torchrun process group when WORLD_SIZE > 1; returns the device this process uses.

    On CUDA each process takes the GPU of its LOCAL_RANK (so `cuda` becomes `cuda:LOCAL_RANK`).
    """
    if env_world_size() <= 1 or is_distributed():
        return device
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group(CUDA_BACKEND, init_method="env://", device_id=device, timeout=PROCESS_GROUP_TIMEOUT)
    else:
        dist.init_process_group("gloo", init_method="env://", timeout=PROCESS_GROUP_TIMEOUT)
    return device


def cleanup() -> None:
    """Leave the process group (called at exit, also after an error); safe to call twice."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over ranks, returned as a new tensor (the input is untouched); the input itself in one process."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_max(value: int, device: torch.device) -> int:
    """Largest of an int over ranks: a flag any rank raises (e.g. a stop signal) reaches all of them."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_object(obj: Any) -> list[Any] | None:
    """Every rank's picklable object, in rank order, on rank 0 (None on the others); `[obj]` in one process."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] | None = [None] * dist.get_world_size() if is_main_process() else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast_object(obj: Any) -> Any:
    """Rank 0's object on every rank (the argument of other ranks is ignored); `obj` in one process."""
    if not is_distributed():
        return obj
    box = [obj if is_main_process() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def raise_from_main(error: BaseException | None) -> None:
    """Raise on every rank the error rank 0 found in a check only rank 0 makes (its run folder).

    Without this, rank 0 would stop and the others would wait for it in the next collective.
    """
    error = broadcast_object(error)
    if error is not None:
        raise error


def quiet_other_ranks() -> None:
    """On ranks other than 0: console warnings and errors only, prefixed with the rank."""
    if is_main_process():
        return
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(f"%(levelname)s [rank {get_rank()}] %(message)s"))

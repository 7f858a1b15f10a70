"""Data-parallel training under torchrun: the process group, the DDP wrapper and the collectives
the loop uses. With one process (no torchrun, or WORLD_SIZE 1) every function is a no-op."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def setup(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device) — initialises the process group under torchrun (WORLD_SIZE > 1):
    NCCL on CUDA (one GPU per local rank), gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def wrap(model: nn.Module, device: torch.device, world: int) -> nn.Module:
    """``model`` in DistributedDataParallel (gradients all-reduced) when there are several processes."""
    if world <= 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_gather(value, world: int) -> list:
    """Every rank's ``value`` (any picklable object), in rank order."""
    if world <= 1:
        return [value]
    gathered = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def broadcast(value, world: int):
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if world <= 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]

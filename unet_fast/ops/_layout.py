"""The memory-format rules of the ops' outputs, in one place."""
from __future__ import annotations

import torch


def output_memory_format(backend: str, like: torch.Tensor) -> torch.memory_format:
    """Layout of an op's output: always channels_last from Triton (and from the block ops' "auto",
    whose cuDNN fallback converts to it); from torch, the input's layout."""
    if backend in ("triton", "auto"):
        return torch.channels_last
    # PyTorch's own rule (suggest_memory_format): channels_last strides, which for a single channel
    # means a unit channel stride, as ``.to(memory_format=torch.channels_last)`` gives.
    channels_last = like.is_contiguous(memory_format=torch.channels_last) and (
        not like.is_contiguous() or like.dim() == 4 and like.stride(1) <= like.stride(3)
    )
    return torch.channels_last if channels_last else torch.contiguous_format


def extension_memory_format(like: torch.Tensor) -> torch.memory_format:
    """Layout of the C++ ops' outputs (center_crop_concat, elastic_warp), as csrc/ops/*_checks.h
    decide it: channels_last exactly when ``like`` is channels_last and not also NCHW-contiguous."""
    channels_last = like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format

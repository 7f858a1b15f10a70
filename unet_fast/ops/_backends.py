"""Backend choice shared by the Triton-backed ops: "auto", "triton" or "torch"."""
from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "torch")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """Whether Triton kernels run in the interpreter on CPU tensors (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_backend(backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """"triton" or "torch" for tensors on ``device`` of ``dtype``; ValueError when "triton" cannot run them.

    "auto" picks triton for CUDA tensors of fp16/bf16/fp32 when Triton is installed, torch otherwise.
    """
    check_backend(backend)
    device = torch.device(device)
    if backend == "torch":
        return "torch"
    can_run = triton_available() and (device.type == "cuda" or (device.type == "cpu" and triton_interpreting()))
    if backend == "auto":
        return "triton" if can_run and device.type == "cuda" and dtype in TRITON_DTYPES else "torch"
    if not triton_available():
        raise ValueError('backend="triton" needs the triton package, which is not installed')
    if not can_run:
        raise ValueError(f'backend="triton" runs on CUDA tensors (or on CPU under TRITON_INTERPRET=1), got {device}')
    if dtype not in TRITON_DTYPES:
        raise TypeError(f'backend="triton" supports float16, bfloat16 and float32, got {dtype}')
    return "triton"


def dot_precision(device: torch.device, dtype: torch.dtype) -> str:
    """The Triton ``tl.dot`` input precision matching PyTorch's convolutions: TF32 for fp32 CUDA tensors
    exactly when cuDNN convolutions may use it, IEEE otherwise (fp16/bf16 ignore it)."""
    if torch.device(device).type != "cuda" or dtype != torch.float32:
        return "ieee"
    from unet_fast.ops.conv3x3 import conv_allows_tf32  # the one rule, shared with the fused 3x3 conv

    return "tf32" if conv_allows_tf32() else "ieee"


def output_memory_format(backend: str, like: torch.Tensor) -> torch.memory_format:
    """Layout of an op's output: always channels_last from Triton; from torch, the input's layout."""
    if backend == "triton":
        return torch.channels_last
    # PyTorch's own rule (suggest_memory_format): channels_last strides, which for a single channel
    # means a unit channel stride, as ``.to(memory_format=torch.channels_last)`` gives.
    channels_last = like.is_contiguous(memory_format=torch.channels_last) and (
        not like.is_contiguous() or like.dim() == 4 and like.stride(1) <= like.stride(3)
    )
    return torch.channels_last if channels_last else torch.contiguous_format

"""conv1x1: the U-Net's output layer, ``F.conv2d(x, weight, bias)`` with a (C_out, C_in, 1, 1) weight.

With backend "triton" it is one GEMM over the pixels (``unet_fast.triton.conv1x1``) with the bias in
its epilogue, and the backward is two GEMMs; "torch" runs the PyTorch composite; "auto" picks triton
for CUDA tensors when Triton is installed. What it shares with ``upconv2x2`` (checks, autograd
wiring) is in ``unet_fast.ops._pixel_gemm``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from unet_fast.ops._numerics import dot_precision
from unet_fast.ops._pixel_gemm import (
    aten_backward, aten_forward, check_common, empty_grads, empty_output, register_autograd, runs_kernels,
)
from unet_fast.ops.backend import triton_available

if triton_available():  # our kernel modules' own ImportErrors are not caught
    from unet_fast.triton.conv1x1 import conv1x1_backward, conv1x1_forward


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
            backend: str = "auto") -> torch.Tensor:
    """1x1 convolution, as ``nn.Conv2d(C_in, C_out, 1)``.

    Args:
        x: (N, C_in, H, W), float16/bfloat16/float32 (float64 with backend "torch"), any layout.
        weight: (C_out, C_in, 1, 1), x's dtype and device.
        bias: (C_out,) or None.
        backend: "auto", "triton" or "torch".
    Returns:
        (N, C_out, H, W); channels_last from Triton, x's layout from torch; x's dtype (the autocast
        dtype under torch.autocast). Differentiable.
    """
    x, weight, bias, resolved = check_common(x, weight, bias, backend)
    if tuple(weight.shape[1:]) != (x.shape[1], 1, 1):
        raise ValueError(f"weight must have shape (C_out, C_in={x.shape[1]}, 1, 1), got {tuple(weight.shape)}")
    if bias is not None and bias.shape[0] != weight.shape[0]:
        raise ValueError(f"bias must have shape (C_out={weight.shape[0]},), got {tuple(bias.shape)}")
    return torch.ops.unet_fast.conv1x1(x, weight, bias, resolved)


def conv1x1_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, backend: str) -> torch.Tensor:
    """The op's computation without validation or autograd (also used by the model's head), in the
    inputs' dtype whatever autocast says; backend "auto" (the block ops') runs Triton where it can
    index the pixels."""
    if runs_kernels(backend, x):
        return conv1x1_forward(x, weight, bias, input_precision=dot_precision(x))
    return aten_forward(lambda: F.conv2d(x, weight, bias), x, backend)


def conv1x1_backward_impl(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, backend: str):
    """(grad_x, grad_weight, grad_bias) of ``conv1x1_impl``."""
    if runs_kernels(backend, x):
        return conv1x1_backward(grad_y, x, weight, need_input_grad=True, input_precision=dot_precision(x))
    return aten_backward(grad_y, x, weight, backend, out_channels=weight.shape[0], stride=1, transposed=False)


@torch.library.custom_op("unet_fast::conv1x1", mutates_args=())
def _conv1x1_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    return conv1x1_impl(x, weight, bias, backend)


@_conv1x1_op.register_fake
def _conv1x1_fake(x, weight, bias, backend):
    return empty_output(x, (x.shape[0], weight.shape[0], *x.shape[2:]), backend)


@torch.library.custom_op("unet_fast::conv1x1_backward", mutates_args=())
def _conv1x1_backward_op(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return conv1x1_backward_impl(grad_y, x, weight, backend)


@_conv1x1_backward_op.register_fake
def _conv1x1_backward_fake(grad_y, x, weight, backend):
    return empty_grads(x, weight, weight.shape[0], backend)


register_autograd("conv1x1", torch.ops.unet_fast.conv1x1_backward)

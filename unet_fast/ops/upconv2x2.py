"""upconv2x2: the U-Net's 2x2 stride-2 up-convolution, ``F.conv_transpose2d(x, weight, bias, stride=2)``.

With backend "triton" it is one GEMM over the pixels (``unet_fast.triton.upconv2x2``) with the bias
and the scatter to the 2x larger output in its epilogue, and the backward is two GEMMs; "torch" runs
the PyTorch composite; "auto" picks triton for CUDA tensors when Triton is installed. What it shares
with ``conv1x1`` (checks, autograd wiring) is in ``unet_fast.ops._pixel_gemm``.
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
    from unet_fast.triton.upconv2x2 import upconv2x2_backward, upconv2x2_forward


def upconv2x2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
              backend: str = "auto") -> torch.Tensor:
    """2x2 transposed convolution with stride 2, as ``nn.ConvTranspose2d(C_in, C_out, 2, stride=2)``.

    Args:
        x: (N, C_in, H, W), float16/bfloat16/float32 (float64 with backend "torch"), any layout.
        weight: (C_in, C_out, 2, 2), x's dtype and device.
        bias: (C_out,) or None.
        backend: "auto", "triton" or "torch".
    Returns:
        (N, C_out, 2H, 2W); channels_last from Triton, x's layout from torch; x's dtype (the autocast
        dtype under torch.autocast). Differentiable.
    """
    x, weight, bias, resolved = check_common(x, weight, bias, backend)
    if tuple(weight.shape[1:]) != (weight.shape[1], 2, 2) or weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight must have shape (C_in={x.shape[1]}, C_out, 2, 2), got {tuple(weight.shape)}")
    if bias is not None and bias.shape[0] != weight.shape[1]:
        raise ValueError(f"bias must have shape (C_out={weight.shape[1]},), got {tuple(bias.shape)}")
    return torch.ops.unet_fast.upconv2x2(x, weight, bias, resolved)


def upconv2x2_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, backend: str) -> torch.Tensor:
    """The op's computation without validation or autograd (also used inside the model's blocks), in
    the inputs' dtype whatever autocast says; backend "auto" (the block ops') runs Triton where it can
    index the pixels."""
    if runs_kernels(backend, x):
        return upconv2x2_forward(x, weight, bias, input_precision=dot_precision(x))
    return aten_forward(lambda: F.conv_transpose2d(x, weight, bias, stride=2), x, backend)


def upconv2x2_backward_impl(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, backend: str):
    """(grad_x, grad_weight, grad_bias) of ``upconv2x2_impl``; grad_x in the op's output layout rule."""
    if runs_kernels(backend, x):
        return upconv2x2_backward(grad_y, x, weight, need_input_grad=True, input_precision=dot_precision(x))
    return aten_backward(grad_y, x, weight, backend, out_channels=weight.shape[1], stride=2, transposed=True)


@torch.library.custom_op("unet_fast::upconv2x2", mutates_args=())
def _upconv2x2_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    return upconv2x2_impl(x, weight, bias, backend)


@_upconv2x2_op.register_fake
def _upconv2x2_fake(x, weight, bias, backend):
    return empty_output(x, (x.shape[0], weight.shape[1], 2 * x.shape[2], 2 * x.shape[3]), backend)


@torch.library.custom_op("unet_fast::upconv2x2_backward", mutates_args=())
def _upconv2x2_backward_op(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                           backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return upconv2x2_backward_impl(grad_y, x, weight, backend)


@_upconv2x2_backward_op.register_fake
def _upconv2x2_backward_fake(grad_y, x, weight, backend):
    return empty_grads(x, weight, weight.shape[1], backend)


register_autograd("upconv2x2", torch.ops.unet_fast.upconv2x2_backward)

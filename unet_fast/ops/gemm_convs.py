"""The U-Net's two convolutions that are per-pixel GEMMs: the 2x2 stride-2 up-convolution and the 1x1 conv.

``upconv2x2(x, weight, bias)`` equals ``F.conv_transpose2d(x, weight, bias, stride=2)`` and
``conv1x1(x, weight, bias)`` equals ``F.conv2d(x, weight, bias)``. With backend "triton" each is one
GEMM over the pixels with the bias (and for the up-convolution the scatter to the 2x larger output)
in its epilogue, and the backward is two GEMMs; "torch" runs the PyTorch composite; "auto" picks
triton for CUDA tensors when Triton is installed. Both are ``torch.library`` custom ops with fake
kernels and autograd formulas, so ``torch.compile(fullgraph=True)`` traces them without a break.
Saved for backward: the input only (and the weight, which is the caller's tensor, not a copy).

Under torch.autocast the public ops cast x, weight and bias to the autocast dtype first (float64 is
left alone, as autocast does), as ``F.conv2d`` would: both backends and the fake kernels then agree
on the output dtype, and each gradient comes back in its input's dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from unet_fast.ops._backends import (
    autocast_cast,
    autocast_disabled,
    autocast_dtype,
    check_backend,
    dot_precision,
    output_memory_format,
    resolve_backend,
)
from unet_fast.ops._validation import FLOAT_DTYPES, check_same, check_tensor


def _check_common(x, weight, bias, backend):
    """(x, weight, bias) cast as autocast would, and the resolved backend; errors name the argument."""
    check_backend(backend)
    check_tensor("x", x, dim=4, dtypes=FLOAT_DTYPES)
    check_tensor("weight", weight, dim=4, dtypes=FLOAT_DTYPES)
    if bias is not None:
        check_tensor("bias", bias, dim=1, dtypes=FLOAT_DTYPES)
    compute_dtype = autocast_dtype(x.device.type)
    x, weight, bias = (autocast_cast(compute_dtype, t) for t in (x, weight, bias))
    check_same("weight", weight, "x", x)
    if bias is not None:
        check_same("bias", bias, "x", x)
    resolved = resolve_backend(backend, x.device, x.dtype)
    if resolved == "triton" and backend == "auto" and not _fits_pixel_kernels(x):
        resolved = "torch"  # PyTorch for what the kernels cannot index; "triton" raises in the launcher
    return x, weight, bias, resolved


def _fits_pixel_kernels(x: torch.Tensor) -> bool:
    """Whether the per-pixel GEMM kernels' int32 indices cover x's N*H*W pixels."""
    from unet_fast.triton.pixel_gemm import MAX_PIXELS, pixel_rows

    return pixel_rows(x) <= MAX_PIXELS


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
    x, weight, bias, resolved = _check_common(x, weight, bias, backend)
    if tuple(weight.shape[1:]) != (weight.shape[1], 2, 2) or weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight must have shape (C_in={x.shape[1]}, C_out, 2, 2), got {tuple(weight.shape)}")
    if bias is not None and bias.shape[0] != weight.shape[1]:
        raise ValueError(f"bias must have shape (C_out={weight.shape[1]},), got {tuple(bias.shape)}")
    return torch.ops.unet_fast.upconv2x2(x, weight, bias, resolved)


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
    x, weight, bias, resolved = _check_common(x, weight, bias, backend)
    if tuple(weight.shape[1:]) != (x.shape[1], 1, 1):
        raise ValueError(f"weight must have shape (C_out, C_in={x.shape[1]}, 1, 1), got {tuple(weight.shape)}")
    if bias is not None and bias.shape[0] != weight.shape[0]:
        raise ValueError(f"bias must have shape (C_out={weight.shape[0]},), got {tuple(bias.shape)}")
    return torch.ops.unet_fast.conv1x1(x, weight, bias, resolved)


def _runs_kernels(backend: str, x: torch.Tensor) -> bool:
    """Whether the per-pixel GEMM kernels compute: always for "triton" (they raise for what they cannot
    index), never for "torch", and for the block ops' "auto" where they can index x's N*H*W pixels."""
    return backend == "triton" or (backend == "auto" and _fits_pixel_kernels(x))


# --- up-convolution ---------------------------------------------------------------------------------

def upconv2x2_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, backend: str) -> torch.Tensor:
    """The op's computation without validation or autograd (also used inside the model's blocks), in
    the inputs' dtype whatever autocast says; backend "auto" (the block ops') runs Triton where it can
    index the pixels."""
    if _runs_kernels(backend, x):
        from unet_fast.triton.upconv2x2 import upconv2x2_forward

        return upconv2x2_forward(x, weight, bias, dot_precision(x.device, x.dtype))
    with autocast_disabled(x.device.type):
        y = F.conv_transpose2d(x, weight, bias, stride=2)
    return y.contiguous(memory_format=output_memory_format(backend, x))


def upconv2x2_backward_impl(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, backend: str):
    """(grad_x, grad_weight, grad_bias) of ``upconv2x2_impl``; grad_x in the op's output layout rule."""
    if _runs_kernels(backend, x):
        from unet_fast.triton.upconv2x2 import upconv2x2_backward

        return upconv2x2_backward(grad_y, x, weight, True, dot_precision(x.device, x.dtype))
    with autocast_disabled(x.device.type):
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_y, x, weight, [weight.shape[1]], [2, 2], [0, 0], [1, 1], True, [0, 0], 1, [True, True, True]
        )
    return grad_x.contiguous(memory_format=output_memory_format(backend, x)), grad_weight.contiguous(), grad_bias


@torch.library.custom_op("unet_fast::upconv2x2", mutates_args=())
def _upconv2x2_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    return upconv2x2_impl(x, weight, bias, backend)


@_upconv2x2_op.register_fake
def _upconv2x2_fake(x, weight, bias, backend):
    n, _, height, width = x.shape
    return torch.empty((n, weight.shape[1], 2 * height, 2 * width), dtype=x.dtype, device=x.device,
                       memory_format=output_memory_format(backend, x))


@torch.library.custom_op("unet_fast::upconv2x2_backward", mutates_args=())
def _upconv2x2_backward_op(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                           backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return upconv2x2_backward_impl(grad_y, x, weight, backend)


@_upconv2x2_backward_op.register_fake
def _upconv2x2_backward_fake(grad_y, x, weight, backend):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(backend, x)),
            torch.empty(weight.shape, dtype=weight.dtype, device=weight.device),
            weight.new_empty((weight.shape[1],)))


# --- 1x1 convolution --------------------------------------------------------------------------------

def conv1x1_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, backend: str) -> torch.Tensor:
    """The op's computation without validation or autograd (also used by the model's head), in the
    inputs' dtype whatever autocast says; backend "auto" (the block ops') runs Triton where it can
    index the pixels."""
    if _runs_kernels(backend, x):
        from unet_fast.triton.conv1x1 import conv1x1_forward

        return conv1x1_forward(x, weight, bias, dot_precision(x.device, x.dtype))
    with autocast_disabled(x.device.type):
        y = F.conv2d(x, weight, bias)
    return y.contiguous(memory_format=output_memory_format(backend, x))


def conv1x1_backward_impl(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, backend: str):
    """(grad_x, grad_weight, grad_bias) of ``conv1x1_impl``."""
    if _runs_kernels(backend, x):
        from unet_fast.triton.conv1x1 import conv1x1_backward

        return conv1x1_backward(grad_y, x, weight, True, dot_precision(x.device, x.dtype))
    with autocast_disabled(x.device.type):
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_y, x, weight, [weight.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, True]
        )
    return grad_x.contiguous(memory_format=output_memory_format(backend, x)), grad_weight.contiguous(), grad_bias


@torch.library.custom_op("unet_fast::conv1x1", mutates_args=())
def _conv1x1_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    return conv1x1_impl(x, weight, bias, backend)


@_conv1x1_op.register_fake
def _conv1x1_fake(x, weight, bias, backend):
    return torch.empty((x.shape[0], weight.shape[0], *x.shape[2:]), dtype=x.dtype, device=x.device,
                       memory_format=output_memory_format(backend, x))


@torch.library.custom_op("unet_fast::conv1x1_backward", mutates_args=())
def _conv1x1_backward_op(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return conv1x1_backward_impl(grad_y, x, weight, backend)


@_conv1x1_backward_op.register_fake
def _conv1x1_backward_fake(grad_y, x, weight, backend):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(backend, x)),
            torch.empty(weight.shape, dtype=weight.dtype, device=weight.device),
            weight.new_empty((weight.shape[0],)))


# --- autograd ---------------------------------------------------------------------------------------

def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.backend, ctx.has_bias = backend, bias is not None


def _make_backward(backward_op):
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = backward_op(grad_y, x, weight, ctx.backend)
        return grad_x, grad_weight, grad_bias if ctx.has_bias else None, None

    return backward


torch.library.register_autograd(
    "unet_fast::upconv2x2", _make_backward(torch.ops.unet_fast.upconv2x2_backward), setup_context=_setup_context
)
torch.library.register_autograd(
    "unet_fast::conv1x1", _make_backward(torch.ops.unet_fast.conv1x1_backward), setup_context=_setup_context
)

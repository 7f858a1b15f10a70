"""What the two per-pixel GEMM ops (``upconv2x2`` and ``conv1x1``) share: argument checks with
autograd's casts, the kernels-or-ATen rule and the autograd wiring. Both ops are ``torch.library``
custom ops with fake kernels and autograd formulas, so ``torch.compile(fullgraph=True)`` traces them
without a break. Saved for backward: the input only (and the weight, the caller's tensor).

Under torch.autocast the public ops cast x, weight and bias to the autocast dtype first (float64 is
left alone, as autocast does), as ``F.conv2d`` would: both backends and the fake kernels then agree
on the output dtype, and each gradient comes back in its input's dtype.
"""
from __future__ import annotations

import torch

from unet_fast.ops._layout import output_memory_format
from unet_fast.ops._numerics import FLOAT_DTYPES, autocast_cast, autocast_disabled, autocast_dtype
from unet_fast.ops._validation import check_same, check_tensor
from unet_fast.ops.backend import check_backend, resolve_backend
from unet_fast.triton.runtime import MAX_PIXELS, check_pixels, pixel_rows


def check_common(x, weight, bias, backend):
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
    if backend == "triton":
        check_pixels(pixel_rows(x))  # here, before the custom op dispatches (the launchers check again)
    elif resolved == "triton" and not fits_pixel_kernels(x):
        resolved = "torch"  # "auto": PyTorch for what the kernels cannot index
    return x, weight, bias, resolved


def fits_pixel_kernels(x: torch.Tensor) -> bool:
    """Whether the per-pixel GEMM kernels' int32 indices cover x's N*H*W pixels."""
    return pixel_rows(x) <= MAX_PIXELS


def runs_kernels(backend: str, x: torch.Tensor) -> bool:
    """Whether the per-pixel GEMM kernels compute: always for "triton" (they raise for what they cannot
    index), never for "torch", and for the block ops' "auto" where they can index x's N*H*W pixels."""
    return backend == "triton" or (backend == "auto" and fits_pixel_kernels(x))


def aten_forward(aten, x: torch.Tensor, backend: str) -> torch.Tensor:
    """``aten()`` (the PyTorch composite) without autocast, in the ops' output layout for ``backend``."""
    with autocast_disabled(x.device.type):
        y = aten()
    return y.contiguous(memory_format=output_memory_format(backend, x))


def aten_backward(grad_y, x, weight, backend: str, *, out_channels: int, stride: int, transposed: bool):
    """(grad_x, grad_weight, grad_bias) of the composite by ``aten.convolution_backward``, grad_x in
    the ops' output layout."""
    with autocast_disabled(x.device.type):
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_y, x, weight, [out_channels], [stride, stride], [0, 0], [1, 1], transposed, [0, 0], 1,
            [True, True, True],
        )
    return grad_x.contiguous(memory_format=output_memory_format(backend, x)), grad_weight.contiguous(), grad_bias


def empty_output(x: torch.Tensor, shape, backend: str) -> torch.Tensor:
    """The fake kernels' output: ``shape`` in x's dtype, device and the ops' output layout."""
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(backend, x))


def empty_grads(x: torch.Tensor, weight: torch.Tensor, out_channels: int, backend: str) -> tuple:
    """The fake backward kernels' (grad_x, grad_weight, grad_bias)."""
    return (empty_output(x, x.shape, backend), torch.empty(weight.shape, dtype=weight.dtype, device=weight.device),
            weight.new_empty((out_channels,)))


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.backend, ctx.has_bias = backend, bias is not None


def register_autograd(op_name: str, backward_op) -> None:
    """Autograd of ``unet_fast::<op_name>(x, weight, bias, backend)`` through its backward custom op."""
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = backward_op(grad_y, x, weight, ctx.backend)
        return grad_x, grad_weight, grad_bias if ctx.has_bias else None, None

    torch.library.register_autograd(f"unet_fast::{op_name}", backward, setup_context=_setup_context)

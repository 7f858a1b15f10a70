"""center_crop_concat: the U-Net decoder's crop-and-concat in one pass (C++/CUDA kernels)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from unet_fast import _ext
from unet_fast.ops._layout import extension_memory_format
from unet_fast.ops._numerics import FLOAT_DTYPES
from unet_fast.ops._validation import check_same, check_tensor
from unet_fast.triton.runtime import check_crop


def center_crop_concat(skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1)`` in one pass.

    Args:
        skip: (N, C0, Hs, Ws), cropped at its center to (H, W); Hs - H and Ws - W even and >= 0.
        x: (N, C1, H, W), same dtype (any float) and device.
    Returns:
        (N, C0 + C1, H, W), channels_last when x is channels_last, else contiguous. Differentiable.
    """
    check_tensor("skip", skip, dim=4, dtypes=FLOAT_DTYPES)
    check_tensor("x", x, dim=4, dtypes=FLOAT_DTYPES)
    check_same("skip", skip, "x", x)
    if skip.shape[0] != x.shape[0]:
        raise ValueError(f"skip and x must have the same batch size, got {skip.shape[0]} and {x.shape[0]}")
    check_crop(skip.shape, x.shape)
    _ext.require_extension()
    return torch.ops.unet_fast.center_crop_concat(skip, x)


def _fake(skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    n, c1, h, w = x.shape
    return x.new_empty((n, skip.shape[1] + c1, h, w)).to(memory_format=extension_memory_format(x))


def _setup_context(ctx, inputs, output) -> None:
    skip, x = inputs
    ctx.skip_shape = skip.shape
    ctx.x_shape = x.shape


def center_crop_concat_backward(grad: torch.Tensor, skip_shape, x_shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_skip, grad_x) of the crop-concat from the gradient of its output: skip's channels padded
    back to skip's size (zero outside the crop window), x's as they are. Also the 3x3 conv's."""
    skip_channels = skip_shape[1]
    top, left = check_crop(skip_shape, x_shape)
    bottom = skip_shape[2] - x_shape[2] - top
    right = skip_shape[3] - x_shape[3] - left
    return F.pad(grad[:, :skip_channels], (left, right, top, bottom)), grad[:, skip_channels:]


def _backward(ctx, grad: torch.Tensor):
    return center_crop_concat_backward(grad, ctx.skip_shape, ctx.x_shape)


if _ext._C is not None:
    torch.library.register_fake("unet_fast::center_crop_concat")(_fake)
    torch.library.register_autograd("unet_fast::center_crop_concat", _backward, setup_context=_setup_context)

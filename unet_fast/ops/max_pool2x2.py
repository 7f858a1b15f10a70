"""max_pool2x2: ``max_pool2d(y, 2)`` without indices, for the fused conv's pool on CPU.

ATen's CPU max-pool also computes indices, and on NCHW tensors walks one window at a time (at the
U-Net's first level about as slow as a 3x3 convolution). The C++ kernel
(``csrc/ops/cpu/max_pool2x2_kernel.cpp``) keeps no indices and reads two rows per output row (NCHW)
or runs of channels (channels_last, the fused CPU path's layout), any other strides plane by plane;
other devices and builds without the kernel run ``F.max_pool2d``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

from unet_fast import _ext

# False without the extension, or with one built before this op existed: F.max_pool2d then runs
HAS_KERNEL = _ext._C is not None and hasattr(torch.ops.unet_fast, "max_pool2x2")


def max_pool2x2(y: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(y, 2)``: y (N, C, H, W) -> (N, C, H // 2, W // 2), y's dtype and memory format.

    Internal (no validation, no autograd): the block ops' forward and backward recompute call it."""
    if HAS_KERNEL and y.device.type == "cpu":
        return torch.ops.unet_fast.max_pool2x2(y)
    return F.max_pool2d(y, 2)


def _fake(y):
    n, c, h, w = y.shape  # the kernel's layout rule: y.suggest_memory_format()
    return torch.empty((n, c, h // 2, w // 2), dtype=y.dtype, device=y.device,
                       memory_format=suggest_memory_format(y))


if HAS_KERNEL:
    torch.library.register_fake("unet_fast::max_pool2x2")(_fake)

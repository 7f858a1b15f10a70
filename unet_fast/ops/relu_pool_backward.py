"""relu_pool_backward: the gradient at a conv's pre-activation, behind ReLU and an optional 2x2 max-pool.

For ``y = relu(z)`` and, optionally, ``pooled = max_pool2d(y, 2)``, the gradient reaching z is

    grad_z = where(y <= 0, 0, grad_y + max_pool2d_backward(grad_pooled, y))

with the pool's argmax found again from y (PyTorch's rule: the first maximum of each window in
row-major order; a NaN wins) and the mask as ReLU's backward applies it (a NaN passes). On CPU one
C++ kernel (``csrc/ops/cpu/relu_pool_backward_kernel.cpp``) does it in one pass; elsewhere, or
without the extension, the PyTorch composite of the same formula runs. This is the backward's first step of every fused 3x3 conv on the "torch" backend.
"""
from __future__ import annotations

import torch

from unet_fast import _ext

# False without the extension, or with one built before this op existed: the composite then runs
HAS_KERNEL = _ext._C is not None and hasattr(torch.ops.unet_fast, "relu_pool_backward")


def relu_pool_backward(y: torch.Tensor, grad_y: torch.Tensor | None, grad_pooled: torch.Tensor | None, *,
                       relu: bool = True) -> torch.Tensor:
    """``where(y <= 0, 0, grad_y + max_pool2d_backward(grad_pooled, y))``; an absent term counts as zero.

    Args:
        y: (N, C, H, W), the ReLU's output.
        grad_y: y's shape, or None.
        grad_pooled: (N, C, H // 2, W // 2) for pooled = max_pool2d(y, 2), or None.
        relu: False for a conv without ReLU (y is then the conv's output): no mask, the composite.
    Returns:
        (N, C, H, W) in y's dtype and memory format. Internal (no validation beyond the kernel's own
        checks, no autograd): called inside the block ops' backward.
    """
    if relu and HAS_KERNEL and y.device.type == "cpu":
        return torch.ops.unet_fast.relu_pool_backward(y, grad_y, grad_pooled)
    return _composite(y, grad_y, grad_pooled, relu)


def _composite(y, grad_y, grad_pooled, relu=True):
    grad = torch.zeros_like(y) if grad_y is None else grad_y
    if grad_pooled is not None:  # routed to each window's argmax, recomputed from y (PyTorch's tie rule)
        _, indices = torch.ops.aten.max_pool2d_with_indices(y, [2, 2], [2, 2])
        grad = grad + torch.ops.aten.max_pool2d_with_indices_backward(grad_pooled, y, [2, 2], [2, 2], [0, 0], [1, 1],
                                                                      False, indices)
    return torch.ops.aten.threshold_backward(grad, y, 0) if relu else grad


def _fake(y, grad_y, grad_pooled):
    return torch.empty_like(y)


if HAS_KERNEL:
    torch.library.register_fake("unet_fast::relu_pool_backward")(_fake)

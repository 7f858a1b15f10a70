"""border_distances: distances to the nearest and second-nearest instance (the C++ op
``unet_fast::border_distances``, csrc/ops/cpu/border_distances_kernel.cpp), the border weight map's input
(``unet_fast.weight_map``)."""
from __future__ import annotations

import math

import numpy as np
import torch

from unet_fast import _ext
from unet_fast.ops._validation import check_has_values


def as_long_tensor(name: str, value) -> torch.Tensor:
    """``value`` (an integer tensor or array, (H, W) or (N, H, W), not on the meta device) as an int64
    tensor; errors name it."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {value.dtype}")
    if value.dim() not in (2, 3):
        raise ValueError(f"{name} must be (H, W) or (N, H, W), got shape {tuple(value.shape)}")
    check_has_values(name, value)  # the distances are computed from its values on the CPU
    return value.to(torch.int64)


def border_distances(instances, max_distance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances from every pixel to the nearest and the second-nearest distinct instance.

    Args:
        instances: (H, W) or (N, H, W) integer instance map (tensor or array), 0 = no instance.
        max_distance: distances beyond it are +inf (as are those to instances that do not exist).
    Returns:
        (d1, d2), float32 tensors of the input's shape, on the input's device (computed on CPU).
        Pixels inside an instance have d1 = 0.
    """
    ids = as_long_tensor("instances", instances)
    if not isinstance(max_distance, (int, float)) or not math.isfinite(max_distance) or max_distance < 0:
        raise ValueError(f"max_distance must be a finite number >= 0, got {max_distance!r}")
    _ext.require_extension()
    batched = ids.dim() == 3
    d1, d2 = torch.ops.unet_fast.border_distances(
        (ids if batched else ids[None]).cpu().contiguous(), float(max_distance)
    )
    if not batched:
        d1, d2 = d1[0], d2[0]
    return d1.to(ids.device), d2.to(ids.device)


def _border_distances_fake(instances: torch.Tensor, max_distance: float) -> tuple[torch.Tensor, torch.Tensor]:
    return instances.new_empty(instances.shape, dtype=torch.float32), instances.new_empty(instances.shape, dtype=torch.float32)


if _ext._C is not None:
    torch.library.register_fake("unet_fast::border_distances")(_border_distances_fake)

"""simple_point_warp: the warping step of the warping error (C++ CPU kernel).

See csrc/ops/cpu/simple_point_warp_kernel.cpp for the algorithm: the target cell map is warped
toward the prediction by flipping only simple pixels (cells 4-connected, boundary 8-connected,
outside the image boundary), then every pixel still in disagreement is classified.
"""
from __future__ import annotations

import torch

from unet_fast import _ext

# Codes of the classes output, as the kernel writes them.
MISMATCH_CLASSES = {1: "split", 2: "merge", 3: "cell_addition", 4: "cell_deletion", 5: "hole_addition",
                    6: "hole_deletion"}


def simple_point_warp(target: torch.Tensor, prediction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp target toward prediction by simple-point flips.

    Args:
        target, prediction: (N, H, W) uint8 CPU cell maps, 0 = boundary, nonzero = cell.
    Returns:
        (warped, classes), both (N, H, W) uint8: warped is 0/1; classes is 0 where warped and
        prediction agree, else a code of ``MISMATCH_CLASSES`` (what flipping that pixel would do).
    """
    for name, t in (("target", target), ("prediction", prediction)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 3 or t.device.type != "cpu":
            raise ValueError(f"simple_point_warp: {name} must be an (N, H, W) uint8 CPU tensor, got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
    if target.shape != prediction.shape:
        raise ValueError(f"simple_point_warp: prediction shape {tuple(prediction.shape)} differs from target "
                         f"shape {tuple(target.shape)}")
    _ext.require_extension()
    return torch.ops.unet_fast.simple_point_warp(target, prediction)


def _fake(target: torch.Tensor, prediction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(target), torch.empty_like(target)


if _ext._C is not None:
    torch.library.register_fake("unet_fast::simple_point_warp")(_fake)

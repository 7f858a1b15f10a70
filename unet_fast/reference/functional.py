"""Per-op references in plain PyTorch ops."""
from __future__ import annotations

import torch

from unet_fast.shapes import crop_offset


def center_crop(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centered (..., h, w) window of ``t`` (..., H, W), as a view; H - h and W - w must be even."""
    top = crop_offset(t.shape[-2], size[0])
    left = crop_offset(t.shape[-1], size[1])
    return t[..., top : top + size[0], left : left + size[1]]


def center_crop_concat(skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``cat([center_crop(skip, x.shape[-2:]), x], dim=1)``: skip (N, C0, Hs, Ws), x (N, C1, H, W)."""
    return torch.cat([center_crop(skip, tuple(x.shape[-2:])), x], dim=1)

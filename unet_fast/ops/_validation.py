"""Input checks shared by the public ops: each raises a clear TypeError/ValueError naming the argument."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, t, *, dim: int | None = None, dtypes=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-d, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}; got {t.dtype}")


def check_same(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor, *, dtype: bool = True) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}")
    if dtype and a.dtype != b.dtype:
        raise TypeError(f"{name_a} has dtype {a.dtype} but {name_b} has dtype {b.dtype}")


def check_crop(skip_shape, x_shape) -> tuple[int, int]:
    """The (top, left) center-crop offset of x's (H, W) inside skip's (Hs, Ws); ValueError if not even and >= 0."""
    dh, dw = skip_shape[-2] - x_shape[-2], skip_shape[-1] - x_shape[-1]
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(
            f"skip {tuple(skip_shape[-2:])} must exceed x {tuple(x_shape[-2:])} by an even, non-negative "
            f"amount on each axis to be center-cropped to it (differences {dh}, {dw})"
        )
    return dh // 2, dw // 2


def is_channels_last(t: torch.Tensor) -> bool:
    """channels_last and not also NCHW-contiguous: the rule deciding the layout of our outputs."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()

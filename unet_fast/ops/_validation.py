"""Input checks shared by the public ops: each raises a clear TypeError/ValueError naming the argument
(the crop check, shared with the kernels, is ``unet_fast.triton.runtime.check_crop``)."""
from __future__ import annotations

import torch


def check_tensor(name: str, t, *, dim: int | None = None, dtypes=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-d, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}; got {t.dtype}")


def check_has_values(name: str, t: torch.Tensor) -> None:
    """ValueError for a meta tensor where the op reads values (shape-only meta tensors hold none)."""
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the meta device, which holds no values: pass a CPU or CUDA tensor")


def check_same(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor, *, dtype: bool = True) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}")
    if dtype and a.dtype != b.dtype:
        raise TypeError(f"{name_a} has dtype {a.dtype} but {name_b} has dtype {b.dtype}")

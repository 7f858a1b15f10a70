"""Runtime rules every Triton launcher of this package follows; imports only torch (and triton lazily).

- ``device_guard``: launches go to the tensors' CUDA device (Triton uses the current device).
- ``time_ms``: the one timing helper (the autotuners' and backend "auto"'s per-shape choices).
- ``autotune_enabled``: the ``UNET_FAST_AUTOTUNE`` switch; ``triton_interpreting``: TRITON_INTERPRET=1.
- ``input_precision``: the ``INPUT_PRECISION`` constexpr of every ``tl.dot`` ("tf32" or "ieee").
- ``MAX_PIXELS`` / ``pixel_rows`` / ``check_pixels``: the one int32 pixel-index limit of the GEMM kernels.
- ``weight_operand``: the one K-major/N-major layout rule of a GEMM's weight matrix.
- ``check_crop``: the center-crop offset of x inside skip, shared with the ops' validation.
"""
from __future__ import annotations

import contextlib
import os

import torch

# UNET_FAST_AUTOTUNE=0 makes every choice that is otherwise timed on first use fixed and
# reproducible: Triton kernels launch their first (default) configuration, and backend="auto"
# runs the Triton kernels on every shape instead of timing them against cuDNN.
AUTOTUNE_ENV = "UNET_FAST_AUTOTUNE"

# The kernels compute pixel indices, and element offsets within one image, in int32 (the image
# index is widened to int64 before it meets the batch stride): these bounds keep them exact.
INT32_MAX = 2**31 - 1
MAX_PIXELS = INT32_MAX - 1024  # the last pixel tile's indices run up to a block past the end


def device_guard(t: torch.Tensor):
    """Makes ``t``'s CUDA device the current one (Triton launches on the current device and stream)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def time_ms(fn, quantiles=None):
    """Run time of ``fn`` on the current CUDA device in ms (median, or these quantiles), after 5 ms of
    warm-up over 25 ms of runs: every per-shape timing of the package (backend "auto"'s Triton/cuDNN
    choice, the Triton autotuner's tiles) uses it. Triton's default 25 + 100 ms would spend minutes on
    the paper model, whose ~20 conv shapes are each tuned for three kernels over up to five tiles."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


def autotune_enabled() -> bool:
    """False when ``UNET_FAST_AUTOTUNE=0``: no per-shape timing anywhere (see AUTOTUNE_ENV)."""
    return os.environ.get(AUTOTUNE_ENV, "1").strip() not in ("0", "false", "False", "off")


def triton_interpreting() -> bool:
    """Whether Triton kernels run in the interpreter on CPU tensors (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def input_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """The ``INPUT_PRECISION`` of the kernels' dots: "tf32" for fp32 operands when TF32 is allowed,
    else "ieee" (16-bit operands ignore it)."""
    return "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"


def pixel_rows(t: torch.Tensor, scale: int = 1) -> int:
    """The GEMMs' row count for t (N, C, scale*H, scale*W): the N*H*W pixels of its low-resolution grid."""
    return t.shape[0] * (t.shape[2] // scale) * (t.shape[3] // scale)


def check_pixels(pixels: int) -> None:
    """ValueError when ``pixels`` (N*H*W of a GEMM's pixel grid) exceed the kernels' int32 indexing."""
    if pixels > MAX_PIXELS:
        raise ValueError(
            f"x has {pixels} pixels (N*H*W); the Triton kernels index pixels with int32 and take at most "
            f"{MAX_PIXELS}: split the batch, or use backend='torch'"
        )


def weight_operand(matrix: torch.Tensor, precision: str) -> torch.Tensor:
    """The [K, N] weight operand of a GEMM kernel: K-major (columns contiguous) for tf32, since
    sm_90's tf32 wgmma reads only K-major operands from shared
    memory, and an N-major one would arrive in 4-byte copies. Otherwise ``matrix`` as it is: the
    kernels take its two strides."""
    if precision == "tf32" and matrix.stride(0) != 1:
        return matrix.t().contiguous().t()
    return matrix


def check_crop(skip_shape, x_shape) -> tuple[int, int]:
    """The (top, left) center-crop offset of x's (H, W) inside skip's (Hs, Ws); ValueError if not even and >= 0."""
    dh, dw = skip_shape[-2] - x_shape[-2], skip_shape[-1] - x_shape[-1]
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(
            f"skip {tuple(skip_shape[-2:])} must exceed x {tuple(x_shape[-2:])} by an even, non-negative "
            f"amount on each axis to be center-cropped to it (differences {dh}, {dw})"
        )
    return dh // 2, dw // 2

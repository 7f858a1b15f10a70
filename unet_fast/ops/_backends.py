"""Backend choice shared by the Triton-backed ops ("auto", "triton" or "torch"), and the runtime rules
every op and launcher follows: autocast casts, the CUDA device guard and the autotuning switch."""
from __future__ import annotations

import contextlib
import importlib
import os

import numpy
import torch

BACKENDS = ("auto", "triton", "torch")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# UNET_FAST_AUTOTUNE=0 makes every choice that is otherwise timed on first use fixed and
# reproducible: Triton kernels launch their first (default) configuration, and backend="auto"
# runs the Triton kernels on every shape instead of timing them against cuDNN.
AUTOTUNE_ENV = "UNET_FAST_AUTOTUNE"


def _triton_imports() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


# decided once at import: the check then traces under torch.compile as a constant
_TRITON_AVAILABLE = _triton_imports()


def triton_available() -> bool:
    """Whether the triton package imports (installed and usable on this platform)."""
    return _TRITON_AVAILABLE


def triton_interpreting() -> bool:
    """Whether Triton kernels run in the interpreter on CPU tensors (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def interpreter_incompatibility(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's interpreter cannot run this package's kernels with these versions, or None.

    Before Triton 3.7 the interpreter turns a loop bound into a Python int with ``int()`` of a
    1-element array, which numpy >= 2.4 refuses; every kernel with a runtime loop bound then fails."""
    if _major_minor(triton_version) < (3, 7) and _major_minor(numpy_version) >= (2, 4):
        return (f"Triton {triton_version}'s interpreter does not work with numpy {numpy_version} "
                "(loop bounds fail since numpy 2.4): install numpy<2.4 or triton>=3.7")
    return None


# decided once at import, like _TRITON_AVAILABLE, so that the check traces as a constant
_INTERPRETER_PROBLEM = (
    interpreter_incompatibility(importlib.import_module("triton").__version__, numpy.__version__)
    if _TRITON_AVAILABLE else None
)


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


def check_backend(backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """"triton" or "torch" for tensors on ``device`` of ``dtype``; ValueError (TypeError for the
    dtype) when "triton" cannot run them.

    "auto" picks triton for CUDA tensors of fp16/bf16/fp32 when Triton is installed, torch otherwise.
    """
    check_backend(backend)
    device = torch.device(device)
    if backend == "torch":
        return "torch"
    can_run = triton_available() and (device.type == "cuda" or (device.type == "cpu" and triton_interpreting()))
    if backend == "auto":
        return "triton" if can_run and device.type == "cuda" and dtype in TRITON_DTYPES else "torch"
    if not triton_available():
        raise ValueError('backend="triton" needs the triton package, which is not installed (or does not import)')
    if not can_run:
        raise ValueError(
            f'backend="triton" runs on CUDA tensors (or on CPU with TRITON_INTERPRET=1 set before triton is '
            f"imported), got tensors on {device}"
        )
    if dtype not in TRITON_DTYPES:
        raise TypeError(f'backend="triton" supports float16, bfloat16 and float32 tensors, got {dtype}')
    if device.type == "cpu" and _INTERPRETER_PROBLEM:
        raise ValueError(f'backend="triton" on CPU runs Triton\'s interpreter: {_INTERPRETER_PROBLEM}')
    return "triton"


def block_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend argument of the model's block ops (``unet_fast.blocks``): "auto" where ``backend``
    is "auto" and resolves to Triton (Triton kernels, with the fused 3x3 conv choosing cuDNN per shape
    where that is measured faster, as ``conv3x3_relu`` does), else ``resolve_backend``'s answer."""
    resolved = resolve_backend(backend, device, dtype)
    return "auto" if backend == "auto" and resolved == "triton" else resolved


# --- autocast ------------------------------------------------------------------------------------------

# torch.amp.is_autocast_available answered from a table: torch 2.11's Dynamo cannot trace it (a graph
# break, an error under fullgraph=True), so the device types tensors usually live on are looked up at
# import and the table is only read while tracing; others are added on first use.
_AUTOCAST_AVAILABLE = {
    device_type: torch.amp.is_autocast_available(device_type) for device_type in ("cpu", "cuda", "xpu", "mps", "meta")
}


def autocast_available(device_type: str) -> bool:
    """Whether torch.autocast knows ``device_type`` (``torch.amp.is_autocast_available``, traceable)."""
    if device_type not in _AUTOCAST_AVAILABLE:
        _AUTOCAST_AVAILABLE[device_type] = torch.amp.is_autocast_available(device_type)
    return _AUTOCAST_AVAILABLE[device_type]


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype torch.autocast computes in on this device type right now, or None (autocast off, or a
    device type such as "meta" that autocast does not know)."""
    if not autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def autocast_cast(dtype: torch.dtype | None, t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` as autocast casts a convolution's input: floating tensors to ``dtype``, except float64,
    which autocast leaves alone (as it does integers and None)."""
    if dtype is None or t is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


def autocast_disabled(device_type: str):
    """A context without autocast, so an op's implementation computes in its inputs' dtypes exactly as
    its fake (meta) kernel says."""
    if not autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


# --- devices -------------------------------------------------------------------------------------------

def device_guard(t: torch.Tensor):
    """Makes ``t``'s CUDA device the current one (Triton launches on the current device and stream)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


# --- numerics and layouts --------------------------------------------------------------------------------

def dot_precision(device: torch.device, dtype: torch.dtype) -> str:
    """The Triton ``tl.dot`` input precision matching PyTorch's convolutions: TF32 for fp32 CUDA tensors
    exactly when cuDNN convolutions may use it, IEEE otherwise (fp16/bf16 ignore it)."""
    if torch.device(device).type != "cuda" or dtype != torch.float32:
        return "ieee"
    from unet_fast.ops.conv3x3 import conv_allows_tf32  # the one rule, shared with the fused 3x3 conv

    return "tf32" if conv_allows_tf32() else "ieee"


def output_memory_format(backend: str, like: torch.Tensor) -> torch.memory_format:
    """Layout of an op's output: always channels_last from Triton (and from the block ops' "auto",
    whose cuDNN fallback converts to it); from torch, the input's layout."""
    if backend in ("triton", "auto"):
        return torch.channels_last
    # PyTorch's own rule (suggest_memory_format): channels_last strides, which for a single channel
    # means a unit channel stride, as ``.to(memory_format=torch.channels_last)`` gives.
    channels_last = like.is_contiguous(memory_format=torch.channels_last) and (
        not like.is_contiguous() or like.dim() == 4 and like.stride(1) <= like.stride(3)
    )
    return torch.channels_last if channels_last else torch.contiguous_format

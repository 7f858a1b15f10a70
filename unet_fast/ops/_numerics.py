"""The dtypes and precisions the ops compute in: the float-dtype list, autocast's casts (traceable),
and the TF32 rule that makes the Triton kernels' dots follow PyTorch's own convolutions."""
from __future__ import annotations

import contextlib

import torch

from unet_fast.triton.runtime import input_precision

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

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
    its fake (meta) kernel says. In eager code with autocast already off it is a null context (entering
    and leaving torch.autocast costs about 10 us, a share of a small model's step); traced code keeps it."""
    if not autocast_available(device_type) or (
            not torch.compiler.is_compiling() and not torch.is_autocast_enabled(device_type)):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


# --- TF32 ----------------------------------------------------------------------------------------------

def conv_allows_tf32() -> bool:
    """Whether PyTorch's own (cuDNN) convolution uses TF32 for fp32 inputs right now.

    torch >= 2.9 has ``torch.backends.cudnn.conv.fp32_precision`` ("tf32", "ieee", or "none" to
    inherit from ``torch.backends.cudnn.fp32_precision`` and then ``torch.backends.fp32_precision``);
    older versions have ``torch.backends.cudnn.allow_tf32``.
    """
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        for precision in (conv.fp32_precision, getattr(cudnn, "fp32_precision", "none"),
                          getattr(torch.backends, "fp32_precision", "none")):
            if precision != "none":
                return precision == "tf32"
    return bool(cudnn.allow_tf32)


def dot_precision(t: torch.Tensor) -> str:
    """The Triton ``INPUT_PRECISION`` matching PyTorch's convolutions for tensors like ``t``: "tf32"
    for fp32 CUDA tensors exactly when cuDNN convolutions may use it, "ieee" otherwise."""
    return input_precision(t.dtype, t.device.type == "cuda" and conv_allows_tf32())

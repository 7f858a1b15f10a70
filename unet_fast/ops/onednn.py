"""oneDNN's fused convolution + ReLU on CPUs: the CPU forward (and recompute) of the fused 3x3 conv.

On x86 CPUs PyTorch's convolutions run oneDNN (mkldnn) primitives, and
``torch.ops.mkldnn._convolution_pointwise`` runs one with its epilogue (here the ReLU) fused, the
call inductor's CPU backend emits for conv + ReLU: the ReLU then costs no pass of its own over the
output. It exists where PyTorch was built with oneDNN (``torch.backends.mkldnn.is_available()``),
which excludes e.g. some ARM builds; there, and for dtypes it is not used for, the callers run the
PyTorch composite ``relu(conv2d(...))``, which computes the same values (the tests compare both).

``onednn_enabled(False)`` switches the fused path off for a block of code (tests run both paths;
a user can rule it out when chasing a numerical difference).
"""
from __future__ import annotations

import contextlib

import torch

# fp32 only: the 2x-wider bf16/fp16 oneDNN convolutions need AVX512-BF16/AMX, which most x86 CPUs
# lack, and fp64 has no oneDNN kernels.
ONEDNN_DTYPES = (torch.float32,)


def _probe() -> bool:
    """Whether this PyTorch build has oneDNN and its fused pointwise convolution op."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._convolution_pointwise.default
    except (AttributeError, RuntimeError):
        return False
    return True


# decided once at import: a constant for torch.compile, and no per-call probing
ONEDNN_AVAILABLE = _probe()
_enabled = [True]


@contextlib.contextmanager
def onednn_enabled(enabled: bool):
    """Within the block, use oneDNN's fused conv + ReLU (True, the default) or the composite (False)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    previous = _enabled[0]
    _enabled[0] = enabled
    try:
        yield
    finally:
        _enabled[0] = previous


def runs_onednn(x: torch.Tensor) -> bool:
    """Whether ``conv3x3_relu_cpu`` runs oneDNN's fused primitive for x (else the composite)."""
    return _enabled[0] and ONEDNN_AVAILABLE and x.device.type == "cpu" and x.dtype in ONEDNN_DTYPES


def conv3x3_relu_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias))``, valid (no padding), stride 1.

    x (N, C_in, H, W), weight (C_out, C_in, 3, 3), bias (C_out,) or None, all of one dtype and
    device. Returns (N, C_out, H - 2, W - 2) in x's memory format: one oneDNN primitive with the ReLU
    fused where ``runs_onednn(x)``, else the PyTorch composite.
    """
    if runs_onednn(x):
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [0, 0], [1, 1], [1, 1], 1, "relu", [None], "")
    return torch.relu_(torch.nn.functional.conv2d(x, weight, bias))

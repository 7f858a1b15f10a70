"""Backend choice of the Triton-backed ops: the one home of "auto" / "triton" / "torch".

Interface (what the ops, the model and the tests use):

- ``check_backend(backend)``, ``resolve_backend(backend, device, dtype)`` -> "triton" | "torch",
  ``block_backend(...)`` (the model's block ops keep "auto");
- ``triton_available()``, ``runs_triton(t)`` (whether the custom ops run Triton kernels for t);
- the per-shape Triton-vs-cuDNN choice of backend "auto": ``choose(key, t, run_triton, run_aten)``,
  ``chosen_backends()`` (the picks so far) and ``fresh_choices(timer=None)``, a context with an
  empty choice table and, optionally, another timer (``timer(fn) -> ms``) than
  ``unet_fast.triton.runtime.time_ms``: tests and benchmarks use it instead of patching internals;
- ``ChoiceLog`` and ``layer_scope(log, name)``: which choices each layer of a model got (a model
  opens a scope around each block; a backward choice finds its layer by the signature its forward
  recorded), for ``UNet.backend_summary``.

Whether Triton imports is decided once, by ``unet_fast._ext.triton_version`` (whose
``try/except ImportError`` covers ``import triton`` only); our own kernel modules are imported
unguarded, so an ImportError inside them is never mistaken for "Triton is not installed".
"""
from __future__ import annotations

import contextlib
import contextvars

import numpy
import torch

from unet_fast import _ext
from unet_fast.triton.runtime import autotune_enabled, device_guard, time_ms, triton_interpreting

BACKENDS = ("auto", "triton", "torch")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# decided once at import: the check then traces under torch.compile as a constant
_TRITON_VERSION = _ext.triton_version()
_TRITON_AVAILABLE = _TRITON_VERSION is not None


def triton_available() -> bool:
    """Whether the triton package imports (installed and usable on this platform)."""
    return _TRITON_AVAILABLE


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
    interpreter_incompatibility(_TRITON_VERSION, numpy.__version__) if _TRITON_AVAILABLE else None
)


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




def runs_triton(t: torch.Tensor) -> bool:
    """Whether the custom ops run Triton kernels for tensors like ``t`` (else their ATen implementation):
    fp16/bf16/fp32 on CUDA, or on CPU under TRITON_INTERPRET=1, with Triton installed."""
    if not _TRITON_AVAILABLE or t.dtype not in TRITON_DTYPES:
        return False
    return t.device.type == "cuda" or (t.device.type == "cpu" and triton_interpreting())


# --- backend "auto": the per-shape choice between the Triton kernels and cuDNN + PyTorch ops ---------

_CHOICES: dict[tuple, str] = {}
_TIMER = [time_ms]


def chosen_backends() -> dict[tuple, str]:
    """What backend="auto" picked so far: (pass, shape key...) -> "triton" or "aten" (cuDNN + PyTorch ops)."""
    return dict(_CHOICES)


@contextlib.contextmanager
def fresh_choices(timer=None):
    """A context with an empty choice table (restored after) and, when given, ``timer(fn) -> ms``
    measuring the candidates instead of ``time_ms``."""
    saved, saved_timer = dict(_CHOICES), _TIMER[0]
    _CHOICES.clear()
    if timer is not None:
        _TIMER[0] = timer
    try:
        yield
    finally:
        _CHOICES.clear()
        _CHOICES.update(saved)
        _TIMER[0] = saved_timer


class ChoiceLog:
    """Per layer name, per pass ("forward", "backward"), the set of backends "auto" chose for it."""

    def __init__(self):
        self.layers: dict[str, dict[str, set[str]]] = {}

    def add(self, layer: str, pass_name: str, choice: str) -> None:
        self.layers.setdefault(layer, {}).setdefault(pass_name, set()).add(choice)


_SCOPE: contextvars.ContextVar = contextvars.ContextVar("unet_fast_layer_scope", default=None)
# signature of a layer's forward call -> (log, layer name): its backward, run by autograd outside
# the model's forward (and its scope), is logged under the same layer
_SIGNATURE_LAYERS: dict[tuple, tuple[ChoiceLog, str]] = {}


@contextlib.contextmanager
def layer_scope(log: ChoiceLog, name: str):
    """Choices made inside are logged in ``log`` under ``name``."""
    token = _SCOPE.set((log, name))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def _log_choice(pass_name: str, signature: tuple | None, choice: str) -> None:
    scope = _SCOPE.get()
    if signature is not None:
        if scope is not None:
            _SIGNATURE_LAYERS[signature] = scope
        scope = scope or _SIGNATURE_LAYERS.get(signature)
    if scope is not None:
        scope[0].add(scope[1], pass_name, choice)


def choose(key: tuple, t: torch.Tensor, run_triton, run_aten, signature: tuple | None = None) -> str:
    """"triton" or "aten", whichever runs faster for this key (whose first item names the pass),
    timed on t's device on first use and remembered; always "triton" with UNET_FAST_AUTOTUNE=0 (the
    fixed, reproducible rule) and inside a CUDA graph capture (no timing there; an eager call
    decides). ``signature``: the layer's identity shared by its forward and backward keys, so the
    choice is logged for the layer (``layer_scope``)."""
    choice = _CHOICES.get(key) if autotune_enabled() else "triton"
    if choice is None:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            choice = "triton"
        else:
            with device_guard(t):
                times = {"triton": _TIMER[0](run_triton), "aten": _TIMER[0](run_aten)}
            choice = _CHOICES[key] = min(times, key=times.get)
    _log_choice(key[0], signature, choice)
    return choice

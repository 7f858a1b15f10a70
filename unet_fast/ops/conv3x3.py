"""conv3x3_relu: valid 3x3 conv + bias + ReLU with the decoder's crop-concat and the 2x2 max-pool fused.

The Triton path is two ``torch.library`` custom ops, ``unet_fast::conv3x3_relu`` (returns y) and
``unet_fast::conv3x3_relu_pool`` (returns y and its 2x2 max-pool), sharing the backward op
``unet_fast::conv3x3_relu_backward``. Backward saves x, skip and y only (and the weight, which is
the caller's tensor anyway): the ReLU mask and the pool's argmax are recomputed from y.

The custom ops run the Triton kernels (``unet_fast.triton.conv3x3``) for fp16/bf16/fp32 tensors
on CUDA, or on CPU under ``TRITON_INTERPRET=1``; for other dtypes or devices they run an ATen
implementation of the same formulas, which is how the autograd formulas are gradchecked in float64.
``fused_forward`` and ``fused_backward`` are those implementations, also used by the model's block
ops (``unet_fast.blocks``) so that they make the same per-shape Triton/cuDNN choice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from unet_fast.ops._backends import (
    TRITON_DTYPES,
    autocast_cast,
    autocast_disabled,
    autocast_dtype,
    autotune_enabled,
    check_backend,
    device_guard,
    resolve_backend,
    time_ms,
    triton_interpreting,
)
from unet_fast.ops._validation import check_crop, check_same, check_tensor
from unet_fast.reference.functional import center_crop

_ALL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

try:
    from unet_fast.triton import conv3x3 as _kernels
except ImportError:  # no Triton on this platform: the "torch" backend still works
    _kernels = None


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


def _runs_triton(t: torch.Tensor) -> bool:
    """Whether the custom ops run Triton kernels for this tensor (else their ATen implementation)."""
    if _kernels is None or t.dtype not in TRITON_DTYPES:
        return False
    return t.device.type == "cuda" or (t.device.type == "cpu" and triton_interpreting())


def conv3x3_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    skip: torch.Tensor | None = None,
    relu: bool = True,
    pool: bool = False,
    backend: str = "auto",
):
    """``y = relu(conv2d(cat([center_crop(skip, x), x], 1), weight, bias))``, valid (no padding).

    Args:
        x: (N, C1, H, W) with H, W >= 3; fp16, bf16 or fp32 (fp64 too with backend="torch").
        weight: (C_out, C0 + C1, 3, 3), skip's C0 input channels first; same dtype and device as x
            (under torch.autocast any float dtype: the op casts it).
        bias: (C_out,) or None.
        skip: (N, C0, Hs, Ws) or None, center-cropped to (H, W): Hs - H and Ws - W even and >= 0.
        relu: apply the ReLU (False: conv + bias only).
        pool: also return ``max_pool2d(y, 2)``; H - 2 and W - 2 must be even.
        backend: "triton" (Triton kernels; CUDA tensors, or CPU tensors under TRITON_INTERPRET=1),
            "torch" (PyTorch ops, any device and float dtype) or "auto": on CUDA with Triton
            installed the same custom ops, which pick per shape (forward and backward separately)
            the faster of the Triton kernels and cuDNN + PyTorch epilogues, timed once on first
            use (``chosen_backends()`` lists the picks); otherwise "torch".
    Returns:
        y (N, C_out, H - 2, W - 2), or (y, pooled) with pooled (N, C_out, (H - 2)/2, (W - 2)/2) when
        pool=True; channels_last, x's dtype (the autocast dtype under torch.autocast). Differentiable
        in x, skip, weight and bias; each gradient comes back in its input's dtype. fp32 inputs use
        TF32 exactly when PyTorch's convolution would (``conv_allows_tf32()``).

    Under torch.autocast x, skip and bias are cast to the autocast dtype (float64 stays as it is, as
    autocast leaves it); the weight is cast inside the op, forward and backward, so that autograd
    keeps the parameter itself rather than a cast copy.

    Timing on first use (which Triton configuration, and for "auto" whether Triton or cuDNN, per
    shape) can pick differently from run to run. ``UNET_FAST_AUTOTUNE=0`` in the environment turns
    it off: the Triton kernels launch their first (default) configuration and "auto" runs Triton on
    every CUDA shape, so results are reproducible.
    """
    check_backend(backend)
    check_tensor("x", x, dim=4, dtypes=_ALL_DTYPES)
    compute_dtype = autocast_dtype(x.device.type)
    x, bias, skip = (autocast_cast(compute_dtype, t) for t in (x, bias, skip))
    resolved = resolve_backend(backend, x.device, x.dtype)
    _validate(x, weight, bias, skip, relu, pool, resolved, weight_cast=compute_dtype is not None)
    if resolved == "torch":
        return _torch_composite(x, weight.to(x.dtype), bias, skip, relu, pool)
    if backend == "triton":  # "auto" falls back to cuDNN for tensors the kernels cannot index
        _kernels.check_index_range(x, skip, weight)
    allow_tf32 = x.device.type == "cuda" and conv_allows_tf32()
    tune = backend == "auto"  # auto on CUDA: per shape, the faster of Triton and cuDNN, measured once
    if pool:
        return torch.ops.unet_fast.conv3x3_relu_pool(x, weight, bias, skip, relu, allow_tf32, tune)
    return torch.ops.unet_fast.conv3x3_relu(x, weight, bias, skip, relu, allow_tf32, tune)


def _validate(x, weight, bias, skip, relu, pool, backend, weight_cast=False) -> None:
    """Checks every argument; ``weight_cast``: the op casts the weight to x's dtype (under autocast),
    so its dtype may differ from x's."""
    for name, flag in (("relu", relu), ("pool", pool)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    dtypes = _ALL_DTYPES if backend == "torch" else TRITON_DTYPES
    check_tensor("x", x, dim=4, dtypes=dtypes)
    check_tensor("weight", weight, dim=4, dtypes=_ALL_DTYPES if weight_cast else dtypes)
    check_same("weight", weight, "x", x, dtype=not weight_cast)
    in_channels = x.shape[1]
    if skip is not None:
        check_tensor("skip", skip, dim=4, dtypes=dtypes)
        check_same("skip", skip, "x", x)
        if skip.shape[0] != x.shape[0]:
            raise ValueError(f"skip and x must have the same batch size, got {skip.shape[0]} and {x.shape[0]}")
        check_crop(skip.shape, x.shape)
        in_channels += skip.shape[1]
    if tuple(weight.shape[1:]) != (in_channels, 3, 3):
        where = f"skip's {skip.shape[1]} + x's {x.shape[1]}" if skip is not None else f"x's {x.shape[1]}"
        raise ValueError(
            f"weight must have shape (C_out, {in_channels}, 3, 3) for {where} input channels, got {tuple(weight.shape)}"
        )
    if weight.shape[0] < 1 or x.shape[0] < 1 or in_channels < 1:
        raise ValueError(f"empty input: x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    if bias is not None:
        check_tensor("bias", bias, dim=1, dtypes=dtypes)
        check_same("bias", bias, "x", x)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},) to match weight, got {tuple(bias.shape)}")
    height, width = x.shape[2], x.shape[3]
    if height < 3 or width < 3:
        raise ValueError(f"x must be at least 3x3 for a valid 3x3 convolution, got {height}x{width}")
    if pool and ((height - 2) % 2 or (width - 2) % 2):
        raise ValueError(
            f"pool=True needs an even output size for the 2x2 max-pool, but x {height}x{width} gives "
            f"{height - 2}x{width - 2}"
        )


def _torch_composite(x, weight, bias, skip, relu, pool):
    """The op from PyTorch ops (differentiated by autograd): the reference the kernels are tested against."""
    inputs = x if skip is None else torch.cat([center_crop(skip, tuple(x.shape[-2:])), x], dim=1)
    y = F.conv2d(inputs, weight, bias)
    if relu:
        y = F.relu(y)
    y = y.contiguous(memory_format=torch.channels_last)
    if not pool:
        return y
    return y, F.max_pool2d(y, 2).contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------
# Custom ops
# --------------------------------------------------------------------------------------------


def _output_shapes(x, weight):
    batch, _, height, width = x.shape
    y_shape = (batch, weight.shape[0], height - 2, width - 2)
    return y_shape, (batch, weight.shape[0], (height - 2) // 2, (width - 2) // 2)


def _empty_nhwc(shape, like):
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


_BACKEND_CHOICES: dict[tuple, str] = {}


def chosen_backends() -> dict[tuple, str]:
    """What backend="auto" picked so far: (pass, shape key) -> "triton" or "aten" (cuDNN + PyTorch ops)."""
    return dict(_BACKEND_CHOICES)


def _pick_backend(key: tuple, x: torch.Tensor, run_triton, run_aten) -> str:
    """The faster implementation for this key, timed on x's device on first use and remembered;
    always "triton" with UNET_FAST_AUTOTUNE=0 (the fixed, reproducible rule)."""
    if not autotune_enabled():
        return "triton"
    choice = _BACKEND_CHOICES.get(key)
    if choice is None:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            return "triton"  # no timing inside a CUDA graph capture; decide on an eager call
        with device_guard(x):
            times = {"triton": time_ms(run_triton), "aten": time_ms(run_aten)}
        choice = _BACKEND_CHOICES[key] = min(times, key=times.get)
    return choice


def _fits_triton(x, skip, weight) -> bool:
    try:
        _kernels.check_index_range(x, skip, weight)
    except ValueError:
        return False
    return True


def _shape_key(x, weight, bias, skip, relu, pool, allow_tf32) -> tuple:
    return (
        tuple(x.shape), None if skip is None else tuple(skip.shape), tuple(weight.shape), bias is not None,
        relu, pool, x.dtype, allow_tf32, str(x.device),
    )


def _aten_forward(x, weight, bias, skip, relu, pool):
    result = _torch_composite(x, weight, bias, skip, relu, pool)
    return result if pool else (result, None)


def fused_forward(x, weight, bias, skip, relu, pool, allow_tf32, tune):
    """(y, pooled or None) of the op, without validation or autograd: the Triton kernels where they run
    (``_runs_triton``), else ATen ops. ``tune`` (backend "auto"): per shape, the faster of the two,
    timed once, and ATen for tensors too large for the kernels' int32 indexing. The weight may have
    another dtype than x (it is cast here); the rest have x's."""
    weight = weight.to(x.dtype)
    with autocast_disabled(x.device.type):
        if not _runs_triton(x):
            return _aten_forward(x, weight, bias, skip, relu, pool)
        run_triton = lambda: _kernels.conv3x3_forward(x, weight, bias, skip, relu, pool, allow_tf32)  # noqa: E731
        run_aten = lambda: _aten_forward(x, weight, bias, skip, relu, pool)  # noqa: E731
        if tune:
            if not _fits_triton(x, skip, weight):
                return run_aten()
            key = ("forward", *_shape_key(x, weight, bias, skip, relu, pool, allow_tf32))
            if _pick_backend(key, x, run_triton, run_aten) == "aten":
                return run_aten()
        return run_triton()


@torch.library.custom_op("unet_fast::conv3x3_relu", mutates_args=())
def _conv3x3_relu_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, skip: torch.Tensor | None,
    relu: bool, allow_tf32: bool, tune: bool,
) -> torch.Tensor:
    return fused_forward(x, weight, bias, skip, relu, False, allow_tf32, tune)[0]


@torch.library.custom_op("unet_fast::conv3x3_relu_pool", mutates_args=())
def _conv3x3_relu_pool_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, skip: torch.Tensor | None,
    relu: bool, allow_tf32: bool, tune: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return fused_forward(x, weight, bias, skip, relu, True, allow_tf32, tune)


@_conv3x3_relu_op.register_fake
def _conv3x3_relu_fake(x, weight, bias, skip, relu, allow_tf32, tune):
    return _empty_nhwc(_output_shapes(x, weight)[0], x)


@_conv3x3_relu_pool_op.register_fake
def _conv3x3_relu_pool_fake(x, weight, bias, skip, relu, allow_tf32, tune):
    y_shape, pooled_shape = _output_shapes(x, weight)
    return _empty_nhwc(y_shape, x), _empty_nhwc(pooled_shape, x)


def _aten_backward(grad_y, grad_pooled, x, skip, weight, y, relu, needs):
    """The backward formulas in ATen ops, from x, skip and y only."""
    g = torch.zeros_like(y) if grad_y is None else grad_y
    if grad_pooled is not None:
        _, argmax = F.max_pool2d(y, 2, return_indices=True)  # PyTorch's own tie rule
        g = g + F.max_unpool2d(grad_pooled, argmax, 2, output_size=y.shape[-2:])
    if relu:
        g = torch.where(y > 0, g, torch.zeros_like(g))
    inputs = x if skip is None else torch.cat([center_crop(skip, tuple(x.shape[-2:])), x], dim=1)
    need_inputs = needs[0] or needs[1]
    grad_inputs, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        g, inputs, weight, [weight.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
        [need_inputs, needs[2], needs[3]],
    )
    grad_x = grad_skip = None
    if need_inputs:
        c0 = 0 if skip is None else skip.shape[1]
        grad_x = grad_inputs[:, c0:]
        if skip is not None:
            top, left = check_crop(skip.shape, x.shape)
            grad_skip = torch.zeros_like(skip)
            grad_skip[:, :, top : top + x.shape[2], left : left + x.shape[3]] = grad_inputs[:, :c0]
    return grad_x, grad_skip, grad_weight, grad_bias


# layouts of (grad_x, grad_skip, grad_weight, grad_bias) as the backward op returns them
_GRAD_LAYOUTS = (torch.channels_last, torch.channels_last, torch.contiguous_format, torch.contiguous_format)


def _grad_shapes(x, skip, weight):
    return (tuple(x.shape), None if skip is None else tuple(skip.shape), tuple(weight.shape), (weight.shape[0],))


@torch.library.custom_op("unet_fast::conv3x3_relu_backward", mutates_args=())
def _conv3x3_relu_backward_op(
    grad_y: torch.Tensor | None, grad_pooled: torch.Tensor | None, x: torch.Tensor, skip: torch.Tensor | None,
    weight: torch.Tensor, y: torch.Tensor, relu: bool, pool: bool, allow_tf32: bool, tune: bool,
    needs_input_grad: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_skip, grad_weight, grad_bias) for needs_input_grad = (x, skip, weight, bias); a
    gradient not needed (or without its input) comes back as a (0,)-shaped tensor: custom ops cannot
    return None. grad_weight has the weight's dtype, the others x's."""
    grads = fused_backward(grad_y, grad_pooled, x, skip, weight, y, relu, pool, allow_tf32, tune, needs_input_grad)
    return tuple(
        x.new_empty((0,)) if grad is None else grad.to(like.dtype).contiguous(memory_format=layout)
        for grad, like, layout in zip(grads, (x, x, weight, x), _GRAD_LAYOUTS)
    )


def fused_backward(grad_y, grad_pooled, x, skip, weight, y, relu, pool, allow_tf32, tune, needs_input_grad):
    """(grad_x, grad_skip, grad_weight, grad_bias) of ``fused_forward``, from x, skip and y, with the
    same Triton/ATen choice; a gradient not in needs_input_grad (x, skip, weight, bias), or without
    its input, is None. The weight is cast to x's dtype here; the gradients come in x's dtype, as
    under PyTorch's autocast (Triton reduces the weight gradient in fp32, then rounds it to x's
    dtype; the caller casts it to the parameter's)."""
    needs = tuple(bool(n) for n in needs_input_grad)
    needs = (needs[0], needs[1] and skip is not None, needs[2], needs[3])
    weight = weight.to(x.dtype)
    with autocast_disabled(x.device.type):
        run_aten = lambda: _aten_backward(grad_y, grad_pooled if pool else None, x, skip, weight, y, relu, needs)  # noqa: E731
        if _runs_triton(x) and not (tune and not _fits_triton(x, skip, weight)):
            run_triton = lambda: _kernels.conv3x3_backward(  # noqa: E731
                grad_y, grad_pooled, x, skip, weight, y, relu, pool, needs, allow_tf32
            )
            key = ("backward", *_shape_key(x, weight, None, skip, relu, pool, allow_tf32), needs, grad_y is None)
            use_aten = tune and _pick_backend(key, x, run_triton, run_aten) == "aten"
            grads = run_aten() if use_aten else run_triton()
        else:
            grads = run_aten()
    return tuple(grad if needed else None for grad, needed in zip(grads, needs))


@_conv3x3_relu_backward_op.register_fake
def _conv3x3_relu_backward_fake(grad_y, grad_pooled, x, skip, weight, y, relu, pool, allow_tf32, tune, needs_input_grad):
    return tuple(
        x.new_empty((0,)) if shape is None or not needed
        else torch.empty(shape, dtype=like.dtype, device=x.device, memory_format=layout)
        for shape, needed, like, layout in zip(
            _grad_shapes(x, skip, weight), needs_input_grad, (x, x, weight, x), _GRAD_LAYOUTS
        )
    )


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, skip, relu, allow_tf32, tune = inputs
    y = output[0] if isinstance(output, tuple) else output
    # the weight is the caller's tensor (the parameter itself even under autocast, since the op casts
    # it inside): saving it costs no memory
    ctx.save_for_backward(x, skip, weight, y)
    ctx.relu, ctx.allow_tf32, ctx.tune = relu, allow_tf32, tune


def _backward(ctx, grad_y, grad_pooled=None):
    x, skip, weight, y = ctx.saved_tensors
    need_x, need_weight, need_bias, need_skip = ctx.needs_input_grad[:4]
    needs = [need_x, need_skip and skip is not None, need_weight, need_bias]
    grad_x, grad_skip, grad_weight, grad_bias = torch.ops.unet_fast.conv3x3_relu_backward(
        grad_y, grad_pooled, x, skip, weight, y, ctx.relu, grad_pooled is not None, ctx.allow_tf32, ctx.tune, needs,
    )
    grads = [g if needed else None for g, needed in zip((grad_x, grad_skip, grad_weight, grad_bias), needs)]
    return grads[0], grads[2], grads[3], grads[1], None, None, None


_conv3x3_relu_op.register_autograd(_backward, setup_context=_setup_context)
_conv3x3_relu_pool_op.register_autograd(_backward, setup_context=_setup_context)

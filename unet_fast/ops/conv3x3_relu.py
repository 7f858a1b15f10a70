"""conv3x3_relu: valid 3x3 conv + bias + ReLU with the decoder's crop-concat and the 2x2 max-pool fused.

The Triton path is two ``torch.library`` custom ops, ``unet_fast::conv3x3_relu`` (returns y) and
``unet_fast::conv3x3_relu_pool`` (returns y and its 2x2 max-pool), sharing the backward op
``unet_fast::conv3x3_relu_backward``. Backward saves x, skip and y only (and the weight, which is
the caller's tensor anyway): the ReLU mask and the pool's argmax are recomputed from y.

The custom ops run the Triton kernels (``unet_fast.triton.conv3x3_relu`` and
``conv3x3_relu_backward``) for fp16/bf16/fp32 tensors on CUDA, or on CPU under ``TRITON_INTERPRET=1``;
for other dtypes or devices they run the ATen composite of the same formulas (``composite_forward``,
``composite_backward``: the one PyTorch formulation, also the "torch" backend's), which is how the
autograd formulas are gradchecked in float64. ``fused_forward`` and ``fused_backward`` are those
implementations, also used by the model's block ops (``unet_fast.blocks``) so that they make the
same per-shape Triton/cuDNN choice (``unet_fast.ops.backend.choose``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from unet_fast.ops._numerics import FLOAT_DTYPES, autocast_cast, autocast_disabled, autocast_dtype, conv_allows_tf32
from unet_fast.ops._validation import check_same, check_tensor
from unet_fast.ops.center_crop_concat import center_crop_concat_backward
from unet_fast.ops.max_pool2x2 import max_pool2x2
from unet_fast.ops.onednn import conv3x3_relu_cpu
from unet_fast.ops.relu_pool_backward import relu_pool_backward
from unet_fast.ops.backend import TRITON_DTYPES, check_backend, choose, resolve_backend, runs_triton, triton_available
from unet_fast.reference.functional import center_crop_concat
from unet_fast.triton.runtime import check_crop, input_precision

if triton_available():  # our kernel modules' own ImportErrors are not caught
    from unet_fast.triton.conv3x3_relu import conv3x3_relu_forward
    from unet_fast.triton.conv3x3_relu_backward import conv3x3_relu_backward
    from unet_fast.triton.conv3x3_relu_tiles import check_index_range, fits_index_range


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
            use (``unet_fast.ops.backend.chosen_backends()`` lists the picks); otherwise "torch".
    Returns:
        y (N, C_out, H - 2, W - 2), or (y, pooled) with pooled (N, C_out, (H - 2)/2, (W - 2)/2) when
        pool=True; channels_last, x's dtype (the autocast dtype under torch.autocast). Differentiable
        in x, skip, weight and bias; each gradient comes back in its input's dtype. The ReLU's
        gradient is PyTorch's (``threshold_backward``: zero where y <= 0, passed where y is NaN) and
        the pool's goes to each window's first maximum (or NaN), on every backend. fp32 inputs use
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
    check_tensor("x", x, dim=4, dtypes=FLOAT_DTYPES)
    compute_dtype = autocast_dtype(x.device.type)
    x, bias, skip = (autocast_cast(compute_dtype, t) for t in (x, bias, skip))
    resolved = resolve_backend(backend, x.device, x.dtype)
    _validate(x, weight, bias, skip, relu, pool, resolved, weight_cast=compute_dtype is not None)
    if resolved == "torch":
        y, pooled = composite_forward(x, weight.to(x.dtype), bias, skip, relu=relu, pool=pool)
        return (y, pooled) if pool else y
    if backend == "triton":  # "auto" falls back to cuDNN for tensors the kernels cannot index
        check_index_range(x, skip, weight)
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
    dtypes = FLOAT_DTYPES if backend == "torch" else TRITON_DTYPES
    check_tensor("x", x, dim=4, dtypes=dtypes)
    check_tensor("weight", weight, dim=4, dtypes=FLOAT_DTYPES if weight_cast else dtypes)
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
    # an empty batch is fine (empty outputs, zero weight gradients), as in PyTorch; no channels is not
    if weight.shape[0] < 1 or in_channels < 1:
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


def composite_forward(x, weight, bias, skip, *, relu: bool, pool: bool, memory_format=torch.channels_last,
                      own_backward: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y, pooled or None) from PyTorch ops (differentiable by autograd): the one PyTorch formulation of
    the op, which the kernels are tested against and the "torch" backends (op and blocks) run.

    ``own_backward``: the caller differentiates with ``composite_backward`` (the block ops), so on CPU
    the conv + ReLU may run as one oneDNN primitive (``unet_fast.ops.onednn``) and the pool as the
    C++ ``max_pool2x2``, neither of which autograd can differentiate. Same values either way."""
    inputs = x if skip is None else center_crop_concat(skip, x)
    if own_backward and relu and inputs.device.type == "cpu":
        # a 1-channel input is in both layouts at once, so oneDNN may answer in the other one
        y = conv3x3_relu_cpu(inputs.contiguous(memory_format=memory_format), weight, bias)
        y = y.contiguous(memory_format=memory_format)
        return y, (max_pool2x2(y).contiguous(memory_format=memory_format) if pool else None)
    y = F.conv2d(inputs, weight, bias)
    if relu:
        y = F.relu(y)
    y = y.contiguous(memory_format=memory_format)
    return y, (F.max_pool2d(y, 2).contiguous(memory_format=memory_format) if pool else None)


def composite_backward(grad_y, grad_pooled, x, skip, weight, y, *, relu: bool, needs_input_grad):
    """(grad_x, grad_skip, grad_weight, grad_bias) of ``composite_forward`` from x, skip and y only, in
    ATen ops; needs_input_grad = (x, skip, weight, bias), a gradient not needed comes back None."""
    # the gradient at the conv's output: pool route, incoming gradient and ReLU mask (one C++ pass on CPU)
    g = relu_pool_backward(y, grad_y, grad_pooled, relu=relu)
    inputs = x if skip is None else center_crop_concat(skip, x)
    need_x, need_skip, need_weight, need_bias = needs_input_grad
    need_inputs = need_x or need_skip
    grad_inputs, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        g, inputs, weight, [weight.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
        [need_inputs, need_weight, need_bias],
    )
    grad_x = grad_skip = None
    if need_inputs:
        grad_x = grad_inputs
        if skip is not None:
            grad_skip, grad_x = center_crop_concat_backward(grad_inputs, skip.shape, x.shape)
    return grad_x, grad_skip, grad_weight, grad_bias


# --------------------------------------------------------------------------------------------
# Custom ops
# --------------------------------------------------------------------------------------------


def _output_shapes(x, weight):
    batch, _, height, width = x.shape
    y_shape = (batch, weight.shape[0], height - 2, width - 2)
    return y_shape, (batch, weight.shape[0], (height - 2) // 2, (width - 2) // 2)


def _empty_nhwc(shape, like):
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


def _shape_key(x, weight, bias, skip, relu, pool, allow_tf32) -> tuple:
    return (
        tuple(x.shape), None if skip is None else tuple(skip.shape), tuple(weight.shape), bias is not None,
        relu, pool, x.dtype, allow_tf32, str(x.device),
    )


def _layer_signature(x, weight, skip, allow_tf32) -> tuple:
    """What a layer's forward and backward choices share (``backend.layer_scope``)."""
    return tuple(x.shape), None if skip is None else tuple(skip.shape), tuple(weight.shape), x.dtype, allow_tf32, str(x.device)


def fused_forward(x, weight, bias, skip, *, relu: bool, pool: bool, allow_tf32: bool, tune: bool):
    """(y, pooled or None) of the op, without validation or autograd: the Triton kernels where they run
    (``backend.runs_triton``), else ATen ops. ``tune`` (backend "auto"): per shape, the faster of the two,
    timed once, and ATen for tensors too large for the kernels' int32 indexing. The weight may have
    another dtype than x (it is cast here); the rest have x's."""
    weight = weight.to(x.dtype)
    with autocast_disabled(x.device.type):
        run_aten = lambda: composite_forward(x, weight, bias, skip, relu=relu, pool=pool)  # noqa: E731
        if not runs_triton(x):
            return run_aten()
        precision = input_precision(x.dtype, allow_tf32)
        run_triton = lambda: conv3x3_relu_forward(  # noqa: E731
            x, weight, bias, skip, relu=relu, pool=pool, input_precision=precision)
        if tune:
            if not fits_index_range(x, skip, weight):
                return run_aten()
            key = ("forward", *_shape_key(x, weight, bias, skip, relu, pool, allow_tf32))
            if choose(key, x, run_triton, run_aten, _layer_signature(x, weight, skip, allow_tf32)) == "aten":
                return run_aten()
        return run_triton()


@torch.library.custom_op("unet_fast::conv3x3_relu", mutates_args=())
def _conv3x3_relu_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, skip: torch.Tensor | None,
    relu: bool, allow_tf32: bool, tune: bool,
) -> torch.Tensor:
    return fused_forward(x, weight, bias, skip, relu=relu, pool=False, allow_tf32=allow_tf32, tune=tune)[0]


@torch.library.custom_op("unet_fast::conv3x3_relu_pool", mutates_args=())
def _conv3x3_relu_pool_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, skip: torch.Tensor | None,
    relu: bool, allow_tf32: bool, tune: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return fused_forward(x, weight, bias, skip, relu=relu, pool=True, allow_tf32=allow_tf32, tune=tune)


@_conv3x3_relu_op.register_fake
def _conv3x3_relu_fake(x, weight, bias, skip, relu, allow_tf32, tune):
    return _empty_nhwc(_output_shapes(x, weight)[0], x)


@_conv3x3_relu_pool_op.register_fake
def _conv3x3_relu_pool_fake(x, weight, bias, skip, relu, allow_tf32, tune):
    y_shape, pooled_shape = _output_shapes(x, weight)
    return _empty_nhwc(y_shape, x), _empty_nhwc(pooled_shape, x)


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
    grads = fused_backward(grad_y, grad_pooled, x, skip, weight, y, relu=relu, pool=pool, allow_tf32=allow_tf32,
                           tune=tune, needs_input_grad=needs_input_grad)
    return tuple(
        x.new_empty((0,)) if grad is None else grad.to(like.dtype).contiguous(memory_format=layout)
        for grad, like, layout in zip(grads, (x, x, weight, x), _GRAD_LAYOUTS)
    )


def fused_backward(grad_y, grad_pooled, x, skip, weight, y, *, relu: bool, pool: bool, allow_tf32: bool, tune: bool,
                   needs_input_grad):
    """(grad_x, grad_skip, grad_weight, grad_bias) of ``fused_forward``, from x, skip and y, with the
    same Triton/ATen choice; a gradient not in needs_input_grad (x, skip, weight, bias), or without
    its input, is None. The weight is cast to x's dtype here; the gradients come in x's dtype, as
    under PyTorch's autocast (Triton reduces the weight gradient in fp32, then rounds it to x's
    dtype; the caller casts it to the parameter's)."""
    needs = tuple(bool(n) for n in needs_input_grad)
    needs = (needs[0], needs[1] and skip is not None, needs[2], needs[3])
    weight = weight.to(x.dtype)
    with autocast_disabled(x.device.type):
        run_aten = lambda: composite_backward(  # noqa: E731
            grad_y, grad_pooled if pool else None, x, skip, weight, y, relu=relu, needs_input_grad=needs)
        if runs_triton(x) and not (tune and not fits_index_range(x, skip, weight)):
            run_triton = lambda: conv3x3_relu_backward(  # noqa: E731
                grad_y, grad_pooled, x, skip, weight, y, relu=relu, pool=pool, needs_input_grad=needs,
                input_precision=input_precision(x.dtype, allow_tf32),
            )
            key = ("backward", *_shape_key(x, weight, None, skip, relu, pool, allow_tf32), needs, grad_y is None)
            use_aten = tune and choose(key, x, run_triton, run_aten, _layer_signature(x, weight, skip, allow_tf32)) == "aten"
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

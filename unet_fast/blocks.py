"""Block-level custom ops of ``unet_fast.UNet``: one op per encoder block, decoder stage and the head.

Each op computes a whole block and chooses what autograd keeps, which is where the model's memory
saving comes from. Saved for backward, model-wide, are each block's two ReLU outputs y1 and y2 and
the block inputs that are already some other block's output (so they share its storage): the input
image, the previous encoder block's y2, the skip tensor, the previous decoder stage's y2. The
pooled and up-sampled tensors are recomputed in backward (a max-pool, one GEMM), the concat is
never built (Triton) or built only transiently, no pre-activation or pool index is stored, and
weights are cast to the compute dtype inside the ops, so neither they nor autocast copies of them
are saved. With ``recompute=True`` y1 is not saved either but recomputed from the block's input.

Ops (all under the ``unet_fast`` namespace; inputs are in the compute dtype, weights in any float
dtype and cast inside; gradients come back in each input's own dtype):

    _encoder_block(source, pooled?, w1, b1?, w2, b2?, emit_pool, recompute, backend) -> (y1, y2, p)
        conv1's input is ``pooled`` = max_pool2d(source, 2) when given (encoder levels > 0: source is
        the previous block's y2, pooled its fused pool output), else ``source`` (level 0: the image).
        p = max_pool2d(y2, 2) when emit_pool, else an empty (0,) tensor.
    _decoder_block(x, skip?, up_w, up_b?, w1, b1?, w2, b2?, recompute, backend) -> (y1, y2)
        u = upconv2x2(x); y1 = relu(conv3x3(cat(center_crop(skip, u), u))); y2 = relu(conv3x3(y1)).
    _head(x, w, b?, backend) -> 1x1 conv.

``run_encoder_block``, ``run_decoder_block`` and ``run_head`` are what the model calls: the ops when
traced (torch.compile, export), else their eager twins, autograd.Functions around the same forward,
saved tensors and backward, which skip the custom-op dispatch (about 0.2 ms a call on CPU).

Backend "triton" runs the fused kernels (``unet_fast.triton.conv3x3_relu`` for the 3x3 convs, whose
second encoder conv writes the pooled tensor from its epilogue, and the per-pixel GEMMs for the
up-convolution and the head); "torch" runs the ops' ATen composites with explicit backward formulas
(``unet_fast.ops.conv3x3_relu.composite_forward``/``composite_backward``, the op's own; on CPU the
forward's conv + ReLU is one oneDNN primitive, and the pools and the backward's pool route + ReLU mask
are C++ kernels: ``unet_fast.ops.onednn``, ``max_pool2x2``, ``relu_pool_backward``).
"""
from __future__ import annotations

from typing import Optional

import torch

from unet_fast.ops._layout import output_memory_format
from unet_fast.ops._numerics import autocast_disabled, dot_precision
from unet_fast.ops.conv1x1 import conv1x1_backward_impl, conv1x1_impl
from unet_fast.ops.conv3x3_relu import composite_backward, composite_forward, fused_backward, fused_forward
from unet_fast.ops.max_pool2x2 import max_pool2x2
from unet_fast.ops.upconv2x2 import upconv2x2_backward_impl, upconv2x2_impl

Tensor = torch.Tensor


def _empty(like: Tensor) -> Tensor:
    """The stand-in for an absent output (custom ops cannot return None)."""
    return like.new_empty((0,))


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _custom_op(name: str, impl):
    """``impl`` registered as the op ``unet_fast::<name>``; ``impl`` itself stays the eager twin's body."""
    return torch.library.custom_op(f"unet_fast::{name}", impl, mutates_args=())


def _uses_tf32(t: Tensor) -> bool:
    return dot_precision(t) == "tf32"


# --- the 3x3 conv + ReLU (+ pool) on either backend ---------------------------------------------------

def _conv_forward(x: Tensor, skip: Tensor | None, weight: Tensor, bias: Tensor | None, pool: bool, backend: str,
                  layout: torch.memory_format) -> tuple[Tensor, Tensor | None]:
    """relu(conv3x3_valid(cat(center_crop(skip, x), x))) and, with pool, its 2x2 max-pool.

    "triton" always runs the Triton kernels; "auto" runs them through the same per-shape choice
    between Triton and cuDNN as ``unet_fast.ops.conv3x3_relu(backend="auto")``."""
    if backend in ("triton", "auto"):
        return fused_forward(x, weight, bias, skip, relu=True, pool=pool, allow_tf32=_uses_tf32(x),
                             tune=backend == "auto")
    return composite_forward(x, weight, bias, skip, relu=True, pool=pool, memory_format=layout, own_backward=True)


def _conv_backward(grad_y: Tensor | None, grad_pooled: Tensor | None, x: Tensor, skip: Tensor | None,
                   weight: Tensor, y: Tensor, need_inputs: bool, backend: str):
    """(grad_x, grad_skip, grad_weight, grad_bias) of ``_conv_forward`` from x, skip and y; grad_x and
    grad_skip are None unless need_inputs (grad_skip also without skip)."""
    needs = (need_inputs, need_inputs and skip is not None, True, True)
    if backend in ("triton", "auto"):
        if grad_y is None and grad_pooled is None:
            grad_y = torch.zeros_like(y)
        return fused_backward(grad_y, grad_pooled, x, skip, weight, y, relu=True, pool=grad_pooled is not None,
                              allow_tf32=_uses_tf32(x), tune=backend == "auto", needs_input_grad=needs)
    return composite_backward(grad_y, grad_pooled, x, skip, weight, y, relu=True, needs_input_grad=needs)


def _grad_or_empty(grad: Tensor | None, like: Tensor, layout: torch.memory_format | None = None) -> Tensor:
    if grad is None:
        return _empty(like)
    grad = grad.to(like.dtype)
    return grad.contiguous(memory_format=layout) if layout is not None else grad.contiguous()


def _bias_grad(grad: Tensor, bias: Tensor | None, like_weight: Tensor) -> Tensor:
    return _empty(like_weight) if bias is None else grad.to(bias.dtype)


# --- encoder block ----------------------------------------------------------------------------------

def _encoder_conv_input(source: Tensor, pooled: Tensor | None) -> Tensor:
    return source if pooled is None else pooled


def _encoder_block_impl(
    source: Tensor, pooled: Optional[Tensor], w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
    emit_pool: bool, recompute: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(y1, y2, p): y1 (N, C, H-2, W-2), y2 (N, C, H-4, W-4), p = max_pool2d(y2, 2) or an empty tensor."""
    x = _encoder_conv_input(source, pooled)
    dtype, layout = x.dtype, output_memory_format(backend, source)
    with autocast_disabled(x.device.type):
        y1, _ = _conv_forward(x, None, _cast(w1, dtype), _cast(b1, dtype), False, backend, layout)
        y2, p = _conv_forward(y1, None, _cast(w2, dtype), _cast(b2, dtype), emit_pool, backend, layout)
    return y1, y2, (p if emit_pool else _empty(y2))


encoder_block = _custom_op("_encoder_block", _encoder_block_impl)


def _conv_out_shape(x_shape, channels: int, shrink: int) -> tuple[int, ...]:
    return (x_shape[0], channels, x_shape[2] - shrink, x_shape[3] - shrink)


@encoder_block.register_fake
def _encoder_block_fake(source, pooled, w1, b1, w2, b2, emit_pool, recompute, backend):
    x = _encoder_conv_input(source, pooled)
    layout = output_memory_format(backend, source)
    channels = w2.shape[0]
    y1 = torch.empty(_conv_out_shape(x.shape, w1.shape[0], 2), dtype=x.dtype, device=x.device, memory_format=layout)
    y2 = torch.empty(_conv_out_shape(x.shape, channels, 4), dtype=x.dtype, device=x.device, memory_format=layout)
    if not emit_pool:
        return y1, y2, _empty(y2)
    p_shape = (y2.shape[0], channels, y2.shape[2] // 2, y2.shape[3] // 2)
    return y1, y2, torch.empty(p_shape, dtype=x.dtype, device=x.device, memory_format=layout)


def _encoder_block_backward_impl(
    grad_y1: Optional[Tensor], grad_y2: Optional[Tensor], grad_p: Optional[Tensor], source: Tensor,
    has_pooled_input: bool, y1: Optional[Tensor], y2: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
    b2: Optional[Tensor], need_input_grad: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad of conv1's input (source, or the pooled tensor) or empty, grad_w1, grad_b1, grad_w2, grad_b2)."""
    dtype, layout = y2.dtype, output_memory_format(backend, source)
    with autocast_disabled(y2.device.type):
        w1c, w2c = _cast(w1, dtype), _cast(w2, dtype)
        x = max_pool2x2(source).contiguous(memory_format=layout) if has_pooled_input else source
        if y1 is None:
            y1, _ = _conv_forward(x, None, w1c, _cast(b1, dtype), False, backend, layout)
        grad_y1_conv, _, grad_w2, grad_b2 = _conv_backward(grad_y2, grad_p, y1, None, w2c, y2, True, backend)
        if grad_y1 is not None:
            grad_y1_conv = grad_y1_conv + grad_y1
        grad_x, _, grad_w1, grad_b1 = _conv_backward(grad_y1_conv, None, x, None, w1c, y1, need_input_grad, backend)
    return (_grad_or_empty(grad_x, x, layout), _grad_or_empty(grad_w1, w1), _bias_grad(grad_b1, b1, w1),
            _grad_or_empty(grad_w2, w2), _bias_grad(grad_b2, b2, w2))


encoder_block_backward = _custom_op("_encoder_block_backward", _encoder_block_backward_impl)


@encoder_block_backward.register_fake
def _encoder_block_backward_fake(grad_y1, grad_y2, grad_p, source, has_pooled_input, y1, y2, w1, b1, w2, b2,
                                 need_input_grad, backend):
    layout = output_memory_format(backend, source)
    if not need_input_grad:
        grad_x = _empty(y2)
    else:
        shape = (source.shape[0], source.shape[1], source.shape[2] // 2, source.shape[3] // 2) if has_pooled_input \
            else tuple(source.shape)
        grad_x = torch.empty(shape, dtype=y2.dtype, device=y2.device, memory_format=layout)
    return (grad_x, torch.empty_like(w1, memory_format=torch.contiguous_format),
            _empty(w1) if b1 is None else torch.empty_like(b1),
            torch.empty_like(w2, memory_format=torch.contiguous_format),
            _empty(w2) if b2 is None else torch.empty_like(b2))


def _encoder_setup_context(ctx, inputs, output) -> None:
    source, pooled, w1, b1, w2, b2, emit_pool, recompute, backend = inputs
    y1, y2, _ = output
    ctx.save_for_backward(source, None if recompute else y1, y2, w1, b1, w2, b2)
    ctx.set_materialize_grads(False)  # y1 (and often p) get no gradient: no zero tensors to fill and add
    ctx.has_pooled_input, ctx.emit_pool, ctx.backend = pooled is not None, emit_pool, backend


def _encoder_gradients(ctx, grad_y1, grad_y2, grad_p, block_backward):
    source, y1, y2, w1, b1, w2, b2 = ctx.saved_tensors
    need_input_grad = ctx.needs_input_grad[1] if ctx.has_pooled_input else ctx.needs_input_grad[0]
    grad_x, grad_w1, grad_b1, grad_w2, grad_b2 = block_backward(
        grad_y1, grad_y2, grad_p if ctx.emit_pool else None, source, ctx.has_pooled_input, y1, y2, w1, b1, w2, b2,
        need_input_grad, ctx.backend,
    )
    grad_x = grad_x if need_input_grad else None
    grad_source, grad_pooled = (None, grad_x) if ctx.has_pooled_input else (grad_x, None)
    return (grad_source, grad_pooled, grad_w1, None if b1 is None else grad_b1, grad_w2,
            None if b2 is None else grad_b2, None, None, None)


def _encoder_backward(ctx, grad_y1, grad_y2, grad_p):
    return _encoder_gradients(ctx, grad_y1, grad_y2, grad_p, torch.ops.unet_fast._encoder_block_backward)


torch.library.register_autograd("unet_fast::_encoder_block", _encoder_backward, setup_context=_encoder_setup_context)


# --- decoder stage ----------------------------------------------------------------------------------

def _upsample(x: Tensor, up_w: Tensor, up_b: Tensor | None, backend: str, layout: torch.memory_format) -> Tensor:
    return upconv2x2_impl(x, _cast(up_w, x.dtype), _cast(up_b, x.dtype), backend).contiguous(memory_format=layout)


def _decoder_block_impl(
    x: Tensor, skip: Optional[Tensor], up_w: Tensor, up_b: Optional[Tensor], w1: Tensor, b1: Optional[Tensor],
    w2: Tensor, b2: Optional[Tensor], recompute: bool, backend: str,
) -> tuple[Tensor, Tensor]:
    """(y1, y2) of a decoder stage: x (N, 2C, H, W) -> y1 (N, C, 2H-2, 2W-2), y2 (N, C, 2H-4, 2W-4)."""
    layout = output_memory_format(backend, x)
    with autocast_disabled(x.device.type):
        u = _upsample(x, up_w, up_b, backend, layout)
        y1, _ = _conv_forward(u, skip, _cast(w1, x.dtype), _cast(b1, x.dtype), False, backend, layout)
        y2, _ = _conv_forward(y1, None, _cast(w2, x.dtype), _cast(b2, x.dtype), False, backend, layout)
    return y1, y2


decoder_block = _custom_op("_decoder_block", _decoder_block_impl)


@decoder_block.register_fake
def _decoder_block_fake(x, skip, up_w, up_b, w1, b1, w2, b2, recompute, backend):
    layout = output_memory_format(backend, x)
    up_shape = (x.shape[0], up_w.shape[1], 2 * x.shape[2], 2 * x.shape[3])
    y1 = torch.empty(_conv_out_shape(up_shape, w1.shape[0], 2), dtype=x.dtype, device=x.device, memory_format=layout)
    y2 = torch.empty(_conv_out_shape(up_shape, w2.shape[0], 4), dtype=x.dtype, device=x.device, memory_format=layout)
    return y1, y2


def _decoder_block_backward_impl(
    grad_y1: Optional[Tensor], grad_y2: Optional[Tensor], x: Tensor, skip: Optional[Tensor], y1: Optional[Tensor],
    y2: Tensor, up_w: Tensor, up_b: Optional[Tensor], w1: Tensor, b1: Optional[Tensor], w2: Tensor,
    b2: Optional[Tensor], backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad_x, grad_skip or empty, grad_up_w, grad_up_b, grad_w1, grad_b1, grad_w2, grad_b2)."""
    dtype, layout = x.dtype, output_memory_format(backend, x)
    with autocast_disabled(x.device.type):
        u = _upsample(x, up_w, up_b, backend, layout)
        if y1 is None:
            y1, _ = _conv_forward(u, skip, _cast(w1, dtype), _cast(b1, dtype), False, backend, layout)
        grad_y1_conv, _, grad_w2, grad_b2 = _conv_backward(grad_y2, None, y1, None, _cast(w2, dtype), y2, True, backend)
        if grad_y1 is not None:
            grad_y1_conv = grad_y1_conv + grad_y1
        grad_u, grad_skip, grad_w1, grad_b1 = _conv_backward(grad_y1_conv, None, u, skip, _cast(w1, dtype), y1, True,
                                                             backend)
        grad_x, grad_up_w, grad_up_b = upconv2x2_backward_impl(grad_u, x, _cast(up_w, dtype), backend)
    return (_grad_or_empty(grad_x, x, layout), _grad_or_empty(grad_skip, x, layout), _grad_or_empty(grad_up_w, up_w),
            _bias_grad(grad_up_b, up_b, up_w), _grad_or_empty(grad_w1, w1), _bias_grad(grad_b1, b1, w1),
            _grad_or_empty(grad_w2, w2), _bias_grad(grad_b2, b2, w2))


decoder_block_backward = _custom_op("_decoder_block_backward", _decoder_block_backward_impl)


@decoder_block_backward.register_fake
def _decoder_block_backward_fake(grad_y1, grad_y2, x, skip, y1, y2, up_w, up_b, w1, b1, w2, b2, backend):
    layout = output_memory_format(backend, x)

    def like(t, memory_format=torch.contiguous_format):
        return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=memory_format)

    grad_skip = _empty(x) if skip is None else torch.empty(skip.shape, dtype=x.dtype, device=x.device,
                                                           memory_format=layout)
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=layout), grad_skip, like(up_w),
            _empty(up_w) if up_b is None else like(up_b), like(w1), _empty(w1) if b1 is None else like(b1),
            like(w2), _empty(w2) if b2 is None else like(b2))


def _decoder_setup_context(ctx, inputs, output) -> None:
    x, skip, up_w, up_b, w1, b1, w2, b2, recompute, backend = inputs
    y1, y2 = output
    ctx.save_for_backward(x, skip, None if recompute else y1, y2, up_w, up_b, w1, b1, w2, b2)
    ctx.set_materialize_grads(False)  # y1 gets no gradient: no zero tensor to fill and add
    ctx.backend = backend


def _decoder_gradients(ctx, grad_y1, grad_y2, block_backward):
    x, skip, y1, y2, up_w, up_b, w1, b1, w2, b2 = ctx.saved_tensors
    grads = block_backward(grad_y1, grad_y2, x, skip, y1, y2, up_w, up_b, w1, b1, w2, b2, ctx.backend)
    grad_x, grad_skip, grad_up_w, grad_up_b, grad_w1, grad_b1, grad_w2, grad_b2 = grads
    return (grad_x, None if skip is None else grad_skip, grad_up_w, None if up_b is None else grad_up_b, grad_w1,
            None if b1 is None else grad_b1, grad_w2, None if b2 is None else grad_b2, None, None)


def _decoder_backward(ctx, grad_y1, grad_y2):
    return _decoder_gradients(ctx, grad_y1, grad_y2, torch.ops.unet_fast._decoder_block_backward)


torch.library.register_autograd("unet_fast::_decoder_block", _decoder_backward, setup_context=_decoder_setup_context)


# --- head: the 1x1 conv to the class logits -------------------------------------------------------

def _head_impl(x: Tensor, weight: Tensor, bias: Optional[Tensor], backend: str) -> Tensor:
    """conv1x1(x, weight, bias) with the weight cast to x's dtype inside (so no cast is saved)."""
    with autocast_disabled(x.device.type):
        return conv1x1_impl(x, _cast(weight, x.dtype), _cast(bias, x.dtype), backend)


head = _custom_op("_head", _head_impl)


@head.register_fake
def _head_fake(x, weight, bias, backend):
    return torch.empty((x.shape[0], weight.shape[0], *x.shape[2:]), dtype=x.dtype, device=x.device,
                       memory_format=output_memory_format(backend, x))


def _head_backward_impl(grad_y: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                        backend: str) -> tuple[Tensor, Tensor, Tensor]:
    with autocast_disabled(x.device.type):
        grad_x, grad_w, grad_b = conv1x1_backward_impl(_cast(grad_y, x.dtype), x, _cast(weight, x.dtype), backend)
    return grad_x, _grad_or_empty(grad_w, weight), _bias_grad(grad_b, bias, weight)


head_backward = _custom_op("_head_backward", _head_backward_impl)


@head_backward.register_fake
def _head_backward_fake(grad_y, x, weight, bias, backend):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(backend, x)),
            torch.empty(weight.shape, dtype=weight.dtype, device=weight.device),
            _empty(weight) if bias is None else torch.empty_like(bias))


def _head_setup_context(ctx, inputs, output) -> None:
    x, weight, bias, backend = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.backend = backend


def _head_gradients(ctx, grad_y, head_backward_op):
    x, weight, bias = ctx.saved_tensors
    grad_x, grad_w, grad_b = head_backward_op(grad_y, x, weight, bias, ctx.backend)
    return grad_x, grad_w, None if bias is None else grad_b, None


def _head_backward(ctx, grad_y):
    return _head_gradients(ctx, grad_y, torch.ops.unet_fast._head_backward)


torch.library.register_autograd("unet_fast::_head", _head_backward, setup_context=_head_setup_context)


# --- eager twins: the same forward, saved tensors and backward as autograd.Functions ------------------
# A custom op costs about 0.2 ms of dispatch per call on CPU, as much as a whole block of a small
# model; eager calls skip it. Under torch.compile / export the ops above are traced instead.

class _EagerEncoderBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *inputs):
        output = _encoder_block_impl(*inputs)
        _encoder_setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, grad_y1, grad_y2, grad_p):
        return _encoder_gradients(ctx, grad_y1, grad_y2, grad_p, _encoder_block_backward_impl)


class _EagerDecoderBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *inputs):
        output = _decoder_block_impl(*inputs)
        _decoder_setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, grad_y1, grad_y2):
        return _decoder_gradients(ctx, grad_y1, grad_y2, _decoder_block_backward_impl)


class _EagerHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *inputs):
        output = _head_impl(*inputs)
        _head_setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, grad_y):
        return _head_gradients(ctx, grad_y, _head_backward_impl)


def _runner(op_name: str, eager: type[torch.autograd.Function], impl):
    def run(*inputs):
        if torch.compiler.is_compiling():
            return getattr(torch.ops.unet_fast, op_name)(*inputs)
        if not torch.is_grad_enabled():
            return impl(*inputs)
        return eager.apply(*inputs)

    run.__doc__ = f"``torch.ops.unet_fast.{op_name}(*inputs)``: the op when traced, its eager twin otherwise."
    return run


run_encoder_block = _runner("_encoder_block", _EagerEncoderBlock, _encoder_block_impl)
run_decoder_block = _runner("_decoder_block", _EagerDecoderBlock, _decoder_block_impl)
run_head = _runner("_head", _EagerHead, _head_impl)

"""Fused valid 3x3 convolution + bias + ReLU (+ crop-concat, + 2x2 max-pool) in Triton: the forward.

All kernels work on NHWC (channels_last) tensors with unit channel stride; the launchers convert
their inputs. Shapes, with C_in = C0 + C1 (skip channels first, as in the U-Net decoder):

    x (N, C1, H, W), skip (N, C0, Hs, Ws) read at its center-crop offset (top, left),
    weight (C_out, C_in, 3, 3), y (N, C_out, H - 2, W - 2), pooled (N, C_out, (H-2)/2, (W-2)/2).

Forward: an implicit GEMM with M = N*Ho*Wo output pixels, N = C_out and K = 9*C_in, whose K loop
walks skip's channels (at the crop offset) and then x's, so the concatenation never exists. The
epilogue adds the bias, applies the ReLU, stores y and, with pooling, the 2x2 max: rows of the M
tile are then ordered window by window (4 consecutive rows = one 2x2 window, row-major), so every
window lies inside one program.

The backward kernels are in ``unet_fast.triton.conv3x3_relu_backward``, the tiles in
``unet_fast.triton.conv3x3_relu_tiles``. Launcher: ``conv3x3_relu_forward``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from unet_fast.triton.conv3x3_relu_tiles import (
    GEMM_TILES, TunedKernel, check_index_range, gemm_grid, narrower_source_channels, nhw_strides, nhwc,
    register_gemm_configs,
)
from unet_fast.triton.runtime import check_crop, device_guard, weight_operand


@triton.jit
def _nan_propagating_max(a, b):
    """max_pool2d's rule: a window with a NaN pools to NaN."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _conv3x3_fwd_kernel(
    x_ptr, skip_ptr, w_ptr, bias_ptr, y_ptr, pooled_ptr,
    M, C0, C1, C_OUT, HO, WO, TOP, LEFT,
    sxn, sxh, sxw, ssn, ssh, ssw, syn, syh, syw, spn, sph, spw, swk, swn,
    HAS_SKIP: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, POOL: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # M tiles on grid axis 0: axes 1 and 2 are limited to 65,535 blocks, which a large batch exceeds
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    if POOL:
        quad = offs_m % 4
        window = offs_m // 4
        pw = window % (WO // 2)
        rest = window // (WO // 2)
        ph = rest % (HO // 2)
        n = rest // (HO // 2)
        oh = 2 * ph + quad // 2
        ow = 2 * pw + quad % 2
    else:
        ow = offs_m % WO
        rest = offs_m // WO
        oh = rest % HO
        n = rest // HO
    n = n.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < C_OUT
    offs_k = tl.arange(0, BLOCK_K)
    c_in = C0 + C1
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    if HAS_SKIP:
        # phase 1: skip's channels, read at the crop offset; one flat loop over (tap, channel block)
        skip_row = n * ssn + (oh + TOP) * ssh + (ow + LEFT) * ssw
        k_tiles = tl.cdiv(C0, BLOCK_K)
        for step in range(0, 9 * k_tiles):
            tap = step // k_tiles
            ck = (step % k_tiles) * BLOCK_K + offs_k
            k_mask = ck < C0
            a = tl.load(
                skip_ptr + (skip_row + (tap // 3) * ssh + (tap % 3) * ssw)[:, None] + ck[None, :],
                mask=m_mask[:, None] & k_mask[None, :], other=0.0,
            )
            b = tl.load(
                w_ptr + (tap * c_in + ck)[:, None] * swk + offs_n[None, :] * swn,
                mask=k_mask[:, None] & n_mask[None, :], other=0.0,
            )
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    # phase 2: x's channels, at weight rows C0.. of each tap
    x_row = n * sxn + oh * sxh + ow * sxw
    k_tiles = tl.cdiv(C1, BLOCK_K)
    for step in range(0, 9 * k_tiles):
        tap = step // k_tiles
        ck = (step % k_tiles) * BLOCK_K + offs_k
        k_mask = ck < C1
        a = tl.load(
            x_ptr + (x_row + (tap // 3) * sxh + (tap % 3) * sxw)[:, None] + ck[None, :],
            mask=m_mask[:, None] & k_mask[None, :], other=0.0,
        )
        b = tl.load(
            w_ptr + (tap * c_in + C0 + ck)[:, None] * swk + offs_n[None, :] * swn,
            mask=k_mask[:, None] & n_mask[None, :], other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if RELU:  # NaN stays NaN, as in F.relu (the hardware max would drop it)
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
    out = acc.to(y_ptr.dtype.element_ty)
    y_row = n * syn + oh * syh + ow * syw
    tl.store(y_ptr + y_row[:, None] + offs_n[None, :], out, mask=m_mask[:, None] & n_mask[None, :])
    if POOL:
        # rounding is monotone, so the rounded max of acc is the max of the rounded y
        pooled = tl.reduce(tl.reshape(acc, (BLOCK_M // 4, 4, BLOCK_N)), 1, _nan_propagating_max)
        pooled = pooled.to(y_ptr.dtype.element_ty)
        offs_w = pid_m * (BLOCK_M // 4) + tl.arange(0, BLOCK_M // 4)
        w_mask = offs_w < M // 4
        pw = offs_w % (WO // 2)
        rest = offs_w // (WO // 2)
        ph = rest % (HO // 2)
        pn = (rest // (HO // 2)).to(tl.int64)
        p_row = pn * spn + ph * sph + pw * spw
        tl.store(pooled_ptr + p_row[:, None] + offs_n[None, :], pooled, mask=w_mask[:, None] & n_mask[None, :])


FORWARD = TunedKernel(_conv3x3_fwd_kernel, GEMM_TILES, ["M", "C0", "C1", "C_OUT", "HAS_SKIP", "POOL", "INPUT_PRECISION"],
                      family="gemm", channel_block="BLOCK_K", channels=narrower_source_channels)


def conv3x3_relu_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    skip: torch.Tensor | None,
    *,
    relu: bool,
    pool: bool,
    input_precision: str = "ieee",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """y = relu(conv3x3_valid(cat(center_crop(skip, x), x), weight) + bias) and its 2x2 max-pool.

    No validation (``unet_fast.ops.conv3x3_relu`` validates); all tensors on one device, one dtype.

    Args:
        x: (N, C1, H, W); skip: (N, C0, Hs, Ws) or None, Hs - H and Ws - W even and >= 0.
        weight: (C_out, C0 + C1, 3, 3); bias: (C_out,) or None.
        relu: apply the ReLU; pool: also return the 2x2 max-pool (H - 2 and W - 2 even).
        input_precision: the dots' INPUT_PRECISION, "tf32" or "ieee" (``runtime.input_precision``).
    Returns:
        (y, pooled): y (N, C_out, H - 2, W - 2) channels_last; pooled (N, C_out, (H-2)/2, (W-2)/2)
        channels_last, or None without pool.
    Raises:
        ValueError: tensors too large for the kernels' int32 indexing (``check_index_range``).
    """
    check_index_range(x, skip, weight)
    with device_guard(x):
        return _forward(x, weight, bias, skip, relu, pool, input_precision)


def _forward(x, weight, bias, skip, relu, pool, precision):
    x = nhwc(x)
    batch, c1, height, width = x.shape
    c_out = weight.shape[0]
    c0 = 0 if skip is None else skip.shape[1]
    skip_nhwc = x if skip is None else nhwc(skip)
    top, left = (0, 0) if skip is None else check_crop(skip.shape, x.shape)
    out_h, out_w = height - 2, width - 2
    # the [9 * C_in, C_out] matrix of row tap * C_in + ci
    packed = weight_operand(weight.permute(2, 3, 1, 0).reshape(9 * (c0 + c1), c_out), precision)
    y = torch.empty((batch, c_out, out_h, out_w), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    pooled = None
    if pool:
        pooled = torch.empty(
            (batch, c_out, out_h // 2, out_w // 2), device=x.device, dtype=x.dtype, memory_format=torch.channels_last
        )
    pooled_arg = y if pooled is None else pooled
    m = batch * out_h * out_w
    if m == 0:  # an empty batch: empty outputs, no launch
        return y, pooled
    grid = lambda meta: gemm_grid(m, c_out, meta["BLOCK_M"], meta["BLOCK_N"])  # noqa: E731
    FORWARD.launch(
        grid,
        x, skip_nhwc, packed, weight if bias is None else bias, y, pooled_arg,
        m, c0, c1, c_out, out_h, out_w, top, left,
        *nhw_strides(x), *nhw_strides(skip_nhwc), *nhw_strides(y), *nhw_strides(pooled_arg), *packed.stride(),
        HAS_SKIP=skip is not None, HAS_BIAS=bias is not None, RELU=bool(relu), POOL=bool(pool),
        dtype=x.dtype, INPUT_PRECISION=precision,
    )
    return y, pooled


register_gemm_configs("conv3x3_fwd", FORWARD, (
    {"HAS_SKIP": True, "HAS_BIAS": True, "RELU": True, "POOL": True},
    {"HAS_SKIP": False, "HAS_BIAS": True, "RELU": True, "POOL": False},
))

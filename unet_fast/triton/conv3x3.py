"""Fused valid 3x3 convolution + bias + ReLU (+ crop-concat, + 2x2 max-pool) in Triton.

All kernels work on NHWC (channels_last) tensors with unit channel stride; the launchers convert
their inputs. Shapes, with C_in = C0 + C1 (skip channels first, as in the U-Net decoder):

    x (N, C1, H, W), skip (N, C0, Hs, Ws) read at its center-crop offset (top, left),
    weight (C_out, C_in, 3, 3), y (N, C_out, H - 2, W - 2), pooled (N, C_out, (H-2)/2, (W-2)/2).

Forward: an implicit GEMM with M = N*Ho*Wo output pixels, N = C_out and K = 9*C_in, whose K loop
walks skip's channels (at the crop offset) and then x's, so the concatenation never exists. The
epilogue adds the bias, applies the ReLU, stores y and, with pooling, the 2x2 max: rows of the M
tile are then ordered window by window (4 consecutive rows = one 2x2 window, row-major), so every
window lies inside one program.

Backward: the gradient reaching the pre-activation is g = (grad_y + routed grad_pooled) * (y > 0).
Without pooling the ReLU mask is applied while loading grad_y; with pooling one elementwise pass
routes grad_pooled to the first maximum of each window of y (PyTorch's tie rule) and writes g.
dgrad is the full correlation of g with the flipped weights, written back split into skip's
gradient (at the crop offset, zero outside) and x's; wgrad and the bias gradient reduce over M in
deterministic two stages (per-split partial sums in fp32, then a sum over splits).

Public launchers (used by ``unet_fast.ops.conv3x3`` and by models writing their own autograd):
``conv3x3_forward`` and ``conv3x3_backward``.
"""
from __future__ import annotations

import inspect

import torch
import triton
import triton.language as tl

from unet_fast.ops._backends import autotune_enabled, device_guard, time_ms, triton_interpreting
from unet_fast.ops._validation import check_crop
from unet_fast.triton.aot import DEFAULT_SPILL_BUDGET, KernelConfig, register

_TORCH_TO_TRITON = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


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


@triton.jit
def _pool_relu_grad_kernel(
    grad_y_ptr, grad_pooled_ptr, y_ptr, g_ptr,
    WINDOWS, C, HP, WP,
    syn, syh, syw, spn, sph, spw,
    HAS_GRAD_Y: tl.constexpr, RELU: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """g = (grad_y + grad_pooled routed to each window's first max of y) * (y > 0), per 2x2 window.

    y, grad_y and g share the strides (syn, syh, syw); grad_pooled has (spn, sph, spw)."""
    offs_w = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_w < WINDOWS)[:, None] & (offs_c < C)[None, :]
    pw = offs_w % WP
    rest = offs_w // WP
    ph = rest % HP
    n = (rest // HP).to(tl.int64)
    gp = tl.load(grad_pooled_ptr + (n * spn + ph * sph + pw * spw)[:, None] + offs_c[None, :], mask=mask, other=0.0)
    top_left = (n * syn + 2 * ph * syh + 2 * pw * syw)[:, None] + offs_c[None, :]
    y00 = tl.load(y_ptr + top_left, mask=mask, other=0.0)
    y01 = tl.load(y_ptr + top_left + syw, mask=mask, other=0.0)
    y10 = tl.load(y_ptr + top_left + syh, mask=mask, other=0.0)
    y11 = tl.load(y_ptr + top_left + syh + syw, mask=mask, other=0.0)
    # PyTorch's max_pool2d: a later element wins only if strictly greater (or NaN)
    best = y00
    arg = tl.zeros(y00.shape, dtype=tl.int32)
    take = (y01 > best) | (y01 != y01)
    arg = tl.where(take, 1, arg)
    best = tl.where(take, y01, best)
    take = (y10 > best) | (y10 != y10)
    arg = tl.where(take, 2, arg)
    best = tl.where(take, y10, best)
    take = (y11 > best) | (y11 != y11)
    arg = tl.where(take, 3, arg)
    for quad in tl.static_range(4):
        offset = top_left + (quad // 2) * syh + (quad % 2) * syw
        if quad == 0:
            yq = y00
        elif quad == 1:
            yq = y01
        elif quad == 2:
            yq = y10
        else:
            yq = y11
        g = tl.where(arg == quad, gp.to(tl.float32), 0.0)
        if HAS_GRAD_Y:
            g += tl.load(grad_y_ptr + offset, mask=mask, other=0.0).to(tl.float32)
        if RELU:
            g = tl.where(yq > 0, g, 0.0)
        tl.store(g_ptr + offset, g.to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv3x3_dgrad_kernel(
    g_ptr, y_ptr, w_ptr, grad_x_ptr, grad_skip_ptr,
    M_IN, C0, C1, C_OUT, H, W, HO, WO, TOP, LEFT, C_LO, C_HI,
    sgn, sgh, sgw, sxn, sxh, sxw, ssn, ssh, ssw, swk, swn,
    HAS_SKIP: tl.constexpr, MASK_RELU: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """grad_in[n, ih, iw, ci] = sum_{tap, co} g[n, ih - kh, iw - kw, co] * w[tap, co, ci] over the
    concatenated input channels ci in [C_LO, C_HI); w is the [9 * C_out, C_in] matrix (tap, co) x ci
    with strides (swk, swn). g and y share strides."""
    pid_m = tl.program_id(0)  # M on axis 0, as in the forward kernel
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M_IN
    iw = offs_m % W
    rest = offs_m // W
    ih = rest % H
    n = (rest // H).to(tl.int64)
    offs_n = C_LO + pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < C_HI
    offs_k = tl.arange(0, BLOCK_K)
    c_in = C0 + C1
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_tiles = tl.cdiv(C_OUT, BLOCK_K)
    for step in range(0, 9 * k_tiles):
        tap = step // k_tiles
        ck = (step % k_tiles) * BLOCK_K + offs_k
        k_mask = ck < C_OUT
        oh = ih - tap // 3
        ow = iw - tap % 3
        valid = m_mask & (oh >= 0) & (oh < HO) & (ow >= 0) & (ow < WO)
        g_offsets = (n * sgn + oh * sgh + ow * sgw)[:, None] + ck[None, :]
        load_mask = valid[:, None] & k_mask[None, :]
        g = tl.load(g_ptr + g_offsets, mask=load_mask, other=0.0)
        if MASK_RELU:
            g = tl.where(tl.load(y_ptr + g_offsets, mask=load_mask, other=0.0) > 0, g, 0.0)
        b = tl.load(
            w_ptr + (tap * C_OUT + ck)[:, None] * swk + offs_n[None, :] * swn,
            mask=k_mask[:, None] & n_mask[None, :], other=0.0,
        )
        acc = tl.dot(g, b, acc, input_precision=INPUT_PRECISION)
    out = acc.to(grad_x_ptr.dtype.element_ty)
    is_x = offs_n >= C0
    x_offsets = (n * sxn + ih * sxh + iw * sxw)[:, None] + (offs_n - C0)[None, :]
    tl.store(grad_x_ptr + x_offsets, out, mask=m_mask[:, None] & (n_mask & is_x)[None, :])
    if HAS_SKIP:
        skip_offsets = (n * ssn + (ih + TOP) * ssh + (iw + LEFT) * ssw)[:, None] + offs_n[None, :]
        tl.store(grad_skip_ptr + skip_offsets, out, mask=m_mask[:, None] & (n_mask & (offs_n < C0))[None, :])


@triton.jit
def _conv3x3_wgrad_kernel(
    x_ptr, skip_ptr, g_ptr, y_ptr, grad_w_ptr, grad_b_ptr,
    M, C0, C1, C_OUT, HO, WO, TOP, LEFT, M_PER_SPLIT,
    sxn, sxh, sxw, ssn, ssh, ssw, sgn, sgh, sgw,
    HAS_SKIP: tl.constexpr, MASK_RELU: tl.constexpr, BIAS_GRAD: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Partial sums over one split of the output pixels:
    grad_w[split, tap * C_in + ci, co] = sum_m in[m shifted by tap, ci] * g[m, co] and
    grad_b[split, co] = sum_m g[m, co]. Programs on axis 0 own one tap and one channel tile, of
    skip (tiles first) or of x, so no tile straddles the two sources."""
    pid_k = tl.program_id(0)
    pid_co = tl.program_id(1)
    split = tl.program_id(2)
    skip_tiles = tl.cdiv(C0, BLOCK_CI)
    ci_tiles = skip_tiles + tl.cdiv(C1, BLOCK_CI)
    tap = pid_k // ci_tiles
    tile = pid_k % ci_tiles
    kh = tap // 3
    kw = tap % 3
    c_in = C0 + C1
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_mask = offs_co < C_OUT
    from_skip = tile < skip_tiles
    # per-source scalars: base channel, channel count, row in the packed weight, strides, offset
    channel_base = tl.where(from_skip, tile * BLOCK_CI, (tile - skip_tiles) * BLOCK_CI)
    channels = tl.where(from_skip, C0, C1)
    weight_row = tl.where(from_skip, 0, C0)
    stride_n = tl.where(from_skip, ssn, sxn).to(tl.int64)
    stride_h = tl.where(from_skip, ssh, sxh)
    stride_w = tl.where(from_skip, ssw, sxw)
    row0 = tl.where(from_skip, TOP, 0) + kh
    col0 = tl.where(from_skip, LEFT, 0) + kw
    source_ptr = x_ptr
    if HAS_SKIP:
        if from_skip:
            source_ptr = skip_ptr
    offs_ci = channel_base + tl.arange(0, BLOCK_CI)
    ci_mask = offs_ci < channels
    acc = tl.zeros((BLOCK_CI, BLOCK_CO), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    m_start = split * M_PER_SPLIT
    m_end = tl.minimum(m_start + M_PER_SPLIT, M)
    for m0 in range(m_start, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_mask = offs_m < m_end
        ow = offs_m % WO
        rest = offs_m // WO
        oh = rest % HO
        n = (rest // HO).to(tl.int64)
        in_offsets = (n * stride_n + (oh + row0) * stride_h + (ow + col0) * stride_w)[None, :] + offs_ci[:, None]
        a = tl.load(source_ptr + in_offsets, mask=ci_mask[:, None] & m_mask[None, :], other=0.0)
        g_offsets = (n * sgn + oh * sgh + ow * sgw)[:, None] + offs_co[None, :]
        g_mask = m_mask[:, None] & co_mask[None, :]
        g = tl.load(g_ptr + g_offsets, mask=g_mask, other=0.0)
        if MASK_RELU:
            g = tl.where(tl.load(y_ptr + g_offsets, mask=g_mask, other=0.0) > 0, g, 0.0)
        acc = tl.dot(a, g, acc, input_precision=INPUT_PRECISION)
        if BIAS_GRAD:
            bias_acc += tl.sum(g.to(tl.float32), axis=0)
    out_rows = tap * c_in + weight_row + offs_ci
    partial = grad_w_ptr + split.to(tl.int64) * (9 * c_in * C_OUT)
    tl.store(partial + out_rows[:, None] * C_OUT + offs_co[None, :], acc, mask=ci_mask[:, None] & co_mask[None, :])
    if BIAS_GRAD:
        tl.store(grad_b_ptr + split * C_OUT + offs_co, bias_acc, mask=co_mask & (pid_k == 0))


# --------------------------------------------------------------------------------------------
# Configurations: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), one list per operand class
# (``operand_class``), the first being the default; at most 4 warps, since Triton convs are
# reported to miscompile at 8 (inductor caps its conv template at 4). Each list holds the tiles
# that keep their registers (``unet_fast.tools.aot_check`` compiles them and reads the spills).
# --------------------------------------------------------------------------------------------

_GEMM_TILES = {
    "16bit": ((128, 128, 64, 4, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4), (128, 64, 16, 4, 4)),
    # a 128x128 fp32-operand tile spills hundreds of bytes at 4 warps
    "tf32": ((128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4), (128, 64, 16, 4, 4)),
    # IEEE fp32 dots run on FMA units with both operands in registers: small tiles
    "ieee": ((64, 64, 16, 4, 3), (64, 32, 32, 4, 3), (32, 64, 32, 4, 3)),
}
# wgrad: (BLOCK_CI, BLOCK_CO, BLOCK_M); a 32-row channel tile serves the 1-channel first layer
_WGRAD_TILES = {
    "16bit": ((128, 128, 64, 4, 3), (64, 128, 64, 4, 3), (128, 64, 64, 4, 3), (64, 64, 64, 4, 4), (32, 64, 64, 4, 3)),
    "tf32": ((64, 128, 32, 4, 3), (128, 64, 32, 4, 3), (64, 64, 32, 4, 4), (32, 64, 32, 4, 3)),
    "ieee": ((64, 64, 16, 4, 3), (64, 32, 32, 4, 3), (32, 64, 32, 4, 3)),
}
# 16-bit 128-row tiles hold a 128-row fp32 accumulator in 4 warps: the reshape of the pool epilogue
# and sm_80's mma.sync fragments spill up to about 200 B per thread (to L1), which these tiles are
# worth; every other configuration keeps to the default budget.
_WIDE_TILE_SPILL_BUDGET = 256
# (windows, channels) per program of the pool-gradient pass: 8 elements per thread, 128-byte rows
_POOL_GRAD_BLOCK = {"BLOCK_W": 16, "BLOCK_C": 64}
# the interpreter runs one program at a time in numpy: few, moderately sized programs are fastest
_INTERPRETER_GEMM = {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 16}
_INTERPRETER_WGRAD = {"BLOCK_CI": 32, "BLOCK_CO": 32, "BLOCK_M": 64}


def operand_class(dtype: torch.dtype, input_precision: str) -> str:
    """Which tile list serves a dot: "16bit" (fp16/bf16 operands), "tf32" or "ieee" (fp32 operands)."""
    if dtype in (torch.float16, torch.bfloat16):
        return "16bit"
    return "tf32" if input_precision == "tf32" else "ieee"


def _gemm_configs(tiles, names):
    return [
        triton.Config(dict(zip(names, tile[:3])), num_warps=tile[3], num_stages=tile[4]) for tile in tiles
    ]


def _autotuned(kernel, tiles, names, key):
    return triton.autotune(configs=_gemm_configs(tiles, names), key=key, do_bench=time_ms)(kernel)


_GEMM_NAMES = ("BLOCK_M", "BLOCK_N", "BLOCK_K")
_WGRAD_NAMES = ("BLOCK_CI", "BLOCK_CO", "BLOCK_M")
_FWD_KEY = ["M", "C0", "C1", "C_OUT", "HAS_SKIP", "POOL", "INPUT_PRECISION"]
_DGRAD_KEY = ["M_IN", "C0", "C1", "C_OUT", "C_LO", "C_HI", "MASK_RELU", "INPUT_PRECISION"]
_WGRAD_KEY = ["M", "C0", "C1", "C_OUT", "M_PER_SPLIT", "MASK_RELU", "INPUT_PRECISION"]
# one autotuner per operand class, since the tile lists differ (the autotuner also keys on dtypes)
_TUNED = {
    klass: {
        "fwd": _autotuned(_conv3x3_fwd_kernel, _GEMM_TILES[klass], _GEMM_NAMES, _FWD_KEY),
        "dgrad": _autotuned(_conv3x3_dgrad_kernel, _GEMM_TILES[klass], _GEMM_NAMES, _DGRAD_KEY),
        "wgrad": _autotuned(_conv3x3_wgrad_kernel, _WGRAD_TILES[klass], _WGRAD_NAMES, _WGRAD_KEY),
    }
    for klass in _GEMM_TILES
}
_RAW = {"fwd": _conv3x3_fwd_kernel, "dgrad": _conv3x3_dgrad_kernel, "wgrad": _conv3x3_wgrad_kernel}


def fixed_config(name: str, klass: str) -> dict | None:
    """The launch configuration of kernel ``name`` ("fwd", "dgrad" or "wgrad") for operand class
    ``klass`` when it is not autotuned: one interpreter tile under TRITON_INTERPRET=1 (no timing
    there), the first (default) configuration of the class's list when UNET_FAST_AUTOTUNE=0; None
    means autotune."""
    if triton_interpreting():
        return dict(_INTERPRETER_WGRAD if name == "wgrad" else _INTERPRETER_GEMM)
    if autotune_enabled():
        return None
    tile = (_WGRAD_TILES if name == "wgrad" else _GEMM_TILES)[klass][0]
    names = _WGRAD_NAMES if name == "wgrad" else _GEMM_NAMES
    return {**dict(zip(names, tile[:3])), "num_warps": tile[3], "num_stages": tile[4]}


def _launch(name: str, dtype: torch.dtype, grid, *args, INPUT_PRECISION: str, **constexprs) -> None:
    """Runs a GEMM kernel: autotuned on a GPU, else with ``fixed_config``."""
    klass = operand_class(dtype, INPUT_PRECISION)
    config = fixed_config(name, klass)
    if config is None:
        _TUNED[klass][name][grid](*args, INPUT_PRECISION=INPUT_PRECISION, **constexprs)
    else:
        _RAW[name][grid(config)](*args, INPUT_PRECISION=INPUT_PRECISION, **constexprs, **config)


def _input_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    return "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _nhw_strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(2), t.stride(3)


def _weight_matrix(matrix: torch.Tensor, k_major: bool) -> torch.Tensor:
    """The [K, N] weight operand of a GEMM kernel, stored N-major (rows contiguous), or K-major
    (columns contiguous) for tf32: sm_90's tf32 wgmma reads only K-major operands from shared
    memory, and an N-major one would arrive in 4-byte copies. The kernels take its two strides."""
    return matrix.t().contiguous().t() if k_major else matrix.contiguous()


def gemm_grid(rows: int, cols: int, block_m: int, block_n: int) -> tuple[int, int]:
    """Launch grid of the forward/dgrad GEMM: row (pixel) tiles on axis 0, whose limit is 2**31 - 1
    (axes 1 and 2 allow only 65,535 blocks), column (channel) tiles on axis 1."""
    return triton.cdiv(rows, block_m), triton.cdiv(cols, block_n)


# The kernels compute pixel indices, and element offsets within one image, in int32 (the image
# index is widened to int64 before it meets the batch stride): these bounds keep them exact.
_INT32_MAX = 2**31 - 1
_MAX_PIXELS = _INT32_MAX - 1024  # the last pixel tile's indices run up to a block past the end


def check_index_range(x: torch.Tensor, skip: torch.Tensor | None, weight: torch.Tensor) -> None:
    """ValueError unless the kernels' int32 indexing covers these tensors: at most 2**31 - 1 elements
    per image in x, skip and y (and in the weight), fewer than 2**31 - 1024 pixels in x. Reads shapes
    only (works on meta tensors)."""
    batch, _, height, width = x.shape
    c_out = weight.shape[0]
    per_image = {
        "x": x[0].numel() if batch else 0,
        "output": c_out * max(height - 2, 0) * max(width - 2, 0),
        "weight": weight.numel(),
    }
    if skip is not None:
        per_image["skip"] = skip[0].numel() if batch else 0
    for name, count in per_image.items():
        if count > _INT32_MAX:
            what = "elements" if name == "weight" else "elements per image"
            raise ValueError(
                f"{name} has {count} {what}; the Triton conv3x3 kernels index with int32 and take at most "
                f"{_INT32_MAX}: split the batch or the image into tiles, or use backend='torch'"
            )
    pixels = batch * height * width
    if pixels > _MAX_PIXELS:
        raise ValueError(
            f"x has {pixels} pixels (N*H*W); the Triton conv3x3 kernels index pixels with int32 and take at "
            f"most {_MAX_PIXELS}: split the batch, or use backend='torch'"
        )


def crop_offset_of(skip: torch.Tensor | None, x: torch.Tensor) -> tuple[int, int]:
    """(top, left) of x's (H, W) window centered in skip; (0, 0) without skip."""
    return (0, 0) if skip is None else check_crop(skip.shape, x.shape)


def conv3x3_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    skip: torch.Tensor | None,
    relu: bool,
    pool: bool,
    allow_tf32: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """y = relu(conv3x3_valid(cat(center_crop(skip, x), x), weight) + bias) and its 2x2 max-pool.

    No validation (``unet_fast.ops.conv3x3_relu`` validates); all tensors on one device, one dtype.

    Args:
        x: (N, C1, H, W); skip: (N, C0, Hs, Ws) or None, Hs - H and Ws - W even and >= 0.
        weight: (C_out, C0 + C1, 3, 3); bias: (C_out,) or None.
        relu: apply the ReLU; pool: also return the 2x2 max-pool (H - 2 and W - 2 even).
        allow_tf32: fp32 operands go through TF32 tensor cores (ignored for 16-bit inputs).
    Returns:
        (y, pooled): y (N, C_out, H - 2, W - 2) channels_last; pooled (N, C_out, (H-2)/2, (W-2)/2)
        channels_last, or None without pool.
    Raises:
        ValueError: tensors too large for the kernels' int32 indexing (``check_index_range``).
    """
    check_index_range(x, skip, weight)
    with device_guard(x):
        return _forward(x, weight, bias, skip, relu, pool, allow_tf32)


def _forward(x, weight, bias, skip, relu, pool, allow_tf32):
    x = _nhwc(x)
    batch, c1, height, width = x.shape
    c_out = weight.shape[0]
    c0 = 0 if skip is None else skip.shape[1]
    skip_nhwc = x if skip is None else _nhwc(skip)
    top, left = crop_offset_of(skip, x)
    out_h, out_w = height - 2, width - 2
    precision = _input_precision(x.dtype, allow_tf32)
    # the [9 * C_in, C_out] matrix of row tap * C_in + ci
    packed = _weight_matrix(weight.permute(2, 3, 1, 0).reshape(9 * (c0 + c1), c_out), precision == "tf32")
    y = torch.empty((batch, c_out, out_h, out_w), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    pooled = None
    if pool:
        pooled = torch.empty(
            (batch, c_out, out_h // 2, out_w // 2), device=x.device, dtype=x.dtype, memory_format=torch.channels_last
        )
    pooled_arg = y if pooled is None else pooled
    m = batch * out_h * out_w
    grid = lambda meta: gemm_grid(m, c_out, meta["BLOCK_M"], meta["BLOCK_N"])  # noqa: E731
    _launch(
        "fwd", x.dtype, grid,
        x, skip_nhwc, packed, weight if bias is None else bias, y, pooled_arg,
        m, c0, c1, c_out, out_h, out_w, top, left,
        *_nhw_strides(x), *_nhw_strides(skip_nhwc), *_nhw_strides(y), *_nhw_strides(pooled_arg), *packed.stride(),
        HAS_SKIP=skip is not None, HAS_BIAS=bias is not None, RELU=bool(relu), POOL=bool(pool),
        INPUT_PRECISION=precision,
    )
    return y, pooled


def _pre_activation_grad(grad_y, grad_pooled, y, relu):
    """(g, mask_on_load): the gradient at the pre-activation, or grad_y with the ReLU mask still to apply."""
    if grad_pooled is None:
        return _nhwc(grad_y), relu
    grad_pooled = _nhwc(grad_pooled)
    batch, channels, pooled_h, pooled_w = grad_pooled.shape
    g = torch.empty_like(y)
    grad_y_arg = y if grad_y is None else _nhwc(grad_y)
    windows = batch * pooled_h * pooled_w
    grid = (triton.cdiv(windows, _POOL_GRAD_BLOCK["BLOCK_W"]), triton.cdiv(channels, _POOL_GRAD_BLOCK["BLOCK_C"]))
    _pool_relu_grad_kernel[grid](
        grad_y_arg, grad_pooled, y, g, windows, channels, pooled_h, pooled_w,
        *_nhw_strides(y), *_nhw_strides(grad_pooled),
        HAS_GRAD_Y=grad_y is not None, RELU=bool(relu), **_POOL_GRAD_BLOCK, num_warps=4,
    )
    return g, False


def _wgrad_splits(m: int, base_programs: int, device: torch.device) -> int:
    """How many M chunks the weight gradient is reduced over: enough programs to fill the GPU."""
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 2 * base_programs  # exercises the two-stage reduction in the interpreter
    return max(1, min(triton.cdiv(target, base_programs), triton.cdiv(m, 1024)))


def conv3x3_backward(
    grad_y: torch.Tensor | None,
    grad_pooled: torch.Tensor | None,
    x: torch.Tensor,
    skip: torch.Tensor | None,
    weight: torch.Tensor,
    y: torch.Tensor,
    relu: bool,
    pool: bool,
    needs_input_grad: tuple[bool, bool, bool, bool] = (True, True, True, True),
    allow_tf32: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``conv3x3_forward`` from its saved x, skip and y (no pre-activation, no indices).

    Args:
        grad_y: gradient of y (N, C_out, Ho, Wo), or None for zero.
        grad_pooled: gradient of pooled (N, C_out, Ho/2, Wo/2), or None (always None without pool).
        x, skip, weight: the forward's inputs; y: the forward's output (the ReLU mask and the pool
            argmax are recomputed from it).
        relu, pool: as in the forward.
        needs_input_grad: which of (x, skip, weight, bias) to compute; the others come back None.
        allow_tf32: as in the forward.
    Returns:
        (grad_x (N, C1, H, W), grad_skip (N, C0, Hs, Ws) zero outside the crop window,
        grad_weight (C_out, C_in, 3, 3), grad_bias (C_out,)), channels_last, each None when not needed.
    Raises:
        ValueError: neither gradient given, or tensors too large for int32 indexing (``check_index_range``).
    """
    if grad_y is None and grad_pooled is None:
        raise ValueError("conv3x3_backward needs grad_y or grad_pooled")
    check_index_range(x, skip, weight)
    with device_guard(x):
        return _backward(grad_y, grad_pooled, x, skip, weight, y, relu, pool, needs_input_grad, allow_tf32)


def _backward(grad_y, grad_pooled, x, skip, weight, y, relu, pool, needs_input_grad, allow_tf32):
    need_x, need_skip, need_weight, need_bias = needs_input_grad
    need_skip = need_skip and skip is not None
    if not pool:
        grad_pooled = None
    x = _nhwc(x)
    y = _nhwc(y)
    batch, c1, height, width = x.shape
    c_out = weight.shape[0]
    c0 = 0 if skip is None else skip.shape[1]
    c_in = c0 + c1
    skip_nhwc = x if skip is None else _nhwc(skip)
    top, left = crop_offset_of(skip, x)
    out_h, out_w = y.shape[2], y.shape[3]
    g, mask_on_load = _pre_activation_grad(grad_y, grad_pooled, y, relu)
    precision = _input_precision(x.dtype, allow_tf32)
    # the kernels read y (for the ReLU mask) with g's strides: both are NHWC of one shape
    g_strides = _nhw_strides(g)

    grad_x = grad_skip = grad_weight = grad_bias = None
    if need_x or need_skip:
        # the ReLU-masked gradient correlated with the flipped weights: the [9 * C_out, C_in] matrix
        packed = _weight_matrix(weight.permute(2, 3, 0, 1).reshape(9 * c_out, c_in), precision == "tf32")
        grad_x = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=torch.channels_last) if need_x else None
        grad_skip = (
            torch.empty(skip.shape, device=x.device, dtype=x.dtype, memory_format=torch.channels_last).zero_() if need_skip else None
        )
        c_lo = 0 if need_skip else c0
        c_hi = c_in if need_x else c0
        grad_x_arg = x if grad_x is None else grad_x
        grad_skip_arg = grad_x_arg if grad_skip is None else grad_skip
        m_in = batch * height * width
        grid = lambda meta: gemm_grid(m_in, c_hi - c_lo, meta["BLOCK_M"], meta["BLOCK_N"])  # noqa: E731
        _launch(
            "dgrad", x.dtype, grid,
            g, y, packed, grad_x_arg, grad_skip_arg,
            m_in, c0, c1, c_out, height, width, out_h, out_w, top, left, c_lo, c_hi,
            *g_strides, *_nhw_strides(grad_x_arg), *_nhw_strides(grad_skip_arg), *packed.stride(),
            HAS_SKIP=grad_skip is not None, MASK_RELU=mask_on_load, INPUT_PRECISION=precision,
        )
    if need_weight or need_bias:
        m = batch * out_h * out_w
        nominal_tile = 64
        base_programs = 9 * (triton.cdiv(c0, nominal_tile) + triton.cdiv(c1, nominal_tile)) * triton.cdiv(c_out, nominal_tile)
        splits = _wgrad_splits(m, base_programs, x.device)
        m_per_split = triton.cdiv(triton.cdiv(m, splits), 256) * 256
        splits = triton.cdiv(m, m_per_split)
        partial_w = torch.empty((splits, 9 * c_in, c_out), device=x.device, dtype=torch.float32)
        partial_b = torch.empty((splits, c_out), device=x.device, dtype=torch.float32)
        grid = lambda meta: (  # noqa: E731
            9 * (triton.cdiv(c0, meta["BLOCK_CI"]) + triton.cdiv(c1, meta["BLOCK_CI"])),
            triton.cdiv(c_out, meta["BLOCK_CO"]),
            splits,
        )
        _launch(
            "wgrad", x.dtype, grid,
            x, skip_nhwc, g, y, partial_w, partial_b,
            m, c0, c1, c_out, out_h, out_w, top, left, m_per_split,
            *_nhw_strides(x), *_nhw_strides(skip_nhwc), *g_strides,
            HAS_SKIP=skip is not None, MASK_RELU=mask_on_load, BIAS_GRAD=need_bias, INPUT_PRECISION=precision,
        )
        if need_weight:
            grad_weight = partial_w.sum(0).view(3, 3, c_in, c_out).permute(3, 2, 0, 1).to(weight.dtype).contiguous()
        if need_bias:
            grad_bias = partial_b.sum(0).to(weight.dtype)
    return (grad_x if need_x else None), grad_skip, grad_weight, grad_bias


# --------------------------------------------------------------------------------------------
# Ahead-of-time check: every autotune configuration, for each operand precision
# --------------------------------------------------------------------------------------------

# precision -> (element type of every tensor, INPUT_PRECISION of the dots)
_AOT_PRECISIONS = {"fp16": ("fp16", "ieee"), "bf16": ("bf16", "ieee"), "tf32": ("fp32", "tf32"), "fp32": ("fp32", "ieee")}
_AOT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _aot_signature(fn, element: str, fp32_pointers=()) -> dict:
    """Triton types of the kernel's arguments, read from its Python signature (which works for the
    interpreter's wrapper too): constexpr annotations, pointers named *_ptr, the rest int32."""
    signature = {}
    for name, param in inspect.signature(fn.fn).parameters.items():
        if "constexpr" in str(param.annotation):
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in fp32_pointers else f"*{element}"
        else:
            signature[name] = "i32"
    return signature


def _aligned_ints(signature: dict) -> tuple:
    # every layer but the first has channel counts (and so NHWC strides) that are multiples of 16
    return tuple(n for n, kind in signature.items() if kind == "i32" and n[0] in "sC")


def _register_configs() -> None:
    kernels = (
        # name, fn, tile names, tile lists, flag sets (first = the main one), fp32 pointers
        ("conv3x3_fwd", _conv3x3_fwd_kernel, _GEMM_NAMES, _GEMM_TILES,
         ({"HAS_SKIP": True, "HAS_BIAS": True, "RELU": True, "POOL": True},
          {"HAS_SKIP": False, "HAS_BIAS": True, "RELU": True, "POOL": False}), ()),
        ("conv3x3_dgrad", _conv3x3_dgrad_kernel, _GEMM_NAMES, _GEMM_TILES,
         ({"HAS_SKIP": True, "MASK_RELU": True}, {"HAS_SKIP": False, "MASK_RELU": False}), ()),
        ("conv3x3_wgrad", _conv3x3_wgrad_kernel, _WGRAD_NAMES, _WGRAD_TILES,
         ({"HAS_SKIP": True, "MASK_RELU": True, "BIAS_GRAD": True},
          {"HAS_SKIP": False, "MASK_RELU": False, "BIAS_GRAD": False}), ("grad_w_ptr", "grad_b_ptr")),
    )
    for precision, (element, input_precision) in _AOT_PRECISIONS.items():
        klass = operand_class(_AOT_DTYPES[element], input_precision)
        for name, fn, tile_names, tile_lists, flag_sets, fp32_pointers in kernels:
            tiles = tile_lists[klass]
            signature = _aot_signature(fn, element, fp32_pointers)
            aligned_ints = _aligned_ints(signature)
            # the weight matrix's unit stride, which Triton's runtime compiles as a constant
            unit_stride = {} if "swk" not in signature else {"swk": 1} if klass == "tf32" else {"swn": 1}
            signature.update(dict.fromkeys(unit_stride, "constexpr"))
            # sm_90's tf32 wgmma wants K-major operands; the weight gradient's are pixel-major
            copy_width = None if klass == "tf32" and name == "conv3x3_wgrad" else 16
            variants = [(tile, flag_sets[0]) for tile in tiles] + [(tiles[0], flags) for flags in flag_sets[1:]]
            for tile, flags in variants:
                constexprs = {**dict(zip(tile_names, tile[:3])), **flags, "INPUT_PRECISION": input_precision}
                register(KernelConfig(
                    kernel=name, fn=fn, signature=signature, constexprs={**constexprs, **unit_stride},
                    precision=precision, block_m=tile[0], num_warps=tile[3], num_stages=tile[4],
                    aligned_ints=tuple(n for n in aligned_ints if n not in unit_stride),
                    spill_budget=_WIDE_TILE_SPILL_BUDGET if klass == "16bit" and tile[0] >= 128 else DEFAULT_SPILL_BUDGET,
                    copy_width=copy_width,
                    label=" ".join(f"{k}={v}" for k, v in constexprs.items() if k != "INPUT_PRECISION")
                    + f" w={tile[3]} s={tile[4]}",
                ))
        if precision != "tf32":  # the pool-gradient pass has no dot: one entry per element type
            signature = _aot_signature(_pool_relu_grad_kernel, element)
            register(KernelConfig(
                kernel="conv3x3_pool_relu_grad", fn=_pool_relu_grad_kernel, signature=signature,
                constexprs={"HAS_GRAD_Y": True, "RELU": True, **_POOL_GRAD_BLOCK}, precision=precision,
                uses_dot=False, num_warps=4, num_stages=1, aligned_ints=_aligned_ints(signature),
            ))


_register_configs()

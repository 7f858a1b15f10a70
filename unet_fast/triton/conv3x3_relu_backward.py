"""The backward of the fused 3x3 conv (``unet_fast.triton.conv3x3_relu``): kernels, then launcher.

Shapes as in the forward's module. The gradient reaching the pre-activation is g = grad_y + routed
grad_pooled, zeroed where y <= 0: PyTorch's ``threshold_backward`` rule, which passes it where y is NaN.
Without pooling the ReLU mask is applied while loading grad_y; with pooling one elementwise pass
routes grad_pooled to the first maximum of each window of y (PyTorch's tie rule) and writes g.
dgrad is the full correlation of g with the flipped weights, written back split into skip's
gradient (at the crop offset, zero outside) and x's; wgrad and the bias gradient reduce over M in
deterministic two stages (per-split partial sums in fp32, then a sum over splits).

Launcher: ``conv3x3_relu_backward``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from unet_fast.triton.conv3x3_relu_tiles import (
    GEMM_TILES, POOL_GRAD_TILE, WGRAD_TILES, TunedKernel, check_index_range, gemm_grid, gradient_channels,
    narrower_source_channels, nhw_strides, nhwc, register_gemm_configs, register_pointwise_config,
)
from unet_fast.triton.runtime import check_crop, device_guard, weight_operand


@triton.jit
def _pool_relu_grad_kernel(
    grad_y_ptr, grad_pooled_ptr, y_ptr, g_ptr,
    WINDOWS, C, HP, WP,
    syn, syh, syw, spn, sph, spw,
    HAS_GRAD_Y: tl.constexpr, RELU: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """g = grad_y + grad_pooled routed to each window's first max of y, zeroed where y <= 0, per 2x2 window.

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
            g = tl.where(yq <= 0, 0.0, g)  # NaN passes, as in threshold_backward
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
            g = tl.where(tl.load(y_ptr + g_offsets, mask=load_mask, other=0.0) <= 0, 0.0, g)
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
            g = tl.where(tl.load(y_ptr + g_offsets, mask=g_mask, other=0.0) <= 0, 0.0, g)
        acc = tl.dot(a, g, acc, input_precision=INPUT_PRECISION)
        if BIAS_GRAD:
            bias_acc += tl.sum(g.to(tl.float32), axis=0)
    out_rows = tap * c_in + weight_row + offs_ci
    partial = grad_w_ptr + split.to(tl.int64) * (9 * c_in * C_OUT)
    tl.store(partial + out_rows[:, None] * C_OUT + offs_co[None, :], acc, mask=ci_mask[:, None] & co_mask[None, :])
    if BIAS_GRAD:
        tl.store(grad_b_ptr + split * C_OUT + offs_co, bias_acc, mask=co_mask & (pid_k == 0))


DGRAD = TunedKernel(_conv3x3_dgrad_kernel, GEMM_TILES,
                    ["M_IN", "C0", "C1", "C_OUT", "C_LO", "C_HI", "MASK_RELU", "INPUT_PRECISION"], family="gemm",
                    channel_block="BLOCK_N", channels=gradient_channels, doubled_operand=("MASK_RELU", "rows"))
WGRAD = TunedKernel(_conv3x3_wgrad_kernel, WGRAD_TILES,
                    ["M", "C0", "C1", "C_OUT", "M_PER_SPLIT", "MASK_RELU", "INPUT_PRECISION"], family="wgrad",
                    channel_block="BLOCK_CI", channels=narrower_source_channels, doubled_operand=("MASK_RELU", "cols"))


def _pre_activation_grad(grad_y, grad_pooled, y, relu):
    """(g, mask_on_load): the gradient at the pre-activation, or grad_y with the ReLU mask still to apply."""
    if grad_pooled is None:
        return nhwc(grad_y), relu
    grad_pooled = nhwc(grad_pooled)
    batch, channels, pooled_h, pooled_w = grad_pooled.shape
    g = torch.empty_like(y)
    grad_y_arg = y if grad_y is None else nhwc(grad_y)
    windows = batch * pooled_h * pooled_w
    if windows == 0:  # an empty batch
        return g, False
    grid = (triton.cdiv(windows, POOL_GRAD_TILE["BLOCK_W"]), triton.cdiv(channels, POOL_GRAD_TILE["BLOCK_C"]))
    _pool_relu_grad_kernel[grid](
        grad_y_arg, grad_pooled, y, g, windows, channels, pooled_h, pooled_w,
        *nhw_strides(y), *nhw_strides(grad_pooled),
        HAS_GRAD_Y=grad_y is not None, RELU=bool(relu), **POOL_GRAD_TILE,
    )
    return g, False


def _wgrad_splits(m: int, base_programs: int, device: torch.device) -> int:
    """How many M chunks the weight gradient is reduced over: enough programs to fill the GPU."""
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 2 * base_programs  # exercises the two-stage reduction in the interpreter
    return max(1, min(triton.cdiv(target, base_programs), triton.cdiv(m, 1024)))


def conv3x3_relu_backward(
    grad_y: torch.Tensor | None,
    grad_pooled: torch.Tensor | None,
    x: torch.Tensor,
    skip: torch.Tensor | None,
    weight: torch.Tensor,
    y: torch.Tensor,
    *,
    relu: bool,
    pool: bool,
    needs_input_grad: tuple[bool, bool, bool, bool] = (True, True, True, True),
    input_precision: str = "ieee",
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``conv3x3_forward`` from its saved x, skip and y (no pre-activation, no indices).

    Args:
        grad_y: gradient of y (N, C_out, Ho, Wo), or None for zero.
        grad_pooled: gradient of pooled (N, C_out, Ho/2, Wo/2), or None (always None without pool).
        x, skip, weight: the forward's inputs; y: the forward's output (the ReLU mask and the pool
            argmax are recomputed from it).
        relu, pool: as in the forward.
        needs_input_grad: which of (x, skip, weight, bias) to compute; the others come back None.
        input_precision: as in the forward.
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
        return _backward(grad_y, grad_pooled, x, skip, weight, y, relu, pool, needs_input_grad, input_precision)


def _backward(grad_y, grad_pooled, x, skip, weight, y, relu, pool, needs_input_grad, precision):
    need_x, need_skip, need_weight, need_bias = needs_input_grad
    need_skip = need_skip and skip is not None
    if not pool:
        grad_pooled = None
    x = nhwc(x)
    y = nhwc(y)
    batch, c1, height, width = x.shape
    c_out = weight.shape[0]
    c0 = 0 if skip is None else skip.shape[1]
    c_in = c0 + c1
    skip_nhwc = x if skip is None else nhwc(skip)
    top, left = (0, 0) if skip is None else check_crop(skip.shape, x.shape)
    out_h, out_w = y.shape[2], y.shape[3]
    g, mask_on_load = _pre_activation_grad(grad_y, grad_pooled, y, relu)
    # the kernels read y (for the ReLU mask) with g's strides: both are NHWC of one shape
    g_strides = nhw_strides(g)

    grad_x = grad_skip = grad_weight = grad_bias = None
    if (need_x or need_skip) and batch == 0:  # empty gradients of the empty inputs
        grad_x = torch.empty_like(x) if need_x else None
        grad_skip = torch.empty_like(skip_nhwc) if need_skip else None
    elif need_x or need_skip:
        # the ReLU-masked gradient correlated with the flipped weights: the [9 * C_out, C_in] matrix
        packed = weight_operand(weight.permute(2, 3, 0, 1).reshape(9 * c_out, c_in), precision)
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
        DGRAD.launch(
            grid,
            g, y, packed, grad_x_arg, grad_skip_arg,
            m_in, c0, c1, c_out, height, width, out_h, out_w, top, left, c_lo, c_hi,
            *g_strides, *nhw_strides(grad_x_arg), *nhw_strides(grad_skip_arg), *packed.stride(),
            HAS_SKIP=grad_skip is not None, MASK_RELU=mask_on_load, dtype=x.dtype, INPUT_PRECISION=precision,
        )
    if (need_weight or need_bias) and batch == 0:  # no pixels: zero gradients, no split to divide by
        grad_weight = torch.zeros_like(weight) if need_weight else None
        grad_bias = weight.new_zeros(c_out) if need_bias else None
    elif need_weight or need_bias:
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
        WGRAD.launch(
            grid,
            x, skip_nhwc, g, y, partial_w, partial_b,
            m, c0, c1, c_out, out_h, out_w, top, left, m_per_split,
            *nhw_strides(x), *nhw_strides(skip_nhwc), *g_strides,
            HAS_SKIP=skip is not None, MASK_RELU=mask_on_load, BIAS_GRAD=need_bias, dtype=x.dtype,
            INPUT_PRECISION=precision,
        )
        if need_weight:
            grad_weight = partial_w.sum(0).view(3, 3, c_in, c_out).permute(3, 2, 0, 1).to(weight.dtype).contiguous()
        if need_bias:
            grad_bias = partial_b.sum(0).to(weight.dtype)
    return (grad_x if need_x else None), grad_skip, grad_weight, grad_bias


register_gemm_configs("conv3x3_dgrad", DGRAD, (
    {"HAS_SKIP": True, "MASK_RELU": True}, {"HAS_SKIP": False, "MASK_RELU": False},
))
register_gemm_configs("conv3x3_wgrad", WGRAD, (
    {"HAS_SKIP": True, "MASK_RELU": True, "BIAS_GRAD": True},
    {"HAS_SKIP": False, "MASK_RELU": False, "BIAS_GRAD": False},
), fp32_pointers=("grad_w_ptr", "grad_b_ptr"))
register_pointwise_config("conv3x3_pool_relu_grad", _pool_relu_grad_kernel, {"HAS_GRAD_Y": True, "RELU": True},
                          POOL_GRAD_TILE)

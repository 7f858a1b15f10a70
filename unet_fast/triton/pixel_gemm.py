"""Per-pixel GEMMs over 4-d feature maps: the kernels behind the 2x2 up-convolution and the 1x1 conv.

Both ops are matrix products whose rows are the pixels (n, h, w) of a grid of size H x W. A 4-d
tensor t (N, C, S*H, S*W) with scale S in {1, 2} is read (or written) as the [N*H*W, S*S*C] matrix

    view[m, q] = t[n, c, S*h + i, S*w + j]     with m = (n, h, w) and q = (i*S + j)*C + c,

so the 2x2 stride-2 transposed conv is ``view_2(y) = view_1(x) @ W_packed + bias`` with W_packed of
shape [C_in, 4*C_out], and the 1x1 conv is ``view_1(y) = view_1(x) @ W^T + bias``. The address of
``view[m, q]`` splits into a row part and a column part, so any strides (NCHW or channels_last)
work without copies: the up-convolution's scatter into the 2x larger output is just its column
part. Accumulation is in fp32.

- ``pixel_gemm_kernel``: out_view[M, Q] = a_view[M, K] @ B[K, Q] (+ bias[q % C_out]); B is a strided
  2-d matrix (the packed weight or its transpose). Forward and input-gradient of both ops.
- ``pixel_gemm_wgrad_kernel``: partial[s, R, Q] = a_view[M_s, R]^T @ g_view[M_s, Q] over the s-th
  chunk of rows; the launcher sums the chunks (deterministic, no atomics). Weight gradients.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from unet_fast.triton.aot import KernelConfig, kernel_signature, register
from unet_fast.triton.runtime import check_pixels, device_guard, pixel_rows, weight_operand


@triton.jit
def _row_offsets(m, H, W, stride_n, stride_h, stride_w, SCALE: tl.constexpr):
    # Address part of view[m, :] that depends only on the pixel m = (n, h, w).
    hw = H * W
    n = m // hw
    rem = m % hw
    h = rem // W
    w = rem % W
    return n.to(tl.int64) * stride_n + (SCALE * h).to(tl.int64) * stride_h + (SCALE * w).to(tl.int64) * stride_w


@triton.jit
def _col_offsets(q, C, stride_c, stride_h, stride_w, SCALE: tl.constexpr):
    # Address part of view[:, q] for q = (i*SCALE + j)*C + c: channel c at sub-pixel (i, j).
    sub = q // C
    c = q % C
    i = sub // SCALE
    j = sub % SCALE
    return c.to(tl.int64) * stride_c + i.to(tl.int64) * stride_h + j.to(tl.int64) * stride_w


@triton.jit
def pixel_gemm_kernel(
    a_ptr, b_ptr, bias_ptr, out_ptr,
    M, H, W, K, Q,
    A_C, a_sn, a_sc, a_sh, a_sw,
    b_sk, b_sq,
    OUT_C, o_sn, o_sc, o_sh, o_sw,
    A_SCALE: tl.constexpr, OUT_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_q = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_m = offs_m < M
    mask_q = offs_q < Q
    a_rows = _row_offsets(offs_m, H, W, a_sn, a_sh, a_sw, A_SCALE)

    acc = tl.zeros((BLOCK_M, BLOCK_Q), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a_cols = _col_offsets(offs_k, A_C, a_sc, a_sh, a_sw, A_SCALE)
        a = tl.load(a_ptr + a_rows[:, None] + a_cols[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b_offsets = offs_k.to(tl.int64)[:, None] * b_sk + offs_q.to(tl.int64)[None, :] * b_sq
        b = tl.load(b_ptr + b_offsets, mask=mask_k[:, None] & mask_q[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_q % OUT_C, mask=mask_q, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    out_rows = _row_offsets(offs_m, H, W, o_sn, o_sh, o_sw, OUT_SCALE)
    out_cols = _col_offsets(offs_q, OUT_C, o_sc, o_sh, o_sw, OUT_SCALE)
    tl.store(
        out_ptr + out_rows[:, None] + out_cols[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_q[None, :],
    )


@triton.jit
def pixel_gemm_wgrad_kernel(
    a_ptr, g_ptr, partial_ptr,
    M, H, W, R, Q, ROWS_PER_SPLIT,
    A_C, a_sn, a_sc, a_sh, a_sw,
    G_C, g_sn, g_sc, g_sh, g_sw,
    A_SCALE: tl.constexpr, G_SCALE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_q = tl.program_id(1)
    split = tl.program_id(2)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_r = offs_r < R
    mask_q = offs_q < Q
    a_cols = _col_offsets(offs_r, A_C, a_sc, a_sh, a_sw, A_SCALE)
    g_cols = _col_offsets(offs_q, G_C, g_sc, g_sh, g_sw, G_SCALE)

    acc = tl.zeros((BLOCK_R, BLOCK_Q), dtype=tl.float32)
    row_start = split * ROWS_PER_SPLIT
    row_end = tl.minimum(row_start + ROWS_PER_SPLIT, M)
    for m0 in range(row_start, row_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < row_end
        a_rows = _row_offsets(offs_m, H, W, a_sn, a_sh, a_sw, A_SCALE)
        g_rows = _row_offsets(offs_m, H, W, g_sn, g_sh, g_sw, G_SCALE)
        a_t = tl.load(a_ptr + a_cols[:, None] + a_rows[None, :], mask=mask_r[:, None] & mask_m[None, :], other=0.0)
        g = tl.load(g_ptr + g_rows[:, None] + g_cols[None, :], mask=mask_m[:, None] & mask_q[None, :], other=0.0)
        acc = tl.dot(a_t, g, acc, input_precision=INPUT_PRECISION)

    out = partial_ptr + split.to(tl.int64) * R * Q + offs_r.to(tl.int64)[:, None] * Q + offs_q[None, :]
    tl.store(out, acc, mask=mask_r[:, None] & mask_q[None, :])


# Launch configurations. Fixed tiles keep the ahead-of-time check exhaustive. With tensor-core dots
# (fp16, bf16, tf32) the 128-row tile serves large maps whose channels are contiguous and whose
# depth and column count are multiples of 16; the 64-row tile serves the deep, small maps and
# every other layout, where the 128-row tile's element-wise addresses spill registers. IEEE fp32
# dots run on FMA units with both operands in registers and take a smaller tile.
# Tiles in the style of every kernel of the package: BLOCK_* sizes, num_warps, num_stages.
GEMM_TILES = {
    "large": dict(BLOCK_M=128, BLOCK_Q=64, BLOCK_K=32, num_warps=4, num_stages=3),
    "small": dict(BLOCK_M=64, BLOCK_Q=64, BLOCK_K=32, num_warps=4, num_stages=3),
    "fp32": dict(BLOCK_M=64, BLOCK_Q=32, BLOCK_K=16, num_warps=4, num_stages=3),
}
WGRAD_TILES = {
    "tensor-core": dict(BLOCK_R=64, BLOCK_Q=64, BLOCK_M=32, num_warps=4, num_stages=3),
    "fp32": dict(BLOCK_R=64, BLOCK_Q=32, BLOCK_M=32, num_warps=4, num_stages=3),
}


def _blocks(tile: dict) -> dict:
    return {k: v for k, v in tile.items() if k.startswith("BLOCK")}


def _on_fma_units(dtype: torch.dtype, input_precision: str) -> bool:
    return dtype == torch.float32 and input_precision != "tf32"


def gemm_tile_name(rows: int, depth: int, cols: int, channels_contiguous: bool, dtype: torch.dtype,
                   input_precision: str) -> str:
    """The ``GEMM_TILES`` entry for an [rows, depth] @ [depth, cols] product."""
    if _on_fma_units(dtype, input_precision):
        return "fp32"
    aligned = depth % 16 == 0 and cols % 16 == 0
    return "large" if rows >= 8192 and channels_contiguous and aligned else "small"


# Split the M reduction of the weight gradient so that about this many programs run at once.
WGRAD_TARGET_PROGRAMS = 512


def pixel_gemm(a: torch.Tensor, a_scale: int, b: torch.Tensor, out: torch.Tensor, out_scale: int,
               bias: torch.Tensor | None, input_precision: str) -> torch.Tensor:
    """out_view = a_view @ b (+ bias[q % C_out]), written into ``out`` in place.

    a: (N, C_a, a_scale*H, a_scale*W); b: [a_scale**2 * C_a, out_scale**2 * C_out], any strides;
    out: (N, C_out, out_scale*H, out_scale*W); bias: (C_out,) or None. Returns ``out``.
    """
    b = weight_operand(b, input_precision)
    height, width = a.shape[2] // a_scale, a.shape[3] // a_scale
    rows = pixel_rows(a, a_scale)
    depth, cols = a.shape[1] * a_scale**2, out.shape[1] * out_scale**2
    check_pixels(rows)
    if rows == 0:  # an empty batch: nothing to write
        return out
    channels_contiguous = a.stride(1) == 1 and out.stride(1) == 1
    tile = GEMM_TILES[gemm_tile_name(rows, depth, cols, channels_contiguous, a.dtype, input_precision)]
    grid = (triton.cdiv(rows, tile["BLOCK_M"]), triton.cdiv(cols, tile["BLOCK_Q"]))
    with device_guard(a):
        pixel_gemm_kernel[grid](
            a, b, out if bias is None else bias, out,
            rows, height, width, depth, cols,
            a.shape[1], *a.stride(), b.stride(0), b.stride(1), out.shape[1], *out.stride(),
            A_SCALE=a_scale, OUT_SCALE=out_scale, HAS_BIAS=bias is not None, INPUT_PRECISION=input_precision,
            **tile,
        )
    return out


def pixel_gemm_wgrad(a: torch.Tensor, a_scale: int, g: torch.Tensor, g_scale: int, input_precision: str) -> torch.Tensor:
    """a_view^T @ g_view in fp32: a (N, C_a, a_scale*H, a_scale*W), g (N, C_g, g_scale*H, g_scale*W)
    -> [a_scale**2 * C_a, g_scale**2 * C_g]. The reduction over the N*H*W pixels is split into chunks
    whose partial sums are added afterwards, in a fixed order (deterministic)."""
    height, width = a.shape[2] // a_scale, a.shape[3] // a_scale
    rows = pixel_rows(a, a_scale)
    check_pixels(rows)
    out_rows, out_cols = a.shape[1] * a_scale**2, g.shape[1] * g_scale**2
    if rows == 0:  # an empty batch: no pixels, a zero gradient (and no zero-sized split to divide by)
        return torch.zeros((out_rows, out_cols), device=a.device, dtype=torch.float32)
    tile = WGRAD_TILES["fp32" if _on_fma_units(a.dtype, input_precision) else "tensor-core"]
    tiles = triton.cdiv(out_rows, tile["BLOCK_R"]) * triton.cdiv(out_cols, tile["BLOCK_Q"])
    splits = max(1, min(triton.cdiv(rows, 4 * tile["BLOCK_M"]), triton.cdiv(WGRAD_TARGET_PROGRAMS, tiles)))
    rows_per_split = triton.cdiv(triton.cdiv(rows, splits), tile["BLOCK_M"]) * tile["BLOCK_M"]
    splits = triton.cdiv(rows, rows_per_split)
    partial = torch.empty((splits, out_rows, out_cols), device=a.device, dtype=torch.float32)
    grid = (triton.cdiv(out_rows, tile["BLOCK_R"]), triton.cdiv(out_cols, tile["BLOCK_Q"]), splits)
    with device_guard(a):
        pixel_gemm_wgrad_kernel[grid](
            a, g, partial, rows, height, width, out_rows, out_cols, rows_per_split,
            a.shape[1], *a.stride(), g.shape[1], *g.stride(),
            A_SCALE=a_scale, G_SCALE=g_scale, INPUT_PRECISION=input_precision,
            **tile,
        )
    return partial.sum(0)


# operand precision -> element type of the tensors
_ELEMENT = {"fp32": "fp32", "tf32": "fp32", "fp16": "fp16", "bf16": "bf16"}
_A_SIDE = ("K", "A_C", "a_sn", "a_sh", "a_sw")
_OUT_SIDE = ("Q", "OUT_C", "o_sn", "o_sh", "o_sw")
# How the ops call the kernels on channels_last tensors, as Triton's runtime specializes them:
# (label, A_SCALE, OUT_SCALE, HAS_BIAS, integer arguments equal to 1 (compiled as constants),
# integer arguments that are multiples of 16, whether every operand row is 16-byte aligned). The
# 1x1 conv's num_classes side is not aligned.
_GEMM_CALLS = (
    ("up-conv forward", 1, 2, True, ("a_sc", "o_sc", "b_sq"), (*_A_SIDE, *_OUT_SIDE, "b_sk"), True),
    ("up-conv input grad", 2, 1, False, ("a_sc", "o_sc", "b_sk"), (*_A_SIDE, *_OUT_SIDE, "b_sq"), True),
    ("1x1 forward", 1, 1, True, ("a_sc", "o_sc", "b_sk"), (*_A_SIDE, "b_sq"), True),
    ("1x1 input grad", 1, 1, False, ("a_sc", "o_sc", "b_sq"), (*_OUT_SIDE, "b_sk"), False),
)
_WGRAD_CALLS = (
    ("up-conv weight grad", 1, 2, ("a_sc", "g_sc"),
     ("R", "Q", "A_C", "a_sn", "a_sh", "a_sw", "G_C", "g_sn", "g_sh", "g_sw"), True),
    ("1x1 weight grad", 1, 1, ("a_sc", "g_sc"), ("Q", "G_C", "g_sn", "g_sh", "g_sw"), False),
)


def _specialized(fn, element: str, unit_ints, aligned, constexprs: dict, fp32_pointers=()) -> dict:
    """KernelConfig fields for one specialization: ints equal to 1 become constexprs."""
    signature = kernel_signature(fn, element, fp32_pointers)
    signature.update(dict.fromkeys(unit_ints, "constexpr"))
    return dict(signature=signature, constexprs={**constexprs, **{n: 1 for n in unit_ints}}, aligned_ints=tuple(aligned))


def _gemm_tiles_of(precision: str, aligned: tuple) -> tuple:
    """The GEMM_TILES entries a call may run with (``gemm_tile_name``), given its 16-aligned ints."""
    if precision == "fp32":
        return ("fp32",)
    return ("large", "small") if "K" in aligned and "Q" in aligned else ("small",)


def _register_configs() -> None:
    for precision, element in _ELEMENT.items():
        dot = "tf32" if precision == "tf32" else "ieee"
        for label, a_scale, out_scale, has_bias, unit_ints, aligned, operands_aligned in _GEMM_CALLS:
            flags = dict(A_SCALE=a_scale, OUT_SCALE=out_scale, HAS_BIAS=has_bias, INPUT_PRECISION=dot)
            copy_width = 16 if operands_aligned else None
            if precision == "tf32":  # the launcher makes b K-major: b_sk = 1, b_sq = K
                unit_ints = tuple(n for n in unit_ints if n != "b_sq") + ("b_sk",)
                aligned = tuple(n for n in aligned if n != "b_sk") + (("b_sq",) if "K" in aligned else ())
            # the tiles the call may run with, then any other layout (e.g. NCHW) with runtime strides
            variants = [(name, f"{label} {name}", unit_ints, aligned) for name in _gemm_tiles_of(precision, aligned)]
            any_strides = _gemm_tiles_of(precision, ())[0]
            variants.append((any_strides, f"{label} {any_strides}, any strides", (), ()))
            for tile_name, config_label, units, aligned_ints in variants:
                tile = GEMM_TILES[tile_name]
                register(KernelConfig(
                    kernel="pixel_gemm", fn=pixel_gemm_kernel, precision=precision, block_m=tile["BLOCK_M"],
                    num_warps=tile["num_warps"], num_stages=tile["num_stages"],
                    copy_width=copy_width if units else None, label=config_label,
                    **_specialized(pixel_gemm_kernel, element, units, aligned_ints, {**flags, **_blocks(tile)}),
                ))
        tile = WGRAD_TILES["fp32" if precision == "fp32" else "tensor-core"]
        for label, a_scale, g_scale, unit_ints, aligned, operands_aligned in _WGRAD_CALLS:
            flags = dict(A_SCALE=a_scale, G_SCALE=g_scale, INPUT_PRECISION=dot, **_blocks(tile))
            register(KernelConfig(
                kernel="pixel_gemm_wgrad", fn=pixel_gemm_wgrad_kernel, precision=precision,
                block_m=tile["BLOCK_R"], num_warps=tile["num_warps"], num_stages=tile["num_stages"],
                # sm_90's tf32 wgmma takes the pixel-major operands of this product in 4-byte copies
                copy_width=16 if operands_aligned and precision != "tf32" else None, label=label,
                **_specialized(pixel_gemm_wgrad_kernel, element, unit_ints, aligned, flags,
                               fp32_pointers=("partial_ptr",)),
            ))


_register_configs()

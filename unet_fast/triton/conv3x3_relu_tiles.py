"""Launch tiles of the fused 3x3 conv kernels (``conv3x3_relu`` and ``conv3x3_relu_backward``; how
one is picked is ``unet_fast.triton.autotune``'s), the launch grid and the int32 index-range check,
and the kernels' ahead-of-time registration.

Tiles: one named list per operand class (``operand_class``), the first being the default (for the
device's shared memory and the layer's input channels: ``autotune.default_tile``); at most
4 warps, since Triton convs are reported to miscompile at 8 (inductor caps its conv template at
4). Each list holds the tiles that keep their registers (``unet_fast.tools.aot_check`` compiles
them and reads the spills).
"""
from __future__ import annotations

import torch
import triton

from unet_fast.triton.aot import DEFAULT_SPILL_BUDGET, KernelConfig, kernel_signature, register, register_variant_builder
from unet_fast.triton.autotune import TunedKernel, operand_class
from unet_fast.triton.runtime import INT32_MAX, check_pixels, pixel_rows


def _tiles(names, *rows):
    """Tile dicts from rows of (three block sizes in ``names``' order, num_warps, num_stages)."""
    return [{**dict(zip(names, row[:3])), "num_warps": row[3], "num_stages": row[4]} for row in rows]


GEMM_BLOCKS = ("BLOCK_M", "BLOCK_N", "BLOCK_K")  # forward and dgrad: pixels x channels x depth
WGRAD_BLOCKS = ("BLOCK_CI", "BLOCK_CO", "BLOCK_M")  # wgrad: input channels x output channels x pixels
GEMM_TILES = {
    "16bit": _tiles(GEMM_BLOCKS, (128, 128, 64, 4, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4),
                    (128, 64, 16, 4, 4)),
    # a 128x128 fp32-operand tile spills hundreds of bytes at 4 warps
    "tf32": _tiles(GEMM_BLOCKS, (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4), (128, 64, 16, 4, 4)),
    # IEEE fp32 dots run on FMA units with both operands in registers: small tiles
    "ieee": _tiles(GEMM_BLOCKS, (64, 64, 16, 4, 3), (64, 32, 32, 4, 3), (32, 64, 32, 4, 3)),
}
# a 32-row channel tile serves the 1-channel first layer
WGRAD_TILES = {
    "16bit": _tiles(WGRAD_BLOCKS, (128, 128, 64, 4, 3), (64, 128, 64, 4, 3), (128, 64, 64, 4, 3), (64, 64, 64, 4, 4),
                    (32, 64, 64, 4, 3)),
    "tf32": _tiles(WGRAD_BLOCKS, (64, 128, 32, 4, 3), (128, 64, 32, 4, 3), (64, 64, 32, 4, 4), (32, 64, 32, 4, 3)),
    "ieee": _tiles(WGRAD_BLOCKS, (64, 64, 16, 4, 3), (64, 32, 32, 4, 3), (32, 64, 32, 4, 3)),
}
# (windows, channels) per program of the pool-gradient pass: 8 elements per thread, 128-byte rows
POOL_GRAD_TILE = {"BLOCK_W": 16, "BLOCK_C": 64, "num_warps": 4, "num_stages": 1}
# 16-bit 128-row tiles hold a 128-row fp32 accumulator in 4 warps: the reshape of the pool epilogue
# and sm_80's mma.sync fragments spill up to about 200 B per thread (to L1), which these tiles are
# worth; every other configuration keeps to the default budget.
_WIDE_TILE_SPILL_BUDGET = 256


def narrower_source_channels(named: dict) -> int:
    """Input channels per block of the forward and weight-gradient kernels, which tile x's (C1) and
    skip's (C0, with HAS_SKIP) channels separately: the narrower source's count."""
    return min(named["C0"], named["C1"]) if named["HAS_SKIP"] else named["C1"]


def gradient_channels(named: dict) -> int:
    """Input-gradient channels of the dgrad kernel, its GEMM's columns: [C_LO, C_HI)."""
    return named["C_HI"] - named["C_LO"]


def gemm_grid(rows: int, cols: int, block_m: int, block_n: int) -> tuple[int, int]:
    """Launch grid of the forward/dgrad GEMM: row (pixel) tiles on axis 0, whose limit is 2**31 - 1
    (axes 1 and 2 allow only 65,535 blocks), column (channel) tiles on axis 1."""
    return triton.cdiv(rows, block_m), triton.cdiv(cols, block_n)


def nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def nhw_strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(2), t.stride(3)


def check_index_range(x: torch.Tensor, skip: torch.Tensor | None, weight: torch.Tensor) -> None:
    """ValueError unless the kernels' int32 indexing covers these tensors: at most 2**31 - 1 elements
    per image in x, skip and y (and in the weight), at most ``MAX_PIXELS`` pixels in x. Reads shapes
    only (works on meta tensors)."""
    batch, _, height, width = x.shape
    c_out = weight.shape[0]
    per_image = {
        "x": x[0].numel() if batch else 0,
        "the output (weight's C_out x (H - 2) x (W - 2))": c_out * max(height - 2, 0) * max(width - 2, 0),
        "weight": weight.numel(),
    }
    if skip is not None:
        per_image["skip"] = skip[0].numel() if batch else 0
    for name, count in per_image.items():
        if count > INT32_MAX:
            what = "elements" if name == "weight" else "elements per image"
            raise ValueError(
                f"{name} has {count} {what}; the Triton conv3x3 kernels index with int32 and take at most "
                f"{INT32_MAX}: split the batch or the image into tiles, or use backend='torch'"
            )
    check_pixels(pixel_rows(x))


def fits_index_range(x: torch.Tensor, skip: torch.Tensor | None, weight: torch.Tensor) -> bool:
    """Whether ``check_index_range`` passes."""
    try:
        check_index_range(x, skip, weight)
    except ValueError:
        return False
    return True


# --- ahead-of-time check: every tile, for each operand precision -------------------------------------

# precision -> (element type of every tensor, INPUT_PRECISION of the dots)
_AOT_PRECISIONS = {"fp16": ("fp16", "ieee"), "bf16": ("bf16", "ieee"), "tf32": ("fp32", "tf32"), "fp32": ("fp32", "ieee")}
_AOT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _aligned_ints(signature: dict) -> tuple:
    # every layer but the first has channel counts (and so NHWC strides) that are multiples of 16
    return tuple(n for n, kind in signature.items() if kind == "i32" and n[0] in "sC")


def gemm_configs(name: str, tuned: TunedKernel, precision: str, variants, fp32_pointers=(), ones=(),
                 unaligned=()) -> list[KernelConfig]:
    """KernelConfigs of a GEMM kernel in one operand ``precision`` for ``variants``, a list of (tile,
    flags); ``ones``: integer arguments the launch passes as 1 (compiled as constants),
    ``unaligned``: integer arguments it passes that are not multiples of 16."""
    element, input_precision = _AOT_PRECISIONS[precision]
    klass = operand_class(_AOT_DTYPES[element], input_precision)
    signature = kernel_signature(tuned.kernel, element, fp32_pointers)
    # the weight matrix's unit stride, which Triton's runtime compiles as a constant
    unit_stride = {} if "swk" not in signature else {"swk": 1} if klass == "tf32" else {"swn": 1}
    constants = {**unit_stride, **dict.fromkeys(ones, 1)}
    signature.update(dict.fromkeys(constants, "constexpr"))
    aligned_ints = tuple(n for n in _aligned_ints(signature) if n not in unaligned)
    # sm_90's tf32 wgmma wants K-major operands; the weight gradient's are pixel-major
    copy_width = None if klass == "tf32" and name == "conv3x3_wgrad" else 16
    if ones or unaligned:  # a layer whose rows are not all 16-byte aligned (the 1-channel first layer)
        copy_width = None
    configs = []
    for tile, flags in variants:
        blocks = {k: v for k, v in tile.items() if k.startswith("BLOCK")}
        rows = next(iter(blocks.values()))  # the dot's M tile: pixels, or wgrad's input channels
        constexprs = {**blocks, **flags, "INPUT_PRECISION": input_precision}
        special = " ".join(f"{n}=1" for n in ones if n not in unit_stride)
        configs.append(KernelConfig(
            kernel=name, fn=tuned.kernel, signature=signature, constexprs={**constexprs, **constants},
            precision=precision, block_m=rows,
            num_warps=tile["num_warps"], num_stages=tile["num_stages"], aligned_ints=aligned_ints,
            spill_budget=_WIDE_TILE_SPILL_BUDGET if klass == "16bit" and rows >= 128 else DEFAULT_SPILL_BUDGET,
            copy_width=copy_width,
            label=" ".join(f"{k}={v}" for k, v in constexprs.items() if k != "INPUT_PRECISION")
            + f" w={tile['num_warps']} s={tile['num_stages']}" + (f" {special}" if special else ""),
        ))
    return configs


def register_gemm_configs(name: str, tuned: TunedKernel, flag_sets: tuple, fp32_pointers=()) -> None:
    """Registers every tile of a GEMM kernel with the main flag set (the first) and the default tile
    with each other flag set, for each operand precision; and the builder ``aot_check --variants
    launched`` calls with the flag sets the model launches (``unet_fast.tools.launch_trace``)."""
    for precision, (element, input_precision) in _AOT_PRECISIONS.items():
        tiles = tuned.tiles[operand_class(_AOT_DTYPES[element], input_precision)]
        variants = [(tile, flag_sets[0]) for tile in tiles] + [(tiles[0], flags) for flags in flag_sets[1:]]
        register(*gemm_configs(name, tuned, precision, variants, fp32_pointers))

    def launched(precision: str, flags: dict, ones: tuple, unaligned: tuple, tiles: list[dict]) -> list[KernelConfig]:
        return gemm_configs(name, tuned, precision, [(tile, flags) for tile in tiles], fp32_pointers, ones, unaligned)

    register_variant_builder(tuned.name, launched)


def register_pointwise_config(name: str, kernel, constexprs: dict, tile: dict) -> None:
    """Registers a kernel without a dot (one entry per element type)."""
    for precision in ("fp16", "bf16", "fp32"):
        signature = kernel_signature(kernel, precision)
        register(KernelConfig(
            kernel=name, fn=kernel, signature=signature,
            constexprs={**constexprs, **{k: v for k, v in tile.items() if k.startswith("BLOCK")}},
            precision=precision, uses_dot=False, num_warps=tile["num_warps"], num_stages=tile["num_stages"],
            aligned_ints=_aligned_ints(signature),
        ))

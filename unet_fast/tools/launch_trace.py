"""Which Triton kernel variants the paper's model launches, traced from the model itself.

``launched_variants(dtype)`` runs ``unet_fast.UNet`` (the paper's widths: base 64, depth 5, one
input channel) forward and backward on the CPU with backend "triton" and every Triton launch
recorded instead of run (no kernel executes, so the trace takes seconds). Each record is a
``LaunchSpec``: the kernel, its operand class, the constexpr flags (tile sizes left out), the
channel count its default tile is chosen for (``TunedKernel.tile_channels``), and the integer
arguments equal to 1 (Triton compiles those as constants: the first layer's C_in = 1 and
its unit strides) or not a multiple of 16 (compiled without the divisibility hint). The flags and
these classes do not depend on the batch, and the input is 188x188, whose first-layer strides have
the same divisibility by 16 as 572x572's.

``triton_kernel_count()`` turns the variants into the number of kernels the first-contact GPU run
compiles: each variant once per dtype checked (bf16, fp16, fp32 traced; tf32 launches the fp32
variants with the other INPUT_PRECISION), plus, for the bf16 benchmark steps, every other tile of
each autotuned variant.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch

TRACE_SIZE = 188
PAPER = {"in_channels": 1, "num_classes": 2, "base_channels": 64, "depth": 5}
_TILE_NAMES = ("num_warps", "num_stages")


@dataclass(frozen=True)
class LaunchSpec:
    kernel: str
    klass: str | None  # operand class of an autotuned kernel ("16bit", "tf32", "ieee"); None otherwise
    flags: tuple  # (name, value) of the constexpr arguments, tile sizes left out
    ones: tuple  # integer arguments equal to 1
    unaligned: tuple  # integer arguments that are not multiples of 16
    channels: int | None = None  # what the default tile is chosen for (autotuned kernels)

    def flag_dict(self) -> dict:
        return dict(self.flags)


def _spec(kernel_name: str, klass, arg_names, args, constexprs: dict, channels: int | None = None) -> LaunchSpec:
    named = dict(zip(arg_names, args))
    ints = {k: v for k, v in named.items() if isinstance(v, int) and not isinstance(v, bool)}
    flags = tuple(sorted((k, v) for k, v in constexprs.items() if not k.startswith("BLOCK") and k not in _TILE_NAMES))
    return LaunchSpec(kernel_name, klass, flags, tuple(sorted(k for k, v in ints.items() if v == 1)),
                      tuple(sorted(k for k, v in ints.items() if v != 1 and v % 16)), channels)


@contextlib.contextmanager
def recording(specs: set):
    """Inside, Triton launches of this package are recorded into ``specs`` and not run, and the ops
    route to Triton on CPU tensors (TRITON_INTERPRET=1 at run time)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    from unet_fast.triton.autotune import TunedKernel, kernel_name, operand_class

    def tuned_launch(self, grid, *args, dtype, INPUT_PRECISION, **constexprs):
        klass = operand_class(dtype, INPUT_PRECISION)
        named = self.named_arguments(args, INPUT_PRECISION=INPUT_PRECISION, **constexprs)
        specs.add(_spec(self.name, klass, getattr(self.kernel, "arg_names", ()), args,
                        dict(constexprs, INPUT_PRECISION=INPUT_PRECISION), self.tile_channels(named)))

    def raw_run(self, *args, grid=None, warmup=False, **kwargs):
        specs.add(_spec(kernel_name(self), None, self.arg_names, args, kwargs))

    saved = {(cls, name): getattr(cls, name) for cls, name in
             ((TunedKernel, "launch"), (JITFunction, "run"), (InterpretedFunction, "run"))}
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    TunedKernel.launch, JITFunction.run, InterpretedFunction.run = tuned_launch, raw_run, raw_run
    try:
        yield specs
    finally:
        for (cls, name), value in saved.items():
            setattr(cls, name, value)
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


@functools.lru_cache(maxsize=None)  # the model's code does not change within a process
def launched_variants(dtype: str) -> frozenset[LaunchSpec]:
    """The variants one training step of the paper's model launches in "bf16" (autocast), "fp16"
    (autocast) or "fp32"."""
    from unet_fast.model import UNet

    specs: set = set()
    with torch.random.fork_rng(devices=[]), recording(specs):
        torch.manual_seed(0)
        model = UNet(**PAPER, backend="triton", dropout=0.0)
        x = torch.randn(1, PAPER["in_channels"], TRACE_SIZE, TRACE_SIZE)
        autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
        cast = torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext()
        with cast:
            logits = model(x)
        logits.float().sum().backward()
    return frozenset(specs)


def _flag_variant(spec: LaunchSpec) -> tuple:
    """What Triton specializes a kernel on, but for the tile: the spec without its channel count."""
    return spec.kernel, spec.klass, spec.flags, spec.ones, spec.unaligned


def _tile_compiles(specs, klass: str | None = None, every_tile: bool = False) -> set:
    """The distinct (variant, tile) pairs ``specs`` compile: their default tiles, or ``every_tile``
    they may be tuned over (no shared-memory limit: every tile fits an H100/H200). ``klass`` replaces
    the operand class of autotuned specs (tf32 launches the fp32 variants)."""
    from unet_fast.triton.autotune import tuned_kernel

    compiles = set()
    for spec in specs:
        if not spec.klass:
            compiles.add((*_flag_variant(spec), None))
            continue
        suitable = tuned_kernel(spec.kernel).suitable_tiles(klass or spec.klass, None, spec.channels, dict(spec.flags))
        compiles |= {(*_flag_variant(spec), klass, tuple(sorted(t.items()))) for t in suitable[:None if every_tile else 1]}
    return compiles


def triton_kernel_count() -> dict:
    """Kernels the first-contact GPU run compiles (see the module docstring), with the breakdown."""
    variants = {dtype: launched_variants(dtype) for dtype in ("bf16", "fp16", "fp32")}
    defaults = {"bf16": _tile_compiles(variants["bf16"]), "fp16": _tile_compiles(variants["fp16"]),
                "fp32": _tile_compiles(variants["fp32"]), "tf32": _tile_compiles(variants["fp32"], "tf32")}
    default_tiles = sum(map(len, defaults.values()))
    tuned_extra = len(_tile_compiles(variants["bf16"], every_tile=True)) - len(defaults["bf16"])
    return {"variants": len({_flag_variant(spec) for found in variants.values() for spec in found}),
            "per_dtype": {dtype: len({_flag_variant(spec) for spec in found}) for dtype, found in variants.items()},
            "default_tile_compiles": default_tiles, "autotune_extra_compiles": tuned_extra,
            "gpu_compiles": default_tiles + tuned_extra, "traced_input": TRACE_SIZE}

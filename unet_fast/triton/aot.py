"""The registry of Triton kernel configurations that ``unet_fast.tools.aot_check`` compiles.

Every kernel module registers each configuration its autotuner may pick, with the tensor-core
precision of its ``tl.dot`` (if any), so that CI compiles all of them for sm_80 and sm_90 without
a GPU and checks the PTX for the expected ``mma`` / ``wgmma`` instructions.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
# Spilled bytes per thread tolerated by default: a few registers' worth, which compiler versions move around.
DEFAULT_SPILL_BUDGET = 16


@dataclass(frozen=True)
class KernelConfig:
    """One compile-time instance of a ``@triton.jit`` kernel.

    Attributes:
        kernel: the name shown in the table, e.g. "conv3x3_fwd".
        fn: the ``@triton.jit`` function.
        signature: every argument in order, name -> Triton type ("*fp16", "*fp32", "i32", "fp32")
            or "constexpr".
        constexprs: the values of the "constexpr" arguments.
        precision: operand precision of the kernel's ``tl.dot``: "fp32" (IEEE, no tensor cores),
            "tf32", "fp16" or "bf16".
        uses_dot: whether the kernel has a ``tl.dot``; without one no tensor core is expected.
        block_m: rows of the dot's M tile; on sm_90 a dot with block_m >= 64 and a warp count that is
            a multiple of 4 must compile to ``wgmma``.
        num_warps, num_stages: launch options, as in ``triton.Config``.
        aligned_ints: integer arguments to compile as multiples of 16, as Triton's runtime
            specializes them when they are (channel counts and NHWC strides of 16-aligned layers):
            that is what lets the pipeliner use wide asynchronous copies and more stages. (Integer
            arguments equal to 1, such as a channels_last channel stride, the runtime turns into
            constants: register those as "constexpr" with the value 1.)
        spill_budget: bytes per thread of register spills (stack) the compiled kernel may use;
            more than ``DEFAULT_SPILL_BUDGET`` only where a configuration is worth its spills.
        copy_width: when set, the bytes that every ``cp.async`` of the kernel must move (16 where
            every operand row is 16-byte aligned); None for no expectation.
    """

    kernel: str
    fn: object
    signature: dict
    constexprs: dict
    precision: str
    uses_dot: bool = True
    block_m: int | None = None
    num_warps: int = 4
    num_stages: int = 3
    aligned_ints: tuple = ()
    spill_budget: int = DEFAULT_SPILL_BUDGET
    copy_width: int | None = None
    label: str = field(default="", compare=False)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        missing = [name for name, kind in self.signature.items() if kind == "constexpr" and name not in self.constexprs]
        if missing:
            raise ValueError(f"{self.kernel}: constexpr arguments without a value: {missing}")
        not_ints = [name for name in self.aligned_ints if self.signature.get(name) not in ("i32", "i64")]
        if not_ints:
            raise ValueError(f"{self.kernel}: aligned_ints must name integer arguments, not {not_ints}")

    def describe(self) -> str:
        if self.label:
            return self.label
        blocks = " ".join(f"{k}={v}" for k, v in self.constexprs.items() if k.startswith("BLOCK"))
        return f"{blocks} w={self.num_warps} s={self.num_stages}".strip()


_REGISTRY: list[KernelConfig] = []


def register(*configs: KernelConfig) -> None:
    """Adds configurations to the ahead-of-time check (duplicates are ignored)."""
    for config in configs:
        if config not in _REGISTRY:
            _REGISTRY.append(config)


def registered() -> list[KernelConfig]:
    return list(_REGISTRY)


# Triton function name -> builder(precision, flags, ones, unaligned, tiles) -> [KernelConfig]: the
# configurations of one launched variant (``aot_check --variants launched``)
_VARIANT_BUILDERS: dict = {}


def register_variant_builder(kernel_name: str, builder) -> None:
    _VARIANT_BUILDERS[kernel_name] = builder


def variant_builder(kernel_name: str):
    """The builder registered for a Triton function name, or None."""
    return _VARIANT_BUILDERS.get(kernel_name)


def kernel_signature(fn, element: str, fp32_pointers=()) -> dict:
    """Triton types of a kernel's arguments, read from its Python signature (which works for the
    interpreter's wrapper too): constexpr annotations, pointers named *_ptr (to ``element``, or fp32
    for ``fp32_pointers``), the rest int32. Every kernel module builds its specs with it."""
    signature = {}
    for name, param in inspect.signature(fn.fn).parameters.items():
        if "constexpr" in str(param.annotation):
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in fp32_pointers else f"*{element}"
        else:
            signature[name] = "i32"
    return signature

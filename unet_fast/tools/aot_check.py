"""Compiles every registered Triton kernel configuration ahead of time, without a GPU.

    python -m unet_fast.tools.aot_check --arch 80 --arch 90 [--one-per-kernel] [--jobs N]
    python -m unet_fast.tools.aot_check --variants launched --arch 80 --arch 90 --arch 86 --arch 89 [--default-tiles]

``--variants launched`` compiles the flag combinations the paper's model launches, traced from the
model (``unet_fast.tools.launch_trace``: encoder conv2 with pool and no skip, decoder conv1 with skip,
weight gradients without skip, the first layer's C_in = 1, ...), in every dtype, with the tiles the
runtime chooses from (``unet_fast.triton.autotune.suitable_tiles``, for the arch's shared memory and
the layer's channels): every one it may tune for sm_80 and sm_90, and for sm_86 and sm_89 (99 KB per
block) the default (``--default-tiles``: the default on every arch); the other kernels (per-pixel
GEMMs, pool gradient) keep their registered configurations. Each row names its combination.

For each configuration and architecture it prints whether it compiled, the tensor-core
instructions found in the PTX, the widths of its asynchronous global-to-shared copies, the shared
memory, and the registers and register-spill stack of the cubin (read with the ``cuobjdump`` that
ships with Triton). It exits non-zero if a configuration fails to compile or breaks an expectation:
- shared memory within the architecture's limit;
- fp16/bf16/tf32 dots on tensor-core ``mma``, on sm_90 ``wgmma`` wherever BLOCK_M >= 64 and the warp
  count is a multiple of 4; fp32 dots without TF32 on none;
- register spills (stack bytes) within the configuration's ``spill_budget`` (16 B unless declared);
- with ``copy_width`` declared, every ``cp.async`` of that width: a narrower copy means the
  pipeliner lost an operand's contiguity.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

# Largest dynamic shared memory per block (bytes) that each architecture allows.
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
TENSOR_CORE_PATTERN = re.compile(r"\b(wgmma\.mma_async|mma\.sync)\b")
# cp.async.{ca,cg}.shared.global[.L2::...] [dst], [src], bytes(, src-size)?; captures the bytes
ASYNC_COPY_PATTERN = re.compile(
    r"\bcp\.async\.c[ag]\.shared\.global(?:\.\S+)?\s+\[[^\]]*\],\s*\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)"
)
RESOURCE_PATTERN = re.compile(r"REG:(\d+)\s+STACK:(\d+)")


@dataclass
class Compiled:
    """What the check reads from one compilation."""

    instructions: frozenset[str]
    shared_bytes: int
    copy_widths: frozenset[int]
    registers: int | None = None  # None where cuobjdump is unavailable
    stack_bytes: int | None = None


@dataclass
class CheckResult:
    kernel: str
    config: str
    precision: str
    arch: int
    compiled: bool
    instructions: tuple[str, ...] = ()
    shared_bytes: int | None = None
    copy_widths: tuple[int, ...] = ()
    registers: int | None = None
    stack_bytes: int | None = None
    problem: str | None = None


def _divisibility_attrs(config) -> dict:
    # torch allocations are 16-byte aligned and the runtime specializes on that, and on integers
    # that are multiples of 16: compile with the same knowledge.
    return {
        (i,): [["tt.divisibility", 16]]
        for i, (name, kind) in enumerate(config.signature.items())
        if kind.startswith("*") or name in config.aligned_ints
    }


def compile_config(config, arch: int):
    """Compiles one configuration for ``sm_<arch>``; returns Triton's compiled kernel (asm: ptx, cubin)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(
        fn=config.fn, signature=config.signature, constexprs=config.constexprs,
        attrs=_divisibility_attrs(config),
    )
    return triton.compile(
        source, target=GPUTarget("cuda", arch, 32),
        options={"num_warps": config.num_warps, "num_stages": config.num_stages},
    )


def cuobjdump_path() -> str | None:
    """The ``cuobjdump`` that ships with Triton, or None."""
    try:
        from triton import knobs

        return knobs.nvidia.cuobjdump.path
    except (ImportError, AttributeError, RuntimeError):
        return None


def resource_usage(cubin: bytes) -> tuple[int, int] | None:
    """(registers per thread, stack bytes per thread) of a one-kernel cubin, from ``cuobjdump
    -res-usage``; None where Triton ships no cuobjdump. Stack in a Triton kernel is register spills."""
    tool = cuobjdump_path()
    if tool is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        output = subprocess.run([tool, "-res-usage", file.name], capture_output=True, text=True, check=True).stdout
    match = RESOURCE_PATTERN.search(output)
    return (int(match[1]), int(match[2])) if match else None


def inspect_compiled(kernel) -> Compiled:
    """The facts the expectations read from a compiled kernel (no GPU needed)."""
    ptx = kernel.asm["ptx"]
    usage = resource_usage(kernel.asm["cubin"]) or (None, None)
    return Compiled(
        instructions=frozenset(TENSOR_CORE_PATTERN.findall(ptx)),
        shared_bytes=kernel.metadata.shared,
        copy_widths=frozenset(int(width, 0) for width in ASYNC_COPY_PATTERN.findall(ptx)),
        registers=usage[0], stack_bytes=usage[1],
    )


def expectation_problem(config, arch: int, compiled: Compiled) -> str | None:
    """Why a compiled configuration breaks its expectation, or None."""
    limit = SHARED_MEMORY_LIMIT.get(arch)
    if limit is not None and compiled.shared_bytes > limit:
        return f"uses {compiled.shared_bytes} B of shared memory, sm_{arch} allows {limit}"
    if compiled.stack_bytes is not None and compiled.stack_bytes > config.spill_budget:
        return f"spills {compiled.stack_bytes} B of registers per thread (budget {config.spill_budget} B)"
    narrow = sorted(w for w in compiled.copy_widths if config.copy_width and w != config.copy_width)
    if config.copy_width and (narrow or not compiled.copy_widths):
        found = f"{narrow} B copies" if narrow else "no cp.async"
        return f"operands should reach shared memory in {config.copy_width} B cp.async, found {found}"
    if not config.uses_dot:
        return None
    instructions = compiled.instructions
    if config.precision == "fp32":
        return f"fp32 dot compiled to tensor-core {sorted(instructions)}" if instructions else None
    if not instructions:
        return f"{config.precision} dot compiled without tensor-core mma"
    wants_wgmma = arch >= 90 and (config.block_m or 0) >= 64 and config.num_warps % 4 == 0
    if wants_wgmma and "wgmma.mma_async" not in instructions:
        return f"{config.precision} dot with BLOCK_M={config.block_m} compiled to {sorted(instructions)}, not wgmma"
    return None


def _check_one(config, arch: int) -> CheckResult:
    result = CheckResult(config.kernel, config.describe(), config.precision, arch, compiled=False)
    try:
        compiled = inspect_compiled(compile_config(config, arch))
    except Exception as error:  # a compile failure of any kind is a finding, not a crash
        message = str(error).strip()
        result.problem = f"compile failed: {type(error).__name__}: {message.splitlines()[0][:200] if message else ''}"
    else:
        result.compiled = True
        result.instructions = tuple(sorted(compiled.instructions))
        result.shared_bytes, result.copy_widths = compiled.shared_bytes, tuple(sorted(compiled.copy_widths))
        result.registers, result.stack_bytes = compiled.registers, compiled.stack_bytes
        result.problem = expectation_problem(config, arch, compiled)
    return result


# Work for forked compile workers: they inherit the configurations (kernels do not pickle).
_PENDING: list = []


def _check_pending(index: int) -> CheckResult:
    return _check_one(*_PENDING[index])


def check(configs, archs, jobs: int = 1) -> list[CheckResult]:
    """Compiles every configuration for every arch; ``jobs`` > 1 compiles in forked processes."""
    return check_work([(config, arch) for config in configs for arch in archs], jobs)


# architectures whose 99 KB per block only the default tile is checked against (launched variants)
DEFAULT_TILE_ARCHS = (86, 89)


def launched_work(archs, default_tiles_only: bool = False) -> list:
    """(config, arch) pairs of the variants the paper's model launches (see the module docstring);
    ``default_tiles_only``: on every arch only the default tile (what runs untuned and under capture)."""
    from unet_fast.tools.launch_trace import launched_variants
    from unet_fast.triton.aot import registered, variant_builder
    from unet_fast.triton.autotune import tuned_kernel

    traced = {precision: launched_variants(precision) for precision in ("bf16", "fp16", "fp32")}
    traced["tf32"] = traced["fp32"]  # fp32 layers launch the same variants with INPUT_PRECISION tf32
    work, seen = [], set()
    for precision, specs in traced.items():
        klass = {"bf16": "16bit", "fp16": "16bit", "tf32": "tf32", "fp32": "ieee"}[precision]
        for spec in sorted(specs, key=lambda spec: (spec.kernel, spec.flags)):
            builder = variant_builder(spec.kernel)
            if builder is None or spec.klass is None:
                continue
            flags = {k: v for k, v in spec.flags if k != "INPUT_PRECISION"}
            tuned = tuned_kernel(spec.kernel)
            for arch in archs:  # the runtime's own choice for this arch's limit: its default, or all it may tune
                suitable = tuned.suitable_tiles(klass, SHARED_MEMORY_LIMIT[arch], spec.channels, flags)
                chosen = suitable[:1] if default_tiles_only or arch in DEFAULT_TILE_ARCHS else suitable
                for config in builder(precision, flags, spec.ones, spec.unaligned, chosen):
                    identity = (config.kernel, config.precision, tuple(sorted(config.constexprs.items())),
                                config.aligned_ints, config.num_warps, config.num_stages, arch)
                    if identity not in seen:
                        seen.add(identity)
                        work.append((config, arch))
    built = {config.fn for config, _ in work}
    work += [(config, arch) for config in registered() if config.fn not in built for arch in archs
             if arch not in DEFAULT_TILE_ARCHS]
    return work


def check_work(work, jobs: int = 1) -> list[CheckResult]:
    """Compiles each (configuration, arch) pair; ``jobs`` > 1 compiles in forked processes."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("the ahead-of-time check compiles kernels; unset TRITON_INTERPRET to run it")
    if jobs <= 1 or len(work) <= 1:
        return [_check_one(config, arch) for config, arch in work]
    _PENDING[:] = work
    try:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_check_pending, range(len(work))))
    finally:
        _PENDING.clear()


def one_per_kernel(configs) -> list:
    """The first configuration of each (kernel, precision): every kernel and dtype, fewer compiles."""
    seen, chosen = set(), []
    for config in configs:
        if (config.kernel, config.precision) not in seen:
            seen.add((config.kernel, config.precision))
            chosen.append(config)
    return chosen


def format_table(results: list[CheckResult]) -> str:
    header = ("kernel", "config", "dtype", "arch", "compiled", "tensor-core instructions", "cp.async B",
              "shared B", "regs", "spill B", "problem")

    def number(value):
        return "-" if value is None else str(value)

    rows = [
        (r.kernel, r.config, r.precision, f"sm_{r.arch}", "yes" if r.compiled else "NO",
         ", ".join(r.instructions) or "-", ",".join(map(str, r.copy_widths)) or "-", number(r.shared_bytes),
         number(r.registers), number(r.stack_bytes), r.problem or "")
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, action="append", help="compute capability, e.g. 80 or 90 (repeatable)")
    parser.add_argument("--kernel", action="append", help="only these kernels (repeatable)")
    parser.add_argument("--one-per-kernel", action="store_true",
                        help="only the first configuration of each kernel and dtype")
    parser.add_argument("--default-tiles", action="store_true",
                        help="with --variants launched: only the default tile of each variant on every arch")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile processes")
    parser.add_argument("--variants", choices=("registered", "launched"), default="registered",
                        help="registered: every registered configuration; launched: the flag combinations the "
                        "paper's model launches, traced from it (see above)")
    args = parser.parse_args(argv)
    archs = args.arch or [80, 90]
    if args.default_tiles and args.variants != "launched":
        print("--default-tiles goes with --variants launched (registered configurations have no default)",
              file=sys.stderr)
        return 2

    import triton

    from unet_fast.triton import conv3x3_relu, conv3x3_relu_backward, pixel_gemm  # noqa: F401  (they register)
    from unet_fast.triton.aot import registered

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("aot_check compiles kernels for real: unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    unknown = [a for a in archs if a not in SHARED_MEMORY_LIMIT]
    if unknown:
        print(f"--arch: unknown architecture(s) {unknown}; known: {sorted(SHARED_MEMORY_LIMIT)}", file=sys.stderr)
        return 2
    if args.variants == "launched":
        work = launched_work(archs, default_tiles_only=args.default_tiles)
    else:
        work = [(config, arch) for config in registered() for arch in archs]
    work = [(c, a) for c, a in work if not args.kernel or c.kernel in args.kernel]
    if args.one_per_kernel:
        firsts = set(map(id, one_per_kernel([c for c, _ in work])))
        work = [(c, a) for c, a in work if id(c) in firsts]
    print(f"triton {triton.__version__}; architectures: {', '.join(f'sm_{a}' for a in archs)}; variants: {args.variants}")
    if not work:
        print("no Triton kernel configurations are registered: nothing to check")
        return 0
    results = check_work(work, jobs=args.jobs)
    print(format_table(results))
    failures = [r for r in results if r.problem]
    print(f"{len(results) - len(failures)} of {len(results)} compilations meet their expectations")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

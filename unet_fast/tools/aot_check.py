"""Compiles every registered Triton kernel configuration ahead of time, without a GPU.

    python -m unet_fast.tools.aot_check --arch 80 --arch 90 [--one-per-kernel] [--jobs N]

For each configuration and architecture it prints whether it compiled, the tensor-core
instructions found in the PTX and the shared memory used, and exits non-zero if a configuration
fails to compile, exceeds the architecture's shared memory, or breaks its expectation:
fp16/bf16/tf32 dots must use tensor-core ``mma``, on sm_90 ``wgmma`` wherever BLOCK_M >= 64 and
the warp count is a multiple of 4, and fp32 dots without TF32 must use none.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

# Largest dynamic shared memory per block (bytes) that each architecture allows.
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
TENSOR_CORE_PATTERN = re.compile(r"\b(wgmma\.mma_async|mma\.sync)\b")


@dataclass
class CheckResult:
    kernel: str
    config: str
    precision: str
    arch: int
    compiled: bool
    instructions: tuple[str, ...] = ()
    shared_bytes: int | None = None
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
    """Compiles one configuration for ``sm_<arch>``; returns (ptx, shared memory bytes)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(
        fn=config.fn, signature=config.signature, constexprs=config.constexprs,
        attrs=_divisibility_attrs(config),
    )
    compiled = triton.compile(
        source, target=GPUTarget("cuda", arch, 32),
        options={"num_warps": config.num_warps, "num_stages": config.num_stages},
    )
    return compiled.asm["ptx"], compiled.metadata.shared


def expectation_problem(config, arch: int, instructions: set[str], shared: int) -> str | None:
    """Why a compiled configuration breaks its expectation, or None."""
    limit = SHARED_MEMORY_LIMIT.get(arch)
    if limit is not None and shared > limit:
        return f"uses {shared} B of shared memory, sm_{arch} allows {limit}"
    if not config.uses_dot:
        return None
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
        ptx, shared = compile_config(config, arch)
    except Exception as error:  # a compile failure of any kind is a finding, not a crash
        message = str(error).strip()
        result.problem = f"compile failed: {type(error).__name__}: {message.splitlines()[0][:200] if message else ''}"
    else:
        found = set(TENSOR_CORE_PATTERN.findall(ptx))
        result.compiled, result.instructions, result.shared_bytes = True, tuple(sorted(found)), shared
        result.problem = expectation_problem(config, arch, found, shared)
    return result


# Work for forked compile workers: they inherit the configurations (kernels do not pickle).
_PENDING: list = []


def _check_pending(index: int) -> CheckResult:
    return _check_one(*_PENDING[index])


def check(configs, archs, jobs: int = 1) -> list[CheckResult]:
    """Compiles every configuration for every arch; ``jobs`` > 1 compiles in forked processes."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("the ahead-of-time check compiles kernels; unset TRITON_INTERPRET to run it")
    work = [(config, arch) for config in configs for arch in archs]
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
    header = ("kernel", "config", "dtype", "arch", "compiled", "tensor-core instructions", "shared B", "problem")
    rows = [
        (r.kernel, r.config, r.precision, f"sm_{r.arch}", "yes" if r.compiled else "NO",
         ", ".join(r.instructions) or "-", "-" if r.shared_bytes is None else str(r.shared_bytes), r.problem or "")
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
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile processes")
    args = parser.parse_args(argv)
    archs = args.arch or [80, 90]

    import triton

    import unet_fast.triton  # noqa: F401  (kernel modules register their configurations)
    from unet_fast.triton.aot import registered

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("aot_check compiles kernels for real: unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    configs = [c for c in registered() if not args.kernel or c.kernel in args.kernel]
    if args.one_per_kernel:
        configs = one_per_kernel(configs)
    print(f"triton {triton.__version__}; architectures: {', '.join(f'sm_{a}' for a in archs)}")
    if not configs:
        print("no Triton kernel configurations are registered: nothing to check")
        return 0
    results = check(configs, archs, jobs=args.jobs)
    print(format_table(results))
    failures = [r for r in results if r.problem]
    print(f"{len(results) - len(failures)} of {len(results)} compilations meet their expectations")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

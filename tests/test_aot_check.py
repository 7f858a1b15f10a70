"""The ahead-of-time Triton check: its expectations, and real compiles for sm_80 and sm_90.

Compiling needs real @triton.jit functions, so compiles run in a subprocess without the
TRITON_INTERPRET=1 that this test session sets on machines without a GPU.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from unet_fast.tools import aot_check  # noqa: E402
from unet_fast.triton.aot import DEFAULT_SPILL_BUDGET, KernelConfig  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _compile_in_subprocess(script: str):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_compiles_and_finds_the_tensor_core_instructions():
    found = _compile_in_subprocess(
        """
import dataclasses, json
from tests import aot_sample_kernel as sample
from unet_fast.tools import aot_check
results = aot_check.check([sample.config("fp16", "fp16"), sample.config("fp32", "fp32")], archs=[80, 90])
print(json.dumps([dataclasses.asdict(r) for r in results]))
"""
    )
    by_key = {(r["precision"], r["arch"]): r for r in found}
    assert all(r["compiled"] and r["problem"] is None for r in found), found
    assert by_key["fp16", 80]["instructions"] == ["mma.sync"]
    assert by_key["fp16", 90]["instructions"] == ["wgmma.mma_async"]
    assert by_key["fp32", 90]["instructions"] == []
    assert 0 < by_key["fp16", 90]["shared_bytes"] <= aot_check.SHARED_MEMORY_LIMIT[90]
    # the cubin's resources, read with Triton's cuobjdump: a 64x64 tile at 4 warps fits its registers
    for result in found:
        assert 0 < result["registers"] <= 255 and result["stack_bytes"] == 0, result
    # the pipelined loads of the 16-byte aligned rows are 16-byte asynchronous copies
    assert by_key["fp16", 80]["copy_widths"] == [16] and by_key["fp16", 90]["copy_widths"] == [16]


def test_a_compile_failure_is_reported_not_raised():
    (result,) = _compile_in_subprocess(
        """
import dataclasses, json
from tests import aot_sample_kernel as sample
from unet_fast.tools import aot_check
from unet_fast.triton.aot import KernelConfig
broken = KernelConfig("tile_matmul", sample.tile_matmul, {"a": "*fp16"}, {}, precision="fp16")
print(json.dumps([dataclasses.asdict(r) for r in aot_check.check([broken], archs=[90])]))
"""
    )
    assert not result["compiled"] and result["problem"].startswith("compile failed")


def _config(precision, block_m=64, num_warps=4, **fields):
    return KernelConfig("k", None, {"BLOCK_M": "constexpr"}, {"BLOCK_M": block_m}, precision=precision,
                        block_m=block_m, num_warps=num_warps, **fields)


def _compiled(instructions=(), shared=1024, copy_widths=(16,), stack=0):
    return aot_check.Compiled(frozenset(instructions), shared, frozenset(copy_widths), registers=128, stack_bytes=stack)


def test_expectations():
    fp16 = _config("fp16")
    problem = aot_check.expectation_problem
    assert "without tensor-core" in problem(fp16, 80, _compiled())
    assert problem(fp16, 80, _compiled({"mma.sync"})) is None
    assert "not wgmma" in problem(fp16, 90, _compiled({"mma.sync"}))
    assert problem(_config("bf16", block_m=32), 90, _compiled({"mma.sync"})) is None
    assert problem(_config("bf16", num_warps=2), 90, _compiled({"mma.sync"})) is None
    assert "fp32 dot compiled to tensor-core" in problem(_config("fp32"), 80, _compiled({"mma.sync"}))
    assert "shared memory" in problem(fp16, 80, _compiled({"mma.sync"}, shared=10**6))


def test_register_spill_expectation():
    problem = aot_check.expectation_problem
    within = _compiled({"mma.sync"}, stack=DEFAULT_SPILL_BUDGET)
    assert problem(_config("fp16"), 80, within) is None
    over = _compiled({"mma.sync"}, stack=DEFAULT_SPILL_BUDGET + 8)
    assert "spills 24 B of registers per thread (budget 16 B)" in problem(_config("fp16"), 80, over)
    assert problem(_config("fp16", spill_budget=256), 80, over) is None
    # no cuobjdump: nothing to check
    unmeasured = aot_check.Compiled(frozenset({"mma.sync"}), 1024, frozenset())
    assert problem(_config("fp16"), 80, unmeasured) is None


def test_copy_width_expectation():
    problem = aot_check.expectation_problem
    wide = _config("fp16", copy_width=16)
    assert problem(wide, 80, _compiled({"mma.sync"}, copy_widths=(16,))) is None
    assert "found [4] B copies" in problem(wide, 90, _compiled({"wgmma.mma_async"}, copy_widths=(4, 16)))
    assert "found no cp.async" in problem(wide, 80, _compiled({"mma.sync"}, copy_widths=()))
    assert problem(_config("fp16"), 90, _compiled({"wgmma.mma_async"}, copy_widths=(4,))) is None  # no expectation


def test_registry_rejects_bad_configs():
    with pytest.raises(ValueError, match="constexpr arguments without a value"):
        KernelConfig("k", None, {"BLOCK_M": "constexpr"}, {}, precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        KernelConfig("k", None, {}, {}, precision="int8")
    with pytest.raises(ValueError, match="aligned_ints must name integer arguments"):
        KernelConfig("k", None, {"x": "*fp16"}, {}, precision="fp16", aligned_ints=("x",))


def test_refuses_to_run_in_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="unset TRITON_INTERPRET"):
        aot_check.check([_config("fp16")], archs=[90])


def test_one_per_kernel_keeps_every_kernel_and_precision():
    configs = [_config("fp16", block_m=64), _config("fp16", block_m=128), _config("bf16"), _config("fp32")]
    assert aot_check.one_per_kernel(configs) == [configs[0], configs[2], configs[3]]

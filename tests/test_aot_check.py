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


# --- the variants the paper's model launches ---------------------------------------------------------

@pytest.fixture(scope="module")
def launched():
    from unet_fast.tools.launch_trace import launched_variants

    return launched_variants("bf16")


def _flag_sets(specs, kernel):
    return {tuple((k, v) for k, v in spec.flags if k != "INPUT_PRECISION") for spec in specs if spec.kernel == kernel}


def test_the_trace_finds_the_flag_combinations_of_the_models_blocks(launched):
    # from the U-Net's structure: encoder conv1 (no skip, no pool), encoder conv2 (pool above the
    # bottom), decoder conv1 (skip), decoder conv2 and the bottom conv2 (neither)
    forward = {(dict(f)["HAS_SKIP"], dict(f)["POOL"]) for f in _flag_sets(launched, "_conv3x3_fwd_kernel")}
    assert forward == {(False, False), (False, True), (True, False)}
    assert {dict(f)["HAS_SKIP"] for f in _flag_sets(launched, "_conv3x3_wgrad_kernel")} == {False, True}
    first_layer = [s for s in launched if s.kernel == "_conv3x3_fwd_kernel" and "C1" in s.ones]
    assert first_layer and all("C0" not in s.ones for s in first_layer)  # C_in = 1, no skip channels
    assert all(spec.klass == "16bit" for spec in launched if spec.klass)


def test_launched_variants_include_combinations_the_registered_table_missed(launched):
    from unet_fast.triton.aot import registered

    registered_forward = {(c.constexprs["HAS_SKIP"], c.constexprs["POOL"]) for c in registered() if c.kernel == "conv3x3_fwd"}
    launched_forward = {(dict(f)["HAS_SKIP"], dict(f)["POOL"]) for f in _flag_sets(launched, "_conv3x3_fwd_kernel")}
    assert launched_forward - registered_forward  # e.g. encoder conv2: pool without skip


def test_launched_work_compiles_every_tile_on_sm80_and_the_default_on_sm86(launched):
    from unet_fast.triton.autotune import tuned_kernel

    work = aot_check.launched_work([80, 86])
    forward = [(c, a) for c, a in work if c.kernel == "conv3x3_fwd" and c.precision == "bf16"]
    tiles = tuned_kernel("_conv3x3_fwd_kernel").tiles["16bit"]
    by_arch = {arch: [c for c, a in forward if a == arch] for arch in (80, 86)}
    assert len(by_arch[80]) >= len(tiles) * 3 and len(by_arch[86]) >= 3
    assert all("HAS_SKIP" in c.describe() and "POOL" in c.describe() for c in by_arch[80])  # rows name their flags
    # the first layer's variant compiles C1 (= 1) as a constant, on sm_86 with the narrow K block its
    # 9 * C_in = 9 deep GEMM wants; the wider layers with the first tile that fits 99 KB
    first_layer = [c for c in by_arch[86] if c.constexprs.get("C1") == 1]
    assert any(c.constexprs.get("C1") == 1 for c in by_arch[80])
    assert first_layer and {c.constexprs["BLOCK_K"] for c in first_layer} == {16}
    assert {c.constexprs["BLOCK_K"] for c in by_arch[86] if c.constexprs.get("C1") != 1} == {64}
    wgrad_first = [c for c, a in work if c.kernel == "conv3x3_wgrad" and a == 86 and c.constexprs.get("C1") == 1]
    assert wgrad_first and {c.constexprs["BLOCK_CI"] for c in wgrad_first} == {32}


def test_default_tiles_only_keeps_the_runtimes_default_on_every_arch():
    from unet_fast.triton.autotune import tuned_kernel

    work = aot_check.launched_work([80, 90], default_tiles_only=True)
    first_layer = [(c, a) for c, a in work if c.kernel == "conv3x3_fwd" and c.precision == "bf16"
                   and c.constexprs.get("C1") == 1]
    assert len(first_layer) == 2  # one variant, one tile, two archs
    expected = tuned_kernel("_conv3x3_fwd_kernel").default_tile("16bit", aot_check.SHARED_MEMORY_LIMIT[80], 1)
    assert all(c.constexprs["BLOCK_K"] == expected["BLOCK_K"] == 16 for c, _ in first_layer)
    assert len(work) < len(aot_check.launched_work([80, 90]))


def test_default_tiles_needs_the_launched_variants(capsys):
    assert aot_check.main(["--default-tiles"]) == 2
    assert "--default-tiles goes with --variants launched" in capsys.readouterr().err


def test_the_trace_records_the_channels_the_runtime_chooses_the_default_for(launched):
    first_layer = {s.channels for s in launched if "C1" in s.ones}
    assert first_layer == {1}
    # the paper's other layers have 64 or more channels per source
    assert all(s.channels >= 64 for s in launched if s.klass and "C1" not in s.ones)


@pytest.mark.skipif(bool(os.environ.get("UNET_FAST_SKIP_HEAVY")), reason="heavy: two conv compiles, run once, in the main suite")
def test_the_first_layers_default_tiles_keep_their_registers_on_sm86():
    # the first layer (C_in = 1) took the 128-wide default tiles, which spilled on sm_86 (bf16
    # forward 392 B per thread, tf32 weight gradient 56 B); its default now suits K = 9 * C_in
    found = _compile_in_subprocess(
        """
import dataclasses, json
from unet_fast.tools import aot_check
work = [(c, a) for c, a in aot_check.launched_work([86]) if c.constexprs.get("C1") == 1
        and (c.kernel, c.precision) in {("conv3x3_fwd", "bf16"), ("conv3x3_wgrad", "tf32")}]
print(json.dumps([dataclasses.asdict(r) for r in aot_check.check_work(work)]))
"""
    )
    assert {(r["kernel"], r["precision"]) for r in found} == {("conv3x3_fwd", "bf16"), ("conv3x3_wgrad", "tf32")}
    for result in found:
        assert result["compiled"] and result["problem"] is None, result
        assert result["stack_bytes"] <= DEFAULT_SPILL_BUDGET and result["shared_bytes"] <= aot_check.SHARED_MEMORY_LIMIT[86]

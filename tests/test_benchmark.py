"""The benchmark suite: FLOP counts, schema checks, op-script integration and the quick CPU run."""
import copy
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from unet_fast import benchmark
from unet_fast.benchmark import cases, flops, measure, ops, schema
from unet_fast.reference import UNet


def test_paper_forward_flops_by_hand():
    # Hand count, 2 FLOPs per multiply-accumulate, spatial sizes of the 572x572 network.
    conv3 = lambda c_in, c_out, size: 2 * 9 * c_in * c_out * size * size  # noqa: E731
    encoder = [(1, 64, 570), (64, 64, 568), (64, 128, 282), (128, 128, 280), (128, 256, 138), (256, 256, 136),
               (256, 512, 66), (512, 512, 64), (512, 1024, 30), (1024, 1024, 28)]
    decoder = [(1024, 512, 54), (512, 512, 52), (512, 256, 102), (256, 256, 100), (256, 128, 198),
               (128, 128, 196), (128, 64, 390), (64, 64, 388)]
    # Transposed convs: 4 taps per input pixel, input sizes 28, 52, 100, 196.
    ups = [(1024, 512, 28), (512, 256, 52), (256, 128, 100), (128, 64, 196)]
    total = sum(conv3(*layer) for layer in encoder + decoder)
    total += sum(2 * 4 * c_in * c_out * size * size for c_in, c_out, size in ups)
    total += 2 * 64 * 2 * 388 * 388  # the 1x1 head
    assert flops.forward_flops({}, 572, 572) == total
    assert round(total / 1e9, 1) == 300.9
    assert flops.forward_flops({}, 572, 572, batch=8) == 8 * total


@pytest.mark.parametrize(
    "config, size",
    [
        ({}, 572),
        (dict(base_channels=8, depth=3, in_channels=3, num_classes=4), 92),
        (dict(base_channels=4, depth=4, padding="same", up_mode="bilinear"), 64),
        (dict(base_channels=4, depth=3, skip_connections=False), 60),
    ],
)
def test_flops_match_torch_flop_counter(config, size):
    # torch's own FlopCounterMode on the meta device is an independent count of the same layers.
    model = UNet(**config).to("meta")
    x = torch.empty(2, model.in_channels, size, size, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert flops.forward_flops(config, size, size, batch=2) == counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    assert flops.train_step_flops(config, size, size, batch=2) == counter.get_total_flops()


def test_flops_reject_invalid_size():
    with pytest.raises(ValueError, match="input height"):
        flops.forward_flops({}, 570, 572)


def test_saved_tensor_bytes_excludes_parameters_and_counts_storages_once():
    weight = torch.randn(16, 16, requires_grad=True)
    x = torch.randn(8, 16)

    def graph():
        hidden = x @ weight  # saves x (512 B) and the parameter (excluded)
        return (hidden * hidden).sum()  # saves hidden twice, counted once (512 B)

    assert measure.saved_tensor_bytes(graph, [weight]) == 2 * 8 * 16 * 4


def test_interleaved_timing_reports_errors_and_rotates():
    calls = []
    candidates = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "broken": lambda: 1 / 0}
    timings, errors = measure.time_interleaved(candidates, torch.device("cpu"), warmup=1, rounds=4, min_sample_ms=0.0)
    assert set(timings) == {"a", "b"} and set(errors) == {"broken"}
    assert "ZeroDivisionError" in errors["broken"]
    assert timings["a"]["samples"] == 4 and timings["a"]["ms"] > 0
    timed = calls[4:]  # after warm-up and calibration (2 calls each)
    assert timed[:2] == ["a", "b"] and timed[2:4] == ["b", "a"]


def test_make_plan_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown providers"):
        cases.make_plan("cpu", quick=True, full=False, providers=("nope",))
    with pytest.raises(ValueError, match="unknown shapes"):
        cases.make_plan("cpu", quick=True, full=False, shapes=("huge",))


def test_main_rejects_cuda_without_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert benchmark.main(["--quick", "--device", "cuda", "--no-ops"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def _op_benchmark_package(root, package: str, modules: dict[str, str]) -> str:
    """A package ``package`` under ``root`` holding one module per (name, source)."""
    folder = root / package
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(source)
    return package


def test_op_benchmark_records_join_the_suite(tmp_path, monkeypatch):
    package = _op_benchmark_package(tmp_path, "fake_op_benchmarks_join", {
        # conv3x3_relu: a "records" list, main returns an exit status, rejects --device: retried without it.
        "conv3x3_relu": (
            "import argparse, dataclasses, json\n"
            "@dataclasses.dataclass\n"  # dataclasses need the module registered in sys.modules
            "class Case:\n"
            "    name: str\n"
            "def main(argv):\n"
            "    parser = argparse.ArgumentParser()\n"
            "    parser.add_argument('--json')\n"
            "    parser.add_argument('--quick', action='store_true')\n"
            "    args = parser.parse_args(argv)\n"
            "    rows = [{'name': 'enc0', 'provider': 'fused', 'dtype': 'bf16', 'ms': 1.5, 'ratio': 1.3, 'tflops': 2.0,\n"
            "             'mode': 'fwd', 'batch': 8, 'speedup_vs_eager': 1.4},\n"
            "            {'name': 'enc1', 'provider': 'fused', 'status': 'skipped', 'reason': 'no GPU'},\n"
            "            {'name': 'junk'}]\n"
            "    json.dump({'records': rows}, open(args.json, 'w'))\n"
            "    return 0\n"
        ),
        # elastic_warp: raises.
        "elastic_warp": "def main(argv):\n    raise RuntimeError('boom')\n",
        # border_distances: "cases" with per-provider rows, main returns its result dict and writes no file.
        "border_distances": (
            "def main(argv):\n"
            "    provider = {'ms': 4.0, 'mpixel_per_s': 9.0}\n"
            "    return {'cases': [{'size': [512, 512], 'batch': 2, 'providers': {'unet_fast': provider,\n"
            "            'scipy': {'status': 'skipped', 'reason': 'not installed'}}}]}\n"
        ),
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    progress = []
    entries, records = ops.run_op_benchmarks(
        "cpu", quick=True, log=lambda line: None, after_script=lambda e, r: progress.append((len(e), len(r))),
        package=package,
    )
    assert progress == [(1, 2), (2, 2), (3, 4)]
    assert [(entry["name"], entry["module"], entry["status"]) for entry in entries] == [
        ("conv3x3_relu", f"{package}.conv3x3_relu", "ok"), ("elastic_warp", f"{package}.elastic_warp", "error"),
        ("border_distances", f"{package}.border_distances", "ok"),
    ]
    assert "boom" in entries[1]["reason"]
    assert [(r["benchmark"], r["name"], r["provider"], r["status"]) for r in records] == [
        ("conv3x3_relu", "enc0", "fused", "ok"),
        ("conv3x3_relu", "enc1", "fused", "skipped"),
        ("border_distances", "size=512x512 batch=2", "unet_fast", "ok"),
        ("border_distances", "size=512x512 batch=2", "scipy", "skipped"),
    ]
    assert records[0]["speedup"] == 1.3 and records[0]["tflops"] == 2.0 and records[2]["mpixel_per_s"] == 9.0
    assert (records[0]["mode"], records[0]["batch"], records[0]["speedup_vs_eager"]) == ("fwd", 8, 1.4)
    problems = []
    for index, record in enumerate(records):
        schema._op_record(record, f"records[{index}]", problems)
    for index, entry in enumerate(entries):
        schema._fields(entry, schema.OP_ENTRY, f"op_benchmarks[{index}]", problems)
    assert problems == []


def test_op_benchmark_without_quick_is_skipped_and_missing_imports_are_errors(tmp_path, monkeypatch):
    package = _op_benchmark_package(tmp_path, "fake_op_benchmarks_skip", {
        "conv3x3_relu": (
            "import argparse\n"
            "def main(argv):\n"
            "    parser = argparse.ArgumentParser()\n"
            "    parser.add_argument('--json')\n"
            "    parser.add_argument('--device')\n"
            "    parser.parse_args(argv)\n"
            "    raise AssertionError('the full run must not start in quick mode')\n"
        ),
        # A module the benchmark imports is missing: an error, not "no such benchmark".
        "border_distances": "import a_package_that_is_not_installed\n",
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    entries, records = ops.run_op_benchmarks("cpu", quick=True, log=lambda line: None, package=package)
    assert entries[0]["status"] == "skipped" and "no --quick" in entries[0]["reason"]
    assert entries[1]["status"] == "skipped" and "not found" in entries[1]["reason"] and records == []
    assert entries[2]["status"] == "error" and "a_package_that_is_not_installed" in entries[2]["reason"]


def test_the_package_runs_its_own_op_benchmarks():
    """The suite's op benchmarks are modules of the package (no file paths), and the entry points
    in benchmarks/ only import them."""
    import ast
    from pathlib import Path

    entries, records = ops.run_op_benchmarks("cpu", quick=True, log=lambda line: None)
    by_name = {entry["name"]: entry for entry in entries}
    assert list(by_name) == list(ops.OP_BENCHMARKS)
    # conv3x3_relu has a --quick mode (one tiny CPU shape); the others' full runs are skipped in quick mode.
    assert by_name["conv3x3_relu"]["status"] == "ok", by_name["conv3x3_relu"]["reason"]
    assert {r["provider"] for r in records if r["benchmark"] == "conv3x3_relu"} == {"fused", "eager"}
    assert all(by_name[name]["status"] == "skipped" for name in ("elastic_warp", "border_distances"))
    package = Path(benchmark.__file__).parent
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not any(n == "benchmarks" or n.startswith("benchmarks.") for n in names), path
        assert "spec_from_file_location" not in path.read_text(), path
    entry_points = Path(__file__).resolve().parents[1] / "benchmarks"
    if not entry_points.is_dir():
        pytest.skip("no benchmarks/ folder next to tests/ (an installed copy)")
    for name in ops.OP_BENCHMARKS:
        tree = ast.parse((entry_points / f"bench_{name}.py").read_text())
        imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert f"unet_fast.benchmark.ops.{name}" in imported, name


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The equivalent of `unet-fast bench --quick --device cpu --no-ops --json ... --plot ...`."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "--device", "cpu", "--no-ops", "--json", str(out / "bench.json"), "--plot", str(out / "bench.png")]
    code = benchmark.main(argv)
    return code, json.loads((out / "bench.json").read_text()), out


def test_quick_run_covers_every_provider_and_mode(quick_run):
    code, document, out = quick_run
    assert code == 0
    schema.check(document)
    assert document["complete"] is True
    model = [r for r in document["records"] if r["kind"] == "model"]
    seen = {(r["provider"], r["mode"]) for r in model}
    assert seen == {(p, m) for p in cases.PROVIDERS for m in cases.MODES}
    assert {r["dtype"] for r in model} == {"fp32"}
    for record in model:
        assert (record["status"] == "ok") == (record["reason"] is None)
        if record["status"] == "skipped":
            assert record["reason"]
    by_key = {(r["provider"], r["mode"]): r for r in model}
    for mode in ("forward", "train-step"):
        for provider in ("reference", "reference-cl"):
            record = by_key[(provider, mode)]
            assert record["status"] == "ok" and record["ms"] > 0
            assert record["flops"] == (flops.forward_flops if mode == "forward" else flops.train_step_flops)(
                cases.TINY, 92, 92, 1
            )
            assert record["memory"]["peak_rss_bytes"] > 0
    train = by_key[("reference", "train-step")]
    train_cl = by_key[("reference-cl", "train-step")]
    assert train["speedup"] == 1.0 and train_cl["speedup"] == pytest.approx(train["ms"] / train_cl["ms"])
    assert train_cl["speedups"]["reference"] == train_cl["speedup"]
    assert train["speedups"]["reference-cl"] == pytest.approx(1 / train_cl["speedup"])
    # Same weights and same graph: the contiguous and channels_last references save the same bytes.
    assert train["saved_bytes"] > 0 and train["saved_bytes"] == by_key[("reference-cl", "train-step")]["saved_bytes"]
    assert "quick" in by_key[("reference-compile", "forward")]["reason"]
    env = document["environment"]
    assert env["device_type"] == "cpu" and env["torch"] == torch.__version__
    assert document["peaks"]["matmul"]["tflops"] > 0 and document["peaks"]["copy"]["gbps"] > 0
    pytest.importorskip("matplotlib")
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schema_flags_broken_documents(quick_run):
    _, document, _ = quick_run
    broken = copy.deepcopy(document)
    ok = next(r for r in broken["records"] if r["status"] == "ok")
    ok["ms"] = "fast"
    skipped = next(r for r in broken["records"] if r["status"] == "skipped")
    skipped["reason"] = None
    del broken["environment"]["commit"]
    broken["records"].append({"kind": "mystery"})
    problems = schema.validate(broken)
    assert any(".ms: expected number" in p for p in problems)
    assert any(".reason: must be null exactly when" in p for p in problems)
    assert "environment.commit: missing" in problems
    assert any("kind: expected 'model' or 'op'" in p for p in problems)
    with pytest.raises(ValueError, match="does not match schema"):
        schema.check(broken)
    assert schema.validate([]) == ["document: expected an object, got list"]


def test_failing_provider_is_recorded_and_fails_the_run(tmp_path, monkeypatch, capsys):
    from unet_fast.benchmark import providers

    class BrokenUNet(UNet):
        def __init__(self, recompute=False, **config):
            super().__init__(**config)

        def forward(self, x):
            raise RuntimeError("kernel exploded")

    monkeypatch.setattr(providers, "fast_unet_class", lambda: BrokenUNet)
    out = tmp_path / "bench.json"
    argv = ["--quick", "--device", "cpu", "--no-ops", "--providers", "reference,unet_fast", "--modes", "forward",
            "--json", str(out)]
    assert benchmark.main(argv) == 1
    assert "kernel exploded" in capsys.readouterr().err
    document = json.loads(out.read_text())
    schema.check(document)
    broken = next(r for r in document["records"] if r["provider"] == "unet_fast")
    assert broken["status"] == "error" and "kernel exploded" in broken["reason"] and broken["ms"] is None
    assert next(r for r in document["records"] if r["provider"] == "reference")["status"] == "ok"


@pytest.mark.gpu
def test_quick_run_on_cuda(tmp_path):
    # The CUDA branches: event timing, max_memory_allocated, the bf16 matmul peak. Compile is left
    # out to keep the GPU test stage short; the bench stages run it.
    out = tmp_path / "bench.json"
    argv = ["--quick", "--device", "cuda", "--no-ops", "--dtypes", "fp32,bf16", "--json", str(out),
            "--providers", "reference,reference-cl,unet_fast,unet_fast-recompute"]
    assert benchmark.main(argv) == 0
    document = json.loads(out.read_text())
    schema.check(document)
    assert document["environment"]["device_type"] == "cuda" and document["environment"]["gpu_capability"]
    assert document["peaks"]["matmul"]["dtype"] == "bfloat16" and document["peaks"]["matmul"]["size"] == 8192
    ok = [r for r in document["records"] if r["status"] == "ok"]
    assert {(r["provider"], r["dtype"]) for r in ok if r["mode"] == "train-step"} >= {
        ("reference", "fp32"), ("reference", "bf16"), ("reference-cl", "bf16")
    }
    for record in ok:
        assert record["memory"]["peak_bytes"] >= record["memory"]["peak_over_start_bytes"] > 0
        if record["mode"] == "train-step":
            assert record["saved_bytes"] > 0


def test_checkpoints_are_valid_partial_documents():
    from unet_fast.benchmark.suite import run_suite

    plan = cases.make_plan("cpu", quick=True, full=False, providers=("reference",), modes=("forward", "train-step"))
    partial = []
    document = run_suite(plan, ops=False, log=lambda line: None, checkpoint=lambda doc: partial.append(copy.deepcopy(doc)))
    assert [len(doc["records"]) for doc in partial] == [1, 2]
    for doc in partial:
        assert doc["complete"] is False and schema.validate(doc) == []
    assert document["complete"] is True and document["records"] == partial[-1]["records"]


def test_markdown_summary_lists_every_measured_fast_case(quick_run):
    from unet_fast.benchmark import report

    _, document, _ = quick_run
    table = report.markdown(document)
    assert document["environment"]["device_name"] in table.splitlines()[0]
    fast = [r for r in document["records"] if r["provider"] in report.FAST_PROVIDERS and r["status"] == "ok"]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "unet_fast" in line]
    assert len(rows) == len(fast)
    for record, row in zip(fast, rows):
        assert f"| {record['mode']} | {record['shape']} | {record['dtype']} | {record['provider']} |" in row

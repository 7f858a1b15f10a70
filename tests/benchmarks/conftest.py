"""pytest-benchmark entry points for CI-sized cases.

The full suite is `unet-fast bench` (unet_fast.benchmark); these are its small cases in
pytest-benchmark form, for tracking over commits: `pytest tests/benchmarks --benchmark-only`
(with `--benchmark-autosave` / `--benchmark-compare`). In a plain test run (`make test`) each case
runs once, untimed, which checks that it works without spending minutes on timing. They run on
CUDA when there is a GPU, else on the CPU.
"""
import importlib.util

import pytest
import torch

if importlib.util.find_spec("pytest_benchmark") is None:
    # Without the plugin there is no `benchmark` fixture: collect nothing rather than error.
    collect_ignore_glob = ["test_bench_*.py"]

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device() -> torch.device:
    return DEVICE


def _timing_requested(config) -> bool:
    return bool(config.getoption("benchmark_only") or config.getoption("benchmark_enable"))


@pytest.fixture
def timed(benchmark, device, request):
    """``timed(fn)``: benchmarks ``fn`` with a device synchronisation inside each timed call, so
    CUDA work is timed to completion, after a few warm-up calls (compilation, autotuning). Without
    --benchmark-only / --benchmark-enable: one untimed call."""

    def run(fn, warmup: int = 3):
        def call():
            result = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return result

        if not _timing_requested(request.config):
            benchmark.disabled = True  # what --benchmark-disable does: one call, untimed
            return benchmark(call)
        for _ in range(warmup):
            call()
        return benchmark(call)

    return run

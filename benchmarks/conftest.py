"""pytest-benchmark entry points for CI-sized cases: `pytest benchmarks/ --benchmark-only`.

The full suite is `unet-fast bench` (unet_fast.benchmark); these are its small cases in
pytest-benchmark form, for tracking over commits with `--benchmark-autosave` /
`--benchmark-compare`. They run on CUDA when there is a GPU, else on the CPU.
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


@pytest.fixture
def timed(benchmark, device):
    """``timed(fn)``: benchmarks ``fn`` with a device synchronisation inside each timed call, so
    CUDA work is timed to completion, after a few warm-up calls (compilation, autotuning)."""

    def run(fn, warmup: int = 3):
        def call():
            result = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return result

        for _ in range(warmup):
            call()
        return benchmark(call)

    return run

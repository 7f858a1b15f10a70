"""Test-session setup shared by every test module.

Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors: TRITON_INTERPRET must be
set before triton is first imported, which is why it happens here, at collection start.

Hypothesis profiles (HYPOTHESIS_PROFILE, default "ci"; see tests/reliability.py): "ci" is
derandomized (the same examples every run, so a failure reproduces) with a bounded number of
examples (derandomize implies no database); "long" explores 20 times as many random examples,
saves failures in tests/hypothesis-examples/ and replays them first on its next run. A failure
found either way is fixed and kept as an explicit @example, so the CI profile replays it too.
"""
import os
import platform
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from tests import reliability

EXAMPLE_DATABASE = DirectoryBasedExampleDatabase(Path(__file__).parent / "hypothesis-examples")
# Ops on a shared 2-core machine: wall-clock deadlines would flake; a slow example is no failure.
_COMMON = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=20, derandomize=True, database=None, **_COMMON)
settings.register_profile("long", max_examples=20 * reliability.LONG_FACTOR, database=EXAMPLE_DATABASE, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture
def triton_device() -> str:
    """Where Triton kernels run in this session: "cuda", or "cpu" under TRITON_INTERPRET=1."""
    return TRITON_DEVICE


def pytest_sessionfinish(session, exitstatus):
    """With UNET_FAST_RELIABILITY_JSON set and every test passed: the counts of examples, bad inputs
    and injected faults the run went through, for the README's "Reliability" section."""
    path = os.environ.get(reliability.REPORT_ENV)
    if path and exitstatus == 0 and reliability.COUNTS:
        reliability.write_report(path, dict(
            hypothesis_profile=settings.get_current_profile_name(), tests_collected=session.testscollected,
            device=f"cpu ({os.cpu_count()} cores, {platform.machine()})", torch=torch.__version__))

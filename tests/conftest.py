"""Test-session setup shared by every test module.

Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors: TRITON_INTERPRET must be
set before triton is first imported, which is why it happens here, at collection start.

Hypothesis profiles (HYPOTHESIS_PROFILE, default "ci"; see tests/reliability.py): "ci" is
derandomized (the same examples every run, so a failure reproduces) with a bounded number of
examples (derandomize implies no database); "long" explores 20 times as many random examples,
saves failures in tests/hypothesis-examples/ and replays them first on its next run. A failure
found either way is fixed and kept as an explicit @example, so the CI profile replays it too.
"""
import contextlib
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


@contextlib.contextmanager
def ieee_fp32_convolutions():
    """PyTorch's cuDNN convolutions in IEEE fp32 (no TF32) inside the block, the previous state after.

    It goes through the legacy switch ``torch.backends.cudnn.allow_tf32`` on every torch version. On
    torch >= 2.9 that switch also resets the per-op settings of the new API
    (``cudnn.conv/rnn.fp32_precision`` become "none", which inherits it), so both the new getters and
    the legacy one agree. Writing only ``cudnn.conv.fp32_precision`` (the new API) would leave the
    legacy flag True, and reading it, as inductor's conv lowering does, then raises "a mix of the
    legacy and new APIs". Both our ops and the tests read the setting through
    ``unet_fast.ops._numerics.conv_allows_tf32``, which follows the new API with the legacy fallback.
    """
    cudnn = torch.backends.cudnn
    per_op = [backend for backend in (getattr(cudnn, "conv", None), getattr(cudnn, "rnn", None))
              if hasattr(backend, "fp32_precision")]
    saved_per_op = [backend.fp32_precision for backend in per_op]
    try:
        saved_legacy = cudnn.allow_tf32
    except RuntimeError:  # the caller already mixed the two APIs; its per-op values are still restored
        saved_legacy = None
    cudnn.allow_tf32 = False
    try:
        yield
    finally:
        if saved_legacy is not None:
            cudnn.allow_tf32 = saved_legacy
        for backend, value in zip(per_op, saved_per_op):  # after the legacy write, which resets them
            backend.fp32_precision = value


@pytest.fixture
def pinned_conv_precision():
    """Pins PyTorch's cuDNN conv to IEEE fp32 for the test (so the fused ops use no TF32 either): fp32
    GPU tests compare against eager PyTorch, whose default on torch >= 2.9 is TF32 for convolutions."""
    with ieee_fp32_convolutions():
        yield


def pytest_sessionfinish(session, exitstatus):
    """With UNET_FAST_RELIABILITY_JSON set and every test passed: the counts of examples, bad inputs
    and injected faults the run went through, for the README's "Reliability" section."""
    path = os.environ.get(reliability.REPORT_ENV)
    if path and exitstatus == 0 and reliability.COUNTS:
        reliability.write_report(path, dict(
            hypothesis_profile=settings.get_current_profile_name(), tests_collected=session.testscollected,
            device=f"cpu ({os.cpu_count()} cores, {platform.machine()})", torch=torch.__version__))

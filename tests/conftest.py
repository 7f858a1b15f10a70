"""Test-session setup shared by every test module.

Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors: TRITON_INTERPRET must be
set before triton is first imported, which is why it happens here, at collection start.
"""
import os

import pytest
import torch

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

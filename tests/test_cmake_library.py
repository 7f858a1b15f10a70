"""The C++ library that CMakeLists.txt builds (`make cmake-check`) registers working ops."""
import pathlib
import subprocess
import sys

import pytest

LIBRARY = pathlib.Path(__file__).resolve().parents[1] / "cmake-build" / "libunet_fast_ops.so"


@pytest.mark.skipif(not LIBRARY.exists(), reason="run `make cmake-check` to build the CMake library")
def test_cmake_library_registers_the_ops():
    # A fresh interpreter: the Python extension registers the same op names and must not be loaded too.
    code = f"""
import torch
torch.ops.load_library({str(LIBRARY)!r})
skip, x = torch.randn(2, 3, 9, 10), torch.randn(2, 4, 5, 6)
out = torch.ops.unet_fast.center_crop_concat(skip, x)
assert torch.equal(out, torch.cat([skip[..., 2:7, 2:8], x], 1))
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr

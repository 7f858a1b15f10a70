"""The C++ library that CMakeLists.txt builds (`make cmake-check`): it registers working ops, and
once installed a C++ program finds it with find_package(unet_fast), links it and calls an op."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch.utils

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD = ROOT / "cmake-build"
LIBRARY = BUILD / "libunet_fast_ops.so"
CUDA_ROOT = pathlib.Path("/usr/local/cuda")

needs_library = pytest.mark.skipif(not LIBRARY.exists(), reason="run `make cmake-check` to build the CMake library")


@needs_library
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


def _cmake() -> str:
    """The cmake of this environment (requirements/dev.txt), else the one on PATH."""
    local = pathlib.Path(sys.executable).with_name("cmake")
    return str(local) if local.exists() else shutil.which("cmake")


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@needs_library
@pytest.mark.slow
def test_installed_library_is_found_linked_and_called_by_a_cpp_program(tmp_path):
    prefix, build = tmp_path / "prefix", tmp_path / "consumer-build"
    _run([_cmake(), "--install", str(BUILD), "--prefix", str(prefix)])
    (installed_library,) = prefix.glob("lib*/libunet_fast_ops.so")  # lib, or lib64 on some systems
    assert (installed_library.parent / "cmake" / "unet_fast" / "unet_fastConfig.cmake").exists()
    configure = [_cmake(), "-S", str(ROOT / "examples" / "cpp_consumer"), "-B", str(build),
                 f"-DCMAKE_PREFIX_PATH={prefix};{torch.utils.cmake_prefix_path}"]
    if CUDA_ROOT.exists():  # a CUDA build of libtorch needs the toolkit found
        configure.append(f"-DCUDA_TOOLKIT_ROOT_DIR={CUDA_ROOT}")
    _run(configure)
    _run([_cmake(), "--build", str(build), "-j", os.environ.get("MAX_JOBS", "2")])
    # The program is linked against the installed copy, not the build tree's.
    needed = _run(["ldd", str(build / "crop_concat_check")])
    assert str(installed_library) in needed, needed
    assert "ok" in _run([str(build / "crop_concat_check")])

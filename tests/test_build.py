"""The extension's build information, and importing unet_fast without a usable extension."""
import subprocess
import sys

import pytest
import torch

import unet_fast
from unet_fast import _ext


def test_build_info_describes_this_build():
    info = unet_fast.build_info()
    assert info["extension"] is True, info["extension_error"]
    assert info["torch_version"] == torch.__version__
    if info["cuda_kernels"]:
        assert info["cuda_version"] == torch.version.cuda
        assert info["cuda_archs"] and all(arch.replace(".", "").isdigit() for arch in info["cuda_archs"])
        assert set(info["cuda_ptx"]) <= set(info["cuda_archs"])
    else:
        assert info["cuda_version"] is None and info["cuda_archs"] == [] and info["cuda_ptx"] == []
    assert isinstance(info["triton"], bool)
    assert (info["triton_version"] is not None) == info["triton"]


def test_missing_extension_keeps_import_working_and_ops_explain_the_rebuild():
    # A fresh interpreter where unet_fast._C cannot be imported (as on a machine that never built it).
    code = """
import sys
sys.modules["unet_fast._C"] = None
import torch, unet_fast
info = unet_fast.build_info()
assert info["extension"] is False and "could not be imported" in info["extension_error"], info
try:
    unet_fast.ops.center_crop_concat(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2))
except ImportError as error:
    assert "pip install --no-build-isolation" in str(error), error
    print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr


def test_extension_built_for_another_torch_is_refused(monkeypatch):
    class OtherTorchBuild:
        @staticmethod
        def build_info():
            return {"torch_version": "0.0.1", "cuda_kernels": False, "cuda_version": None, "cuda_archs": None}

    monkeypatch.setitem(sys.modules, "unet_fast._C", OtherTorchBuild)
    monkeypatch.setattr(unet_fast, "_C", OtherTorchBuild, raising=False)
    extension, error = _ext._load_extension()
    assert extension is None
    assert "built against torch 0.0.1" in error and torch.__version__ in error
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "_LOAD_ERROR", error)
    with pytest.raises(ImportError, match="built against torch 0.0.1.*Rebuild"):
        _ext.require_extension()


def test_torch_minor_is_the_abi_part_of_the_version():
    assert _ext.torch_minor("2.14.1+cu130") == "2.14"
    assert _ext.torch_minor("2.11.0") == "2.11"
    assert _ext.torch_minor("2.10.0a0+git1234") == "2.10"


def test_recorded_build_for_another_torch_minor_is_refused_before_loading_the_extension(monkeypatch):
    class RecordedOtherTorch:  # what setup.py writes to unet_fast/_build_info.py
        TORCH_VERSION, CUDA_VERSION, CUDA_ARCHS = "2.0.1+cu118", "11.8", "8.0;9.0+PTX"

    class MustNotLoad:
        def __getattr__(self, name):
            raise AssertionError("unet_fast._C was loaded despite its recorded torch")

    monkeypatch.setitem(sys.modules, "unet_fast._build_info", RecordedOtherTorch)
    monkeypatch.setattr(unet_fast, "_build_info", RecordedOtherTorch, raising=False)
    monkeypatch.setitem(sys.modules, "unet_fast._C", MustNotLoad())
    monkeypatch.setattr(unet_fast, "_C", MustNotLoad(), raising=False)
    extension, error = _ext._load_extension()
    assert extension is None
    assert f"built against torch 2.0.1+cu118, but torch {torch.__version__} is running" in error
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "_LOAD_ERROR", error)
    info = _ext.build_info()  # reports the recorded build though the extension is refused
    assert info["extension"] is False and info["cuda_kernels"] is False
    assert info["torch_version"] == "2.0.1+cu118" and info["cuda_version"] == "11.8"
    assert info["cuda_archs"] == ["8.0", "9.0"] and info["cuda_ptx"] == ["9.0"]


def test_another_patch_release_of_the_same_torch_minor_is_accepted():
    running = str(torch.__version__)
    patch = running.split("+")[0].split(".")[:2] + ["99"]
    assert _ext._refusal(".".join(patch), running) is None
    assert _ext._refusal("1.0.0", running) is not None


def test_cuda_kernels_are_built_for_every_arch_and_keep_to_their_registers():
    """cuobjdump -res-usage on the extension: each CUDA kernel has code for every architecture of
    the build, none spills registers to the stack except the fp64 instantiations (not a speed path;
    Itanium-mangled template arguments start with I, and d is double)."""
    from unet_fast.tools.aot_check import cuobjdump_path

    info = unet_fast.build_info()
    tool = cuobjdump_path()
    if not info["cuda_kernels"] or tool is None:
        pytest.skip("the extension has no CUDA kernels, or Triton ships no cuobjdump")
    from unet_fast import _C

    listing = subprocess.run([tool, "-res-usage", _C.__file__], capture_output=True, text=True, check=True).stdout
    archs_of, arch, function = {}, None, None
    for line in listing.splitlines():
        line = line.strip()
        if line.startswith("arch = sm_"):
            arch = line.removeprefix("arch = sm_")
        elif line.startswith("Function "):
            function = line.removeprefix("Function ").rstrip(":")
            archs_of.setdefault(function, set()).add(arch)
        elif line.startswith("REG:"):
            registers, stack = (int(field.split(":")[1]) for field in line.split()[:2])
            assert registers <= 255
            if "kernelId" not in function:
                assert stack == 0, f"{function} spills {stack} B per thread on sm_{arch}"
    wanted = {a.replace(".", "") for a in info["cuda_archs"]}
    kernels = {name for name in archs_of if "crop_concat_kernel" in name or "warp_kernel" in name}
    assert {"crop_concat", "warp"} <= {("crop_concat" if "crop_concat" in k else "warp") for k in kernels}
    for name in kernels:
        assert archs_of[name] == wanted, (name, archs_of[name], wanted)
    # The architectures built "+PTX" carry PTX too, for GPUs newer than every listed one.
    ptx_listing = subprocess.run([tool, "-lptx", _C.__file__], capture_output=True, text=True, check=True).stdout
    for arch in info["cuda_ptx"]:
        assert f"sm_{arch.replace('.', '')}" in ptx_listing, ptx_listing

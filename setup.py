"""Builds unet_fast._C: C++ CPU kernels always, CUDA kernels where they can be compiled.

Build switches (environment variables):
  UNET_FAST_FORCE_CUDA=1   compile the CUDA kernels even where torch sees no GPU (needs nvcc and a
                           CUDA build of torch); a set TORCH_CUDA_ARCH_LIST forces it too.
  UNET_FAST_NO_CUDA=1      never compile the CUDA kernels.
  TORCH_CUDA_ARCH_LIST     target architectures, default "8.0;9.0" (A100, H100/H200).
  MAX_JOBS                 parallel compile jobs for ninja.

Build after torch is installed, without build isolation:
  pip install --no-build-isolation -e .
"""
import glob
import os

from setuptools import find_packages, setup

# torch finds the toolkit from `which nvcc`, which may be a wrapper outside the toolkit (and then
# misses libcudart); the standard location is the better guess.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch

DEFAULT_ARCHS = "8.0;9.0"
ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _want_cuda() -> bool:
    if _flag("UNET_FAST_NO_CUDA"):
        return False
    can_compile = CUDA_HOME is not None and torch.version.cuda is not None
    forced = _flag("UNET_FAST_FORCE_CUDA") or bool(os.environ.get("TORCH_CUDA_ARCH_LIST"))
    if forced and not can_compile:
        raise RuntimeError(
            "CUDA kernels were forced (UNET_FAST_FORCE_CUDA or TORCH_CUDA_ARCH_LIST) but "
            f"nvcc (CUDA_HOME={CUDA_HOME}) or a CUDA build of torch (torch.version.cuda="
            f"{torch.version.cuda}) is missing."
        )
    return forced or can_compile


def _extension():
    sources = ["csrc/unet_fast.cpp"] + sorted(glob.glob("csrc/ops/cpu/*.cpp"))
    cxx = ["-O3", "-std=c++20", "-fopenmp"]
    macros = [("UNET_FAST_TORCH_VERSION", f'"{torch.__version__}"')]
    if not _want_cuda():
        return CppExtension(
            "unet_fast._C", sources, include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"], define_macros=macros,
        )
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    macros += [
        ("WITH_CUDA", None),
        ("UNET_FAST_CUDA_VERSION", f'"{torch.version.cuda}"'),
        ("UNET_FAST_CUDA_ARCHS", f'"{archs}"'),
    ]
    return CUDAExtension(
        "unet_fast._C", sources + sorted(glob.glob("csrc/ops/cuda/*.cu")),
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++20", "-lineinfo"]},
        extra_link_args=["-fopenmp"], define_macros=macros,
    )


setup(
    packages=find_packages(include=["unet_fast", "unet_fast.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

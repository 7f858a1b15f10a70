"""Builds unet_fast._C: C++ CPU kernels always, CUDA kernels where they can be compiled.

Build switches (environment variables):
  UNET_FAST_FORCE_CUDA=1   compile the CUDA kernels even where torch sees no GPU (needs nvcc and a
                           CUDA build of torch); a set TORCH_CUDA_ARCH_LIST forces it too.
  UNET_FAST_NO_CUDA=1      never compile the CUDA kernels.
  TORCH_CUDA_ARCH_LIST     target architectures, default "8.0;9.0+PTX" (A100, H100/H200, and PTX
                           for newer GPUs).
  MAX_JOBS                 parallel compile jobs for ninja.

Build after torch is installed, without build isolation:
  pip install --no-build-isolation -e .                  editable, for development
  pip wheel --no-build-isolation --no-deps -w dist .     a wheel for this torch (`make wheel`)

A wheel's version carries the torch and CUDA it was built for as a local label, e.g.
0.1.0+cu130torch2.14 (0.1.0+cputorch2.14 without CUDA kernels); the source distribution keeps the
plain version. The build writes unet_fast/_build_info.py next to _C, so that unet_fast can refuse
an extension built for another torch without loading it.
"""
import glob
import os
import re
import sys

from setuptools import find_packages, setup

# torch finds the toolkit from `which nvcc`, which may be a wrapper outside the toolkit (and then
# misses libcudart); the standard location is the better guess.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch

DEFAULT_ARCHS = "8.0;9.0+PTX"
ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO_MODULE = "_build_info.py"


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


WITH_CUDA = _want_cuda()
CUDA_ARCHS = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS) if WITH_CUDA else None


def _extension():
    sources = ["csrc/unet_fast.cpp"] + sorted(glob.glob("csrc/ops/cpu/*.cpp"))
    cxx = ["-O3", "-std=c++20", "-fopenmp"]
    macros = [("UNET_FAST_TORCH_VERSION", f'"{torch.__version__}"')]
    if not WITH_CUDA:
        return CppExtension(
            "unet_fast._C", sources, include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"], define_macros=macros,
        )
    macros += [
        ("WITH_CUDA", None),
        ("UNET_FAST_CUDA_VERSION", f'"{torch.version.cuda}"'),
        ("UNET_FAST_CUDA_ARCHS", f'"{CUDA_ARCHS}"'),
    ]
    return CUDAExtension(
        "unet_fast._C", sources + sorted(glob.glob("csrc/ops/cuda/*.cu")),
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++20", "-lineinfo"]},
        extra_link_args=["-fopenmp"], define_macros=macros,
    )


def _version() -> str:
    """The package version, plus the local label +cu130torch2.14 / +cputorch2.14 except for sdists."""
    with open(os.path.join(ROOT, "unet_fast", "_version.py")) as file:
        base = re.search(r'__version__ = "([^"]+)"', file.read()).group(1)
    if "sdist" in sys.argv[1:]:
        return base
    torch_minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    cuda = f"cu{torch.version.cuda.replace('.', '')}" if WITH_CUDA else "cpu"
    return f"{base}+{cuda}torch{torch_minor}"


class BuildWithInfo(BuildExtension):
    """build_ext that also writes _build_info.py next to _C (in the build tree, and in the source
    tree for --inplace and editable builds): the torch, CUDA and architectures it was built for."""

    def run(self):
        super().run()
        text = (
            "# Written by setup.py when unet_fast._C was built; read before loading _C.\n"
            f"TORCH_VERSION = {torch.__version__!r}\n"
            f"CUDA_VERSION = {torch.version.cuda if WITH_CUDA else None!r}\n"
            f"CUDA_ARCHS = {CUDA_ARCHS!r}\n"
        )
        targets = [os.path.join(self.build_lib, "unet_fast")]
        if self.inplace:
            targets.append(self.get_finalized_command("build_py").get_package_dir("unet_fast"))
        for directory in targets:
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, BUILD_INFO_MODULE), "w") as file:
                file.write(text)


setup(
    version=_version(),
    packages=find_packages(include=["unet_fast", "unet_fast.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildWithInfo.with_options(use_ninja=True)},
)

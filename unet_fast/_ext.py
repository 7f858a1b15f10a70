"""Loads the compiled extension ``unet_fast._C`` and reports how it was built.

Importing unet_fast never fails because of the extension: when ``_C`` is missing, or was built
against another torch, the ops that need it raise an ImportError that says how to rebuild.
"""
from __future__ import annotations

import importlib.util

import torch

REBUILD_HINT = (
    "Rebuild it in the project root, with the torch you run installed: "
    "`pip install --no-build-isolation -e .` (or `make install`), or install the unet_fast wheel "
    "built for that torch."
)


def torch_minor(version: str) -> str:
    """'2.14.1+cu130' -> '2.14': the part of torch's version that its C++ ABI follows."""
    return ".".join(version.split("+")[0].split(".")[:2])


def _recorded_build():
    """The torch/CUDA that setup.py recorded next to _C (unet_fast/_build_info.py), or None."""
    try:
        from unet_fast import _build_info
    except ImportError:
        return None
    return {"torch_version": _build_info.TORCH_VERSION, "cuda_version": _build_info.CUDA_VERSION,
            "cuda_archs": _build_info.CUDA_ARCHS}


def _refusal(built_for: str, running: str) -> str | None:
    if torch_minor(built_for) == torch_minor(running):
        return None
    return f"unet_fast._C was built against torch {built_for}, but torch {running} is running."


def _load_extension():
    """(_C, None), or (None, why not). A _C built for another torch major.minor is refused from its
    recorded build before it is loaded: loading it could fail on undefined symbols."""
    recorded = _recorded_build()
    if recorded is not None:
        refusal = _refusal(recorded["torch_version"], str(torch.__version__))
        if refusal is not None:
            return None, refusal
    try:
        from unet_fast import _C
    except ImportError as error:
        return None, f"unet_fast._C could not be imported ({error})."
    refusal = _refusal(_C.build_info()["torch_version"], str(torch.__version__))
    if refusal is not None:
        return None, refusal
    return _C, None


_C, _LOAD_ERROR = _load_extension()


def require_extension() -> None:
    """Raises ImportError, with the rebuild command, when the C++/CUDA ops are unavailable."""
    if _C is None:
        raise ImportError(f"{_LOAD_ERROR} {REBUILD_HINT}")


def triton_version() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def build_info() -> dict:
    """How unet_fast was built and what it can run here.

    Keys: ``extension`` (whether ``_C`` loaded), ``extension_error`` (why not, else None),
    ``torch_version`` (the torch ``_C`` was built against, also when it was refused for it; the
    running one when nothing was built), ``cuda_version`` (the CUDA ``_C`` was built against, or
    None), ``cuda_kernels`` (whether usable CUDA kernels were compiled), ``cuda_archs`` (the
    architectures compiled for, e.g. ["8.0", "9.0"]), ``cuda_ptx`` (those that also carry PTX, for
    newer GPUs, e.g. ["9.0"]), ``triton`` (whether Triton is importable) and ``triton_version``.
    """
    info = {"extension": _C is not None, "extension_error": _LOAD_ERROR}
    built = _C.build_info() if _C is not None else _recorded_build()
    if built is not None:
        archs = (built["cuda_archs"] or "").replace(";", " ").split()
        info.update(
            torch_version=built["torch_version"],
            cuda_version=built["cuda_version"],
            cuda_kernels=_C is not None and built["cuda_version"] is not None,
            cuda_archs=[arch.removesuffix("+PTX") for arch in archs],
            cuda_ptx=[arch.removesuffix("+PTX") for arch in archs if arch.endswith("+PTX")],
        )
    else:
        info.update(torch_version=str(torch.__version__), cuda_version=None, cuda_kernels=False,
                    cuda_archs=[], cuda_ptx=[])
    version = triton_version()
    info.update(triton=version is not None, triton_version=version)
    return info

"""Loads the compiled extension ``unet_fast._C`` and reports how it was built.

Importing unet_fast never fails because of the extension: when ``_C`` is missing, or was built
against another torch, the ops that need it raise an ImportError that says how to rebuild.
"""
from __future__ import annotations

import importlib.util

import torch

REBUILD_HINT = (
    "Rebuild it in the project root, with the torch you run installed: "
    "`pip install --no-build-isolation -e .` (or `make install`)."
)


def _load_extension():
    try:
        from unet_fast import _C
    except ImportError as error:
        return None, f"unet_fast._C could not be imported ({error})."
    built_for = _C.build_info()["torch_version"]
    if built_for != torch.__version__:
        return None, f"unet_fast._C was built against torch {built_for}, but torch {torch.__version__} is running."
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
    ``torch_version`` (the torch ``_C`` was built against, else the running one),
    ``cuda_version`` (the CUDA ``_C`` was built against, or None), ``cuda_kernels`` (whether CUDA
    kernels were compiled), ``cuda_archs`` (their target architectures, e.g. ["8.0", "9.0"]),
    ``triton`` (whether Triton is importable) and ``triton_version``.
    """
    info = {"extension": _C is not None, "extension_error": _LOAD_ERROR}
    if _C is not None:
        built = _C.build_info()
        archs = built["cuda_archs"]
        info.update(
            torch_version=built["torch_version"],
            cuda_version=built["cuda_version"],
            cuda_kernels=bool(built["cuda_kernels"]),
            cuda_archs=archs.replace(";", " ").split() if archs else [],
        )
    else:
        info.update(torch_version=torch.__version__, cuda_version=None, cuda_kernels=False, cuda_archs=[])
    version = triton_version()
    info.update(triton=version is not None, triton_version=version)
    return info

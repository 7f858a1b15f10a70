"""The backend resolver's version rules (unet_fast.ops._backends)."""
import numpy
import pytest
import torch

from unet_fast.ops import _backends
from unet_fast.ops._backends import interpreter_incompatibility, resolve_backend


@pytest.mark.parametrize("triton_version, numpy_version", [
    ("3.6.0", "2.4.6"), ("3.6.1+git1234", "2.4.0rc1"), ("3.5.1", "3.0.0"),
])
def test_interpreter_of_triton_before_3_7_is_refused_with_numpy_2_4_or_newer(triton_version, numpy_version):
    problem = interpreter_incompatibility(triton_version, numpy_version)
    assert problem and "numpy<2.4" in problem and triton_version in problem


@pytest.mark.parametrize("triton_version, numpy_version", [
    ("3.6.0", "2.3.5"), ("3.7.0", "2.4.6"), ("3.8.0", "2.4.6"), ("4.0.0", "2.4.0"),
])
def test_interpreter_is_accepted_where_it_works(triton_version, numpy_version):
    assert interpreter_incompatibility(triton_version, numpy_version) is None


def test_resolver_names_the_interpreter_problem_instead_of_failing_inside_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_backends, "_TRITON_AVAILABLE", True)
    monkeypatch.setattr(_backends, "_INTERPRETER_PROBLEM", interpreter_incompatibility("3.6.0", "2.4.6"))
    with pytest.raises(ValueError, match=r'backend="triton" on CPU runs Triton\'s interpreter: .*numpy<2.4'):
        resolve_backend("triton", torch.device("cpu"), torch.float32)
    # CUDA tensors run compiled kernels, which the interpreter's problem does not concern
    assert resolve_backend("triton", torch.device("cuda"), torch.float32) == "triton"


def test_this_environment_matches_the_rule():
    triton = pytest.importorskip("triton")
    assert _backends._INTERPRETER_PROBLEM == interpreter_incompatibility(triton.__version__, numpy.__version__)

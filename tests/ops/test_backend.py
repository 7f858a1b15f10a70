"""unet_fast.ops.backend through its interface: the resolver's version rules and the per-shape choice."""
import numpy
import pytest
import torch

from unet_fast.ops import backend as backend_module
from unet_fast.ops.backend import chosen_backends, choose, fresh_choices, interpreter_incompatibility, resolve_backend
from unet_fast.triton.runtime import AUTOTUNE_ENV


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
    monkeypatch.setattr(backend_module, "_TRITON_AVAILABLE", True)
    monkeypatch.setattr(backend_module, "_INTERPRETER_PROBLEM", interpreter_incompatibility("3.6.0", "2.4.6"))
    with pytest.raises(ValueError, match=r'backend="triton" on CPU runs Triton\'s interpreter: .*numpy<2.4'):
        resolve_backend("triton", torch.device("cpu"), torch.float32)
    # CUDA tensors run compiled kernels, which the interpreter's problem does not concern
    assert resolve_backend("triton", torch.device("cuda"), torch.float32) == "triton"


def test_this_environment_matches_the_rule():
    triton = pytest.importorskip("triton")
    assert backend_module._INTERPRETER_PROBLEM == interpreter_incompatibility(triton.__version__, numpy.__version__)


def test_choose_times_each_key_once_and_remembers_the_faster(monkeypatch):
    monkeypatch.delenv(AUTOTUNE_ENV, raising=False)
    timed = []

    def timer(fn):
        timed.append(fn())
        return {"triton": 2.0, "aten": 1.0}[timed[-1]]

    t = torch.zeros(1)
    with fresh_choices(timer=timer):
        for _ in range(3):
            assert choose(("forward", 1), t, lambda: "triton", lambda: "aten") == "aten"
        assert choose(("forward", 2), t, lambda: "triton", lambda: "aten") == "aten"
        assert timed == ["triton", "aten", "triton", "aten"]  # once per key, each candidate once
        assert chosen_backends() == {("forward", 1): "aten", ("forward", 2): "aten"}
    assert ("forward", 1) not in chosen_backends()  # the table is restored after the context


def test_choose_is_triton_without_timing_when_autotuning_is_off(monkeypatch):
    monkeypatch.setenv(AUTOTUNE_ENV, "0")

    def no_timing(fn):
        raise AssertionError("timed although UNET_FAST_AUTOTUNE=0")

    with fresh_choices(timer=no_timing):
        assert choose(("forward", 1), torch.zeros(1), lambda: None, lambda: None) == "triton"
        assert chosen_backends() == {}

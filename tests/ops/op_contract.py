"""The checks every op's tests share, in the shape of torchvision's ``RoIOpTester``.

An op's test module subclasses ``OpContract`` as ``Test<Op>Contract`` and declares what is particular
to the op; the contract then runs the common checks on it:

- ``public(*args, **kwargs)``: the public op; ``sample_inputs(device, dtype)``: a list of
  ``(args, kwargs)`` for it (tensors created with ``requires_grad`` where the op is differentiable);
- ``reference(*args, **kwargs)``: an independent implementation (torch.nn.functional, a slow
  direct loop), which the float64 samples must match within ``float64_tolerance``;
- ``opcheck_args(device)``: argument tuples of the custom op ``torch.ops.unet_fast.<op_name>``,
  which ``torch.library.opcheck`` checks (schema, fake kernel, autograd registration);
- ``bad_inputs()``: ``(call, error type, message pattern)``: each call must raise that error;
- ``differentiable``: gradcheck in float64 on the samples (else the op must refuse gradients).

The contract runs: float64 samples against the reference, opcheck, float64 gradcheck, a
``torch.compile(fullgraph=True)`` trace of forward (and backward) equal to eager, and the bad inputs.
Each op's module keeps only its own cases (kernel precision per dtype, layouts, edge cases).
"""
from __future__ import annotations

import pytest
import torch

from tests.conftest import TRITON_DEVICE
from tests.reliability import count


def as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def detached(args) -> tuple:
    """The sample's tensors detached and cloned into fresh leaves (requires_grad kept)."""
    return tuple(
        a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args
    )


class OpContract:
    op_name: str = ""
    differentiable: bool = True
    float64_tolerance: dict = {"rtol": 1e-10, "atol": 1e-10}  # float64 rounding of sums of a few hundred terms
    device: str = TRITON_DEVICE  # where opcheck and the compile trace run
    compile_backend: str = "aot_eager"

    def public(self, *args, **kwargs):
        raise NotImplementedError

    def sample_inputs(self, device: str, dtype: torch.dtype) -> list[tuple[tuple, dict]]:
        raise NotImplementedError

    def reference(self, *args, **kwargs):
        raise NotImplementedError

    def opcheck_args(self, device: str) -> list[tuple]:
        raise NotImplementedError

    def bad_inputs(self) -> list[tuple]:
        return []

    # --- the common checks --------------------------------------------------------------------------

    def test_float64_samples_match_the_reference(self):
        for args, kwargs in self.sample_inputs("cpu", torch.float64):
            with torch.no_grad():
                got, want = as_tuple(self.public(*args, **kwargs)), as_tuple(self.reference(*args, **kwargs))
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert (g is None) == (w is None)
                if w is not None:
                    torch.testing.assert_close(g, w, **self.float64_tolerance)

    def test_opcheck(self):
        op = getattr(torch.ops.unet_fast, self.op_name)
        for args in self.opcheck_args(self.device):
            torch.library.opcheck(op, args)

    def test_gradcheck_float64(self):
        for args, kwargs in self.sample_inputs("cpu", torch.float64):
            tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
            if not self.differentiable:
                assert not tensors, "a non-differentiable op's samples must not require grad"
                continue

            def fn(*inputs, args=args, kwargs=kwargs, tensors=tensors):
                full = list(args)
                for i, t in zip(tensors, inputs):
                    full[i] = t
                return self.public(*full, **kwargs)

            assert torch.autograd.gradcheck(fn, tuple(args[i] for i in tensors), fast_mode=True)

    def test_fullgraph_compile_matches_eager(self):
        # aot_eager traces forward and backward through the fake kernels (what graph breaks depend
        # on) without inductor's CPU code generation
        args, kwargs = self.sample_inputs(self.device, torch.float32)[0]
        # every op compiles this one lambda: after another op's compile, Dynamo would recompile it
        # with automatic dynamic inputs (a float argument becomes symbolic), which is not this test
        torch._dynamo.reset()
        compiled = torch.compile(lambda *a: self.public(*a, **kwargs), fullgraph=True, backend=self.compile_backend)
        eager_args, compiled_args = detached(args), detached(args)
        eager, got = as_tuple(self.public(*eager_args, **kwargs)), as_tuple(compiled(*compiled_args))
        assert len(got) == len(eager)
        for g, e in zip(got, eager):
            assert (g is None) == (e is None)
            if e is not None:
                torch.testing.assert_close(g, e)
        if self.differentiable:
            leaves = [[a for a in each if isinstance(a, torch.Tensor) and a.requires_grad]
                      for each in (compiled_args, eager_args)]
            grads = [torch.autograd.grad(sum(o.float().sum() for o in out), ls)
                     for out, ls in zip((got, eager), leaves)]
            for g, e in zip(*grads):
                torch.testing.assert_close(g, e)

    def test_bad_inputs_raise_clear_errors(self):
        for call, error, match in self.bad_inputs():
            with pytest.raises(error, match=match):
                call()
            count("bad_inputs", self.op_name)

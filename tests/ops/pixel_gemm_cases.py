"""The contract and cases shared by the two per-pixel GEMM ops' tests (test_upconv2x2, test_conv1x1):
each subclasses ``PixelGemmContract`` with its ``op_name``; the reference is F.conv_transpose2d / F.conv2d.

Triton runs on CUDA, or on CPU in the interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import HAS_CUDA, TRITON_DEVICE
from tests.ops.op_contract import OpContract
from unet_fast import ops

SHAPES = [  # (batch, C_in, C_out, H, W): channel counts off multiples of 16, odd sizes, tile edges
    (1, 3, 5, 4, 7),
    (2, 20, 10, 9, 6),
    (3, 7, 33, 5, 5),
]


def reference(op_name, x, weight, bias):
    if op_name == "upconv2x2":
        return F.conv_transpose2d(x, weight, bias, stride=2)
    return F.conv2d(x, weight, bias)


def make_inputs(op_name, batch, c_in, c_out, height, width, dtype, device, bias=True, channels_last=False):
    x = torch.randn(batch, c_in, height, width, dtype=dtype, device=device)
    shape = (c_in, c_out, 2, 2) if op_name == "upconv2x2" else (c_out, c_in, 1, 1)
    weight = torch.randn(shape, dtype=dtype, device=device) / c_in**0.5
    b = torch.randn(c_out, dtype=dtype, device=device) if bias else None
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x, weight, b


def forward_and_grads(fn, x, weight, bias, grad_seed=0):
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight) + ((bias,) if bias is not None else ())]
    out = fn(*leaves[:2], leaves[2] if bias is not None else None)
    generator = torch.Generator().manual_seed(grad_seed)
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out)
    grads = torch.autograd.grad(out, leaves, grad)
    return (out.detach(), *grads)


class PixelGemmContract(OpContract):
    op_name = ""

    def public(self, x, weight, bias, **kwargs):
        return getattr(ops, self.op_name)(x, weight, bias, **kwargs)

    def sample_inputs(self, device, dtype):
        torch.manual_seed(2)
        backend = "torch" if dtype == torch.float64 else "triton"
        samples = []
        for has_bias in (True, False):
            x, weight, bias = make_inputs(self.op_name, 2, 3, 4, 3, 5, dtype, device, has_bias)
            tensors = tuple(None if t is None else t.requires_grad_() for t in (x, weight, bias))
            samples.append((tensors, {"backend": backend}))
        return samples

    def reference(self, x, weight, bias, *, backend):
        return reference(self.op_name, x, weight, bias)

    def opcheck_args(self, device):
        torch.manual_seed(3)
        args = []
        for backend, where in (("torch", "cpu"), ("triton", device)):
            for channels_last, has_bias in ((False, True), (True, False)):
                x, weight, bias = make_inputs(self.op_name, 2, 5, 3, 4, 6, torch.float32, where, has_bias, channels_last)
                args.append((x.requires_grad_(), weight.requires_grad_(),
                             None if bias is None else bias.requires_grad_(), backend))
        return args

    def bad_inputs(self):
        op = getattr(ops, self.op_name)
        x, weight, bias = make_inputs(self.op_name, 1, 4, 3, 5, 5, torch.float32, "cpu")
        return [
            (lambda: op(x.numpy(), weight, bias), TypeError, "x must be a torch.Tensor"),
            (lambda: op(x[0], weight, bias), ValueError, "x must be 4-d"),
            (lambda: op(x.int(), weight, bias), TypeError, "x must have dtype"),
            (lambda: op(x, weight.double(), bias), TypeError, "weight has dtype"),
            (lambda: op(x[:, :3], weight, bias), ValueError, "weight must have shape"),
            (lambda: op(x, weight, bias[:2]), ValueError, "bias must have shape"),
            (lambda: op(x, weight, bias[None]), ValueError, "bias must be 1-d"),
            (lambda: op(x, weight, bias, backend="cuda"), ValueError, "backend must be one of"),
            (lambda: op(x.double(), weight.double(), bias.double(), backend="triton"), TypeError,
             "float16, bfloat16 and float32"),
        ]

    # --- the per-pixel GEMMs' own cases ------------------------------------------------------------

    @pytest.mark.parametrize("shape", SHAPES)
    @pytest.mark.parametrize("channels_last", [False, True])
    @pytest.mark.parametrize("has_bias", [True, False])
    def test_triton_fp32_matches_pytorch(self, shape, channels_last, has_bias):
        torch.manual_seed(0)
        x, weight, bias = make_inputs(self.op_name, *shape, torch.float32, TRITON_DEVICE, has_bias, channels_last)
        ours = forward_and_grads(lambda *a: self.public(*a, backend="triton"), x, weight, bias)
        expected = forward_and_grads(lambda *a: reference(self.op_name, *a), x, weight, bias)
        assert ours[0].is_contiguous(memory_format=torch.channels_last)
        for got, want in zip(ours, expected):
            # fp32 accumulation in a different order than PyTorch's; sums of at most a few hundred terms.
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("shape", SHAPES[1:])
    def test_triton_fp16_error_within_twice_pytorchs_own(self, shape):
        torch.manual_seed(1)
        x, weight, bias = make_inputs(self.op_name, *shape, torch.float16, TRITON_DEVICE)
        exact = forward_and_grads(lambda *a: reference(self.op_name, *a), *(t.double() for t in (x, weight, bias)))
        ours = forward_and_grads(lambda *a: self.public(*a, backend="triton"), x, weight, bias)
        # PyTorch's own half-precision result (on CPU computed with fp32 accumulation, then rounded).
        pytorchs = forward_and_grads(lambda *a: reference(self.op_name, *a), x, weight, bias)
        for got, torch_half, want in zip(ours, pytorchs, exact):
            assert got.dtype == torch.float16
            scale = want.abs().max().item()
            own_error = (torch_half.double() - want).abs().max().item()
            # Twice PyTorch's own error, floored at half an fp16 ulp of the largest value (both may round exactly).
            assert (got.double() - want).abs().max().item() <= 2 * own_error + scale * 2**-11

    def test_auto_on_cpu_is_the_torch_composite(self):
        x, weight, bias = make_inputs(self.op_name, 1, 4, 3, 5, 5, torch.float32, "cpu")
        if not HAS_CUDA:
            assert self.public(x, weight, bias, backend="auto").is_contiguous()

    @pytest.mark.gpu
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    def test_cuda_matches_cpu_reference(self, pinned_conv_precision, dtype):
        torch.manual_seed(5)
        x, weight, bias = make_inputs(self.op_name, 4, 64, 32, 28, 28, dtype, "cuda", channels_last=True)
        exact = forward_and_grads(lambda *a: reference(self.op_name, *a), *(t.double().cpu() for t in (x, weight, bias)))
        ours = forward_and_grads(lambda *a: self.public(*a, backend="triton"), x, weight, bias)
        pytorchs = forward_and_grads(lambda *a: reference(self.op_name, *a), x, weight, bias)
        for got, torch_result, want in zip(ours, pytorchs, exact):
            scale = want.abs().max().item()
            own_error = (torch_result.double().cpu() - want).abs().max().item()
            # Within twice PyTorch's own error in this dtype (TF32 or not, as PyTorch chose), plus an ulp floor.
            assert (got.double().cpu() - want).abs().max().item() <= 2 * own_error + scale * 2**-10

    def test_cpu_autocast_real_and_fake_agree_on_dtype(self):
        # under autocast the public op casts its inputs first, so the composite (which autocast would
        # otherwise turn to bf16 inside) and the fake kernel (which keeps the input dtype) agree
        from torch._subclasses.fake_tensor import FakeTensorMode

        torch.manual_seed(6)
        x, weight, bias = (t.requires_grad_() for t in make_inputs(self.op_name, 2, 5, 3, 4, 6, torch.float32, "cpu"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            real = self.public(x, weight, bias, backend="torch")
            eager = reference(self.op_name, x, weight, bias)
            with FakeTensorMode() as mode:
                fake = self.public(*(mode.from_tensor(t) for t in (x, weight, bias)), backend="torch")
            # the custom op itself computes in its inputs' dtype, as its fake kernel says
            direct = getattr(torch.ops.unet_fast, self.op_name)(x, weight, bias, "torch")
        assert real.dtype == fake.dtype == eager.dtype == torch.bfloat16
        assert direct.dtype == torch.float32
        torch.testing.assert_close(real, eager, rtol=0, atol=0)  # the same bf16 computation as autocast's
        grads = torch.autograd.grad(real.float().sum(), (x, weight, bias))
        assert all(g.dtype == torch.float32 for g in grads)  # each gradient in its parameter's dtype

    def test_block_auto_falls_back_to_pytorch_beyond_the_kernels_pixel_range(self, monkeypatch):
        import importlib

        from unet_fast.ops import _pixel_gemm

        op_module = importlib.import_module(f"unet_fast.ops.{self.op_name}")
        kernels = importlib.import_module(f"unet_fast.triton.{self.op_name}")
        x, weight, bias = make_inputs(self.op_name, 2, 4, 3, 5, 6, torch.float32, TRITON_DEVICE)
        forward = getattr(op_module, f"{self.op_name}_impl")
        backward = getattr(op_module, f"{self.op_name}_backward_impl")
        launches = []
        real_gemm = kernels.pixel_gemm
        monkeypatch.setattr(kernels, "pixel_gemm", lambda *a, **k: launches.append(1) or real_gemm(*a, **k))
        expected = reference(self.op_name, x, weight, bias)
        grad = torch.randn_like(expected)
        for max_pixels, kernels_run in ((2 * 5 * 6, True), (2 * 5 * 6 - 1, False)):
            monkeypatch.setattr(_pixel_gemm, "MAX_PIXELS", max_pixels)
            launches.clear()
            y = forward(x, weight, bias, "auto")
            grad_x, grad_w, grad_b = backward(grad, x, weight, "auto")
            assert bool(launches) == kernels_run
            assert y.is_contiguous(memory_format=torch.channels_last)  # the block ops' "auto" layout either way
            torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
            leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
            want = torch.autograd.grad(reference(self.op_name, *leaves), leaves, grad)
            for got, ref in zip((grad_x, grad_w, grad_b), want):
                torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)

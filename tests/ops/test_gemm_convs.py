"""upconv2x2 and conv1x1 (per-pixel GEMM ops) against F.conv_transpose2d / F.conv2d.

Triton runs on CUDA, or on CPU in the interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import HAS_CUDA, TRITON_DEVICE
from tests.ops.conftest import ieee_fp32_convolutions
from unet_fast.ops import conv1x1, upconv2x2


def _reference(op_name, x, weight, bias):
    if op_name == "upconv2x2":
        return F.conv_transpose2d(x, weight, bias, stride=2)
    return F.conv2d(x, weight, bias)


def _inputs(op_name, batch, c_in, c_out, height, width, dtype, device, bias=True, channels_last=False):
    x = torch.randn(batch, c_in, height, width, dtype=dtype, device=device)
    shape = (c_in, c_out, 2, 2) if op_name == "upconv2x2" else (c_out, c_in, 1, 1)
    weight = torch.randn(shape, dtype=dtype, device=device) / c_in**0.5
    b = torch.randn(c_out, dtype=dtype, device=device) if bias else None
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x, weight, b


OPS = {"upconv2x2": upconv2x2, "conv1x1": conv1x1}
SHAPES = [  # (batch, C_in, C_out, H, W): channel counts off multiples of 16, odd sizes, tile edges
    (1, 3, 5, 4, 7),
    (2, 20, 10, 9, 6),
    (3, 7, 33, 5, 5),
]


def _forward_and_grads(fn, x, weight, bias, grad_seed=0):
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight) + ((bias,) if bias is not None else ())]
    out = fn(*leaves[:2], leaves[2] if bias is not None else None)
    generator = torch.Generator().manual_seed(grad_seed)
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out)
    grads = torch.autograd.grad(out, leaves, grad)
    return (out.detach(), *grads)


@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("has_bias", [True, False])
def test_triton_fp32_matches_pytorch(op_name, shape, channels_last, has_bias):
    torch.manual_seed(0)
    x, weight, bias = _inputs(op_name, *shape, torch.float32, TRITON_DEVICE, has_bias, channels_last)
    ours = _forward_and_grads(lambda *a: OPS[op_name](*a, backend="triton"), x, weight, bias)
    expected = _forward_and_grads(lambda *a: _reference(op_name, *a), x, weight, bias)
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    for got, want in zip(ours, expected):
        # fp32 accumulation in a different order than PyTorch's; sums of at most a few hundred terms.
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("shape", SHAPES[1:])
def test_triton_fp16_error_within_twice_pytorchs_own(op_name, shape):
    torch.manual_seed(1)
    x, weight, bias = _inputs(op_name, *shape, torch.float16, TRITON_DEVICE)
    exact = _forward_and_grads(lambda *a: _reference(op_name, *a), *(t.double() for t in (x, weight, bias)))
    ours = _forward_and_grads(lambda *a: OPS[op_name](*a, backend="triton"), x, weight, bias)
    # PyTorch's own half-precision result (on CPU computed with fp32 accumulation, then rounded).
    pytorchs = _forward_and_grads(lambda *a: _reference(op_name, *a), x, weight, bias)
    for got, torch_half, want in zip(ours, pytorchs, exact):
        assert got.dtype == torch.float16
        scale = want.abs().max().item()
        own_error = (torch_half.double() - want).abs().max().item()
        # Twice PyTorch's own error, floored at half an fp16 ulp of the largest value (both may round exactly).
        assert (got.double() - want).abs().max().item() <= 2 * own_error + scale * 2**-11


@pytest.mark.parametrize("op_name", list(OPS))
def test_torch_backend_gradcheck_float64(op_name):
    torch.manual_seed(2)
    x, weight, bias = (t.requires_grad_() for t in _inputs(op_name, 2, 3, 4, 3, 5, torch.float64, "cpu"))
    assert torch.autograd.gradcheck(lambda *a: OPS[op_name](*a, backend="torch"), (x, weight, bias))
    out = OPS[op_name](x, weight, bias, backend="torch")
    torch.testing.assert_close(out, _reference(op_name, x, weight, bias), rtol=0, atol=1e-12)


@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck(op_name, backend):
    torch.manual_seed(3)
    device = "cpu" if backend == "torch" else TRITON_DEVICE
    for channels_last, has_bias in ((False, True), (True, False)):
        x, weight, bias = _inputs(op_name, 2, 5, 3, 4, 6, torch.float32, device, has_bias, channels_last)
        args = (x.requires_grad_(), weight.requires_grad_(), None if bias is None else bias.requires_grad_(), backend)
        torch.library.opcheck(getattr(torch.ops.unet_fast, op_name).default, args)


def test_compiles_without_graph_breaks():
    torch.manual_seed(4)
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    up_weight, up_bias = torch.randn(4, 3, 2, 2, requires_grad=True), torch.randn(3, requires_grad=True)
    head_weight = torch.randn(2, 3, 1, 1, requires_grad=True)

    def net(x):
        return conv1x1(torch.relu(upconv2x2(x, up_weight, up_bias, backend="torch")), head_weight, backend="torch")

    # aot_eager traces forward and backward through the fake kernels; inductor would only add CPU codegen time.
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, net(x))
    out.sum().backward()
    assert x.grad is not None and up_weight.grad is not None


@pytest.mark.parametrize("op_name", list(OPS))
def test_bad_inputs_raise_clear_errors(op_name):
    op = OPS[op_name]
    x, weight, bias = _inputs(op_name, 1, 4, 3, 5, 5, torch.float32, "cpu")
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        op(x.numpy(), weight, bias)
    with pytest.raises(ValueError, match="x must be 4-d"):
        op(x[0], weight, bias)
    with pytest.raises(TypeError, match="x must have dtype"):
        op(x.int(), weight, bias)
    with pytest.raises(TypeError, match="weight has dtype"):
        op(x, weight.double(), bias)
    with pytest.raises(ValueError, match="weight must have shape"):
        op(x[:, :3], weight, bias)
    with pytest.raises(ValueError, match="bias must have shape"):
        op(x, weight, bias[:2])
    with pytest.raises(ValueError, match="bias must be 1-d"):
        op(x, weight, bias[None])
    with pytest.raises(ValueError, match="backend must be one of"):
        op(x, weight, bias, backend="cuda")
    with pytest.raises(TypeError, match="float16, bfloat16 and float32"):
        op(x.double(), weight.double(), bias.double(), backend="triton")
    if not HAS_CUDA:
        assert op(x, weight, bias, backend="auto").is_contiguous()  # "auto" on CPU is the torch composite


@pytest.mark.gpu
@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu_reference(pinned_conv_precision, op_name, dtype):
    torch.manual_seed(5)
    x, weight, bias = _inputs(op_name, 4, 64, 32, 28, 28, dtype, "cuda", channels_last=True)
    exact = _forward_and_grads(lambda *a: _reference(op_name, *a), *(t.double().cpu() for t in (x, weight, bias)))
    ours = _forward_and_grads(lambda *a: OPS[op_name](*a, backend="triton"), x, weight, bias)
    pytorchs = _forward_and_grads(lambda *a: _reference(op_name, *a), x, weight, bias)
    for got, torch_result, want in zip(ours, pytorchs, exact):
        scale = want.abs().max().item()
        own_error = (torch_result.double().cpu() - want).abs().max().item()
        # Within twice PyTorch's own error in this dtype (TF32 or not, as PyTorch chose), plus an ulp floor.
        assert (got.double().cpu() - want).abs().max().item() <= 2 * own_error + scale * 2**-10


@pytest.mark.parametrize("op_name", list(OPS))
def test_cpu_autocast_real_and_fake_agree_on_dtype(op_name):
    # under autocast the public op casts its inputs first, so the composite (which autocast would
    # otherwise turn to bf16 inside) and the fake kernel (which keeps the input dtype) agree
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(6)
    x, weight, bias = (t.requires_grad_() for t in _inputs(op_name, 2, 5, 3, 4, 6, torch.float32, "cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        real = OPS[op_name](x, weight, bias, backend="torch")
        eager = _reference(op_name, x, weight, bias)
        with FakeTensorMode() as mode:
            fake = OPS[op_name](*(mode.from_tensor(t) for t in (x, weight, bias)), backend="torch")
        # the custom op itself computes in its inputs' dtype, as its fake kernel says
        direct = getattr(torch.ops.unet_fast, op_name)(x, weight, bias, "torch")
    assert real.dtype == fake.dtype == eager.dtype == torch.bfloat16
    assert direct.dtype == torch.float32
    torch.testing.assert_close(real, eager, rtol=0, atol=0)  # the same bf16 computation as autocast's
    grads = torch.autograd.grad(real.float().sum(), (x, weight, bias))
    assert all(g.dtype == torch.float32 for g in grads)  # each gradient in its parameter's dtype


@pytest.mark.parametrize("op_name", list(OPS))
def test_block_auto_falls_back_to_pytorch_beyond_the_kernels_pixel_range(op_name, monkeypatch):
    import importlib

    from unet_fast.ops import gemm_convs
    from unet_fast.triton import pixel_gemm

    kernels = importlib.import_module(f"unet_fast.triton.{op_name}")
    x, weight, bias = _inputs(op_name, 2, 4, 3, 5, 6, torch.float32, TRITON_DEVICE)
    forward = getattr(gemm_convs, f"{op_name}_impl")
    backward = getattr(gemm_convs, f"{op_name}_backward_impl")
    launches = []
    real_gemm = kernels.pixel_gemm
    monkeypatch.setattr(kernels, "pixel_gemm", lambda *a, **k: launches.append(1) or real_gemm(*a, **k))
    expected = _reference(op_name, x, weight, bias)
    grad = torch.randn_like(expected)
    for max_pixels, kernels_run in ((2 * 5 * 6, True), (2 * 5 * 6 - 1, False)):
        monkeypatch.setattr(pixel_gemm, "MAX_PIXELS", max_pixels)
        launches.clear()
        y = forward(x, weight, bias, "auto")
        grad_x, grad_w, grad_b = backward(grad, x, weight, "auto")
        assert bool(launches) == kernels_run
        assert y.is_contiguous(memory_format=torch.channels_last)  # the block ops' "auto" layout either way
        torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
        leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
        want = torch.autograd.grad(_reference(op_name, *leaves), leaves, grad)
        for got, ref in zip((grad_x, grad_w, grad_b), want):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_tile_choice_matches_what_the_ahead_of_time_check_compiles():
    """The 128-row tile runs only on channels_last products with 16-aligned depth and columns (the
    specialization that aot_check compiles and checks for register spills); IEEE fp32 has its own."""
    from unet_fast.triton.aot import registered
    from unet_fast.triton.pixel_gemm import gemm_tile_name

    rows = 8 * 52 * 52  # the paper model's second up-convolution at batch 8
    assert gemm_tile_name(rows, 512, 4 * 256, True, torch.bfloat16, "ieee") == "large"
    assert gemm_tile_name(rows, 512, 4 * 256, True, torch.float32, "tf32") == "large"
    assert gemm_tile_name(rows, 512, 4 * 256, False, torch.bfloat16, "ieee") == "small"  # NCHW
    assert gemm_tile_name(rows, 64, 2, True, torch.bfloat16, "ieee") == "small"  # 1x1 conv to 2 classes
    assert gemm_tile_name(rows, 2, 64, True, torch.bfloat16, "ieee") == "small"  # its input gradient
    assert gemm_tile_name(rows // 8, 512, 1024, True, torch.bfloat16, "ieee") == "small"  # small map
    assert gemm_tile_name(rows, 512, 1024, True, torch.float32, "ieee") == "fp32"
    large = {c.label.rsplit(" ", 1)[0] for c in registered() if c.kernel == "pixel_gemm" and c.label.endswith(" large")}
    assert large == {"up-conv forward", "up-conv input grad"}


def test_tf32_products_read_the_weight_k_major():
    """With TF32 the launcher hands the kernels a K-major weight (sm_90's tf32 wgmma reads only that
    layout without 4-byte copies): the up-conv and the 1x1 conv, forward and input gradient, still
    match PyTorch (the ops ask for TF32 only on CUDA; the launchers run it in the interpreter too)."""
    from unet_fast.triton.conv1x1 import conv1x1_backward, conv1x1_forward
    from unet_fast.triton.upconv2x2 import upconv2x2_backward, upconv2x2_forward

    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 6, device=TRITON_DEVICE).to(memory_format=torch.channels_last)
    up_weight, up_bias = torch.randn(16, 8, 2, 2, device=TRITON_DEVICE) / 4, torch.randn(8, device=TRITON_DEVICE)
    grad_up = torch.randn(2, 8, 10, 12, device=TRITON_DEVICE)
    one_weight, one_bias = torch.randn(3, 16, 1, 1, device=TRITON_DEVICE) / 4, torch.randn(3, device=TRITON_DEVICE)
    grad_one = torch.randn(2, 3, 5, 6, device=TRITON_DEVICE)
    with ieee_fp32_convolutions():
        expected = [F.conv_transpose2d(x, up_weight, up_bias, stride=2), F.conv2d(x, one_weight, one_bias)]
        expected_grads = [F.conv2d(grad_up, up_weight, stride=2), F.conv_transpose2d(grad_one, one_weight)]
    fused = [upconv2x2_forward(x, up_weight, up_bias, "tf32"), conv1x1_forward(x, one_weight, one_bias, "tf32")]
    fused_grads = [upconv2x2_backward(grad_up, x, up_weight, True, "tf32")[0],
                   conv1x1_backward(grad_one, x, one_weight, True, "tf32")[0]]
    for got, want in zip(fused + fused_grads, expected + expected_grads):
        torch.testing.assert_close(got, want, atol=5e-3 * want.abs().max().item(), rtol=0)  # TF32 operands: ~1e-3

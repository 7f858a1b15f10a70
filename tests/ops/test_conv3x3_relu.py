"""conv3x3_relu: the Triton kernels (in the interpreter without a GPU) against the PyTorch composite.

The reference for every test is ``F.conv2d`` on ``cat(center_crop(skip), x)`` + ReLU + ``max_pool2d``
(the op's "torch" backend, itself checked against plain F.conv2d below). Interpreter shapes stay
at a few hundred output pixels: it runs one program at a time in numpy.
"""
import os
import subprocess
import sys

import pytest
import torch

from tests.ops.conv3x3_relu_cases import CASES, as_double_cpu, as_float, call_args, grads_of, make_inputs, plain_reference, run
from tests.ops.op_contract import OpContract
from unet_fast.ops import conv3x3_relu
from unet_fast.ops._numerics import conv_allows_tf32


class TestConv3x3ReluContract(OpContract):
    op_name = "conv3x3_relu"

    def public(self, x, weight, bias, skip, **kwargs):
        return conv3x3_relu(x, weight, bias, skip=skip, **kwargs)

    def sample_inputs(self, device, dtype):
        samples = []
        for pool, relu, crop, c0 in ((True, True, (2, 0), 2), (False, False, (0, 0), 0)):
            inputs = make_inputs(2, c0, 3, 3, 6, 6, crop, True, dtype, device)
            backend_name = "triton" if dtype != torch.float64 else "torch"
            samples.append(((inputs["x"], inputs["weight"], inputs["bias"], inputs["skip"]),
                            {"relu": relu, "pool": pool, "backend": backend_name}))
        return samples

    def reference(self, x, weight, bias, skip, *, relu, pool, backend):
        return plain_reference(x, weight, bias, skip, relu, pool)

    def opcheck_args(self, device):
        inputs = make_inputs(2, 2, 3, 4, 6, 6, (2, 2), True, torch.float32, device)
        x, weight = inputs["x"].detach(), inputs["weight"].detach()
        return [(inputs["x"], inputs["weight"], inputs["bias"], inputs["skip"], True, False, False),
                (x, weight[:, :3].contiguous(), None, None, False, False, False)]

    def bad_inputs(self):
        def call(change):
            args = {
                "x": torch.randn(2, 3, 6, 6), "weight": torch.randn(4, 5, 3, 3), "bias": torch.randn(4),
                "skip": torch.randn(2, 2, 8, 8), "pool": True, "relu": True, "backend": "torch",
            }
            change(args)
            return lambda: conv3x3_relu(args.pop("x"), args.pop("weight"), args.pop("bias"), **args)

        return [(call(change), error, match) for change, error, match in BAD_INPUTS]


BAD_INPUTS = [
    (lambda a: a.update(x=a["x"][0]), ValueError, "x must be 4-d"),
    (lambda a: a.update(x=a["x"].long()), TypeError, "x must have dtype"),
    (lambda a: a.update(x=[1, 2]), TypeError, "x must be a torch.Tensor"),
    (lambda a: a.update(weight=a["weight"].half()), TypeError, "weight has dtype"),
    (lambda a: a.update(weight=a["weight"][:, :, :2]), ValueError, r"weight must have shape \(C_out, 5, 3, 3\)"),
    (lambda a: a.update(weight=a["weight"][:, 1:]), ValueError, "weight must have shape"),
    (lambda a: a.update(bias=a["bias"][:2]), ValueError, "bias must have shape"),
    (lambda a: a.update(bias=a["bias"].double()), TypeError, "bias has dtype"),
    (lambda a: a.update(skip=a["skip"][:, :, 1:]), ValueError, "even, non-negative"),
    (lambda a: a.update(skip=a["skip"][:, :, :5, :5]), ValueError, "even, non-negative"),
    (lambda a: a.update(skip=a["skip"][:1]), ValueError, "same batch size"),
    (lambda a: a.update(skip=a["skip"].half()), TypeError, "skip has dtype"),
    (lambda a: a.update(x=a["x"][:, :, :2, :2], skip=None, weight=a["weight"][:, 2:]), ValueError, "at least 3x3"),
    (lambda a: a.update(x=a["x"][:, :, :5], skip=a["skip"][:, :, :7]), ValueError, "pool=True needs an even"),
    (lambda a: a.update(backend="cudnn"), ValueError, "backend must be one of"),
    (lambda a: a.update(relu=1), TypeError, "relu must be a bool"),
    (lambda a: a.update(x=a["x"].double(), weight=a["weight"].double(), bias=None, skip=None, backend="triton"),
     TypeError, 'backend="triton" supports float16, bfloat16 and float32'),
]


@pytest.mark.parametrize("batch,c0,c1,c_out,height,width,crop,relu,pool,bias", CASES)
def test_triton_fp32_matches_composite(triton_device, batch, c0, c1, c_out, height, width, crop, relu, pool, bias):
    inputs = make_inputs(batch, c0, c1, c_out, height, width, crop, bias, torch.float32, triton_device)
    out, grads = run(inputs, relu, pool, "triton")
    ref_out, ref_grads = run(inputs, relu, pool, "torch")
    exact_out, exact_grads = run(as_double_cpu(inputs), relu, pool, "torch")
    # Both fp32 backends sum the same products in different orders, so against float64 their errors
    # are of one size (sqrt(K) * 2**-24 of the terms' magnitude, K <= 9 * 38 products for outputs and
    # dgrad, N * H * W for wgrad): the kernel may err 4x PyTorch's own error, plus 4 fp32 ulps of
    # the largest value for elements where PyTorch happens to be exact.
    assert grads.keys() == ref_grads.keys()
    for o in out:
        assert o.is_contiguous(memory_format=torch.channels_last)
    pairs = [*zip(out, ref_out, exact_out), *((grads[k], ref_grads[k], exact_grads[k]) for k in grads)]
    for fused, plain, exact in pairs:
        fused_error = (fused.cpu().double() - exact).abs().max().item()
        torch_error = (plain.cpu().double() - exact).abs().max().item()
        assert fused_error <= 4 * torch_error + 4 * 2.0**-24 * exact.abs().max().item(), (fused_error, torch_error)


@pytest.mark.parametrize("batch,c0,c1,c_out,height,width,crop,relu,pool,bias", CASES[:3])
def test_triton_fp16_within_twice_torch_error(triton_device, batch, c0, c1, c_out, height, width, crop, relu, pool, bias):
    inputs = make_inputs(batch, c0, c1, c_out, height, width, crop, bias, torch.float16, triton_device)
    out, grads = run(inputs, relu, pool, "triton")
    half_out, half_grads = run({k: None if t is None else t.detach().cpu().requires_grad_() for k, t in inputs.items()}, relu, pool, "torch")
    exact_out, exact_grads = run(as_float(inputs), relu, pool, "torch")
    for fused, half, exact in [*zip(out, half_out, exact_out), *((grads[k], half_grads[k], exact_grads[k]) for k in grads)]:
        fused_error = (fused.float().cpu() - exact.cpu()).abs().max().item()
        torch_error = (half.float() - exact.cpu()).abs().max().item()
        # the fused op rounds only its output (and g) to fp16: at most about PyTorch's own error,
        # plus half an fp16 ulp of the result's magnitude
        assert fused_error <= 2 * torch_error + 1e-3 * exact.abs().max().item(), (fused_error, torch_error)


def test_triton_takes_any_memory_format(triton_device):
    # channels_last x, and a skip that is a strided view (every other channel of a larger tensor)
    inputs = make_inputs(2, 6, 4, 5, 6, 8, (2, 2), True, torch.float32, triton_device, channels_last=True)
    inputs["skip"] = inputs["skip"].detach()[:, ::2].requires_grad_()
    inputs["weight"] = inputs["weight"].detach()[:, 3:].contiguous().requires_grad_()
    out, grads = run(inputs, True, True, "triton")
    ref_out, ref_grads = run(inputs, True, True, "torch")
    for o, r in zip(out, ref_out):
        torch.testing.assert_close(o, r, atol=1e-4, rtol=1e-4)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-4, rtol=1e-4)


def test_pool_ties_route_to_first_max_like_pytorch(triton_device):
    # a spatially constant input makes y constant: every 2x2 window is a four-way tie. Integer weights
    # keep every sum exact, so the ties are exact whatever order a backend sums in (with random
    # weights, oneDNN's vectorised sums differ in the last bit between pixels on some CPUs).
    x = torch.ones(2, 3, 6, 8, device=triton_device, requires_grad=True)
    weight = torch.randint(-3, 4, (4, 3, 3, 3), generator=torch.Generator().manual_seed(0)).float()
    weight = weight.to(triton_device).requires_grad_()
    inputs = {"x": x, "weight": weight, "bias": None, "skip": None}
    _, grads = run(inputs, False, True, "triton")
    _, ref_grads = run(inputs, False, True, "torch")
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-4, rtol=1e-4)


def test_only_pooled_output_used(triton_device):
    inputs = make_inputs(2, 2, 3, 4, 6, 6, (2, 2), True, torch.float32, triton_device)
    grads = grads_of(conv3x3_relu(**call_args(inputs), pool=True, backend="triton")[1:], inputs)
    ref = grads_of(conv3x3_relu(**call_args(inputs), pool=True, backend="torch")[1:], inputs)
    for name in grads:
        torch.testing.assert_close(grads[name], ref[name], atol=1e-4, rtol=1e-4)


def test_autocast_casts_inputs_and_keeps_fp32_weight_grad(triton_device):
    inputs = make_inputs(2, 2, 3, 4, 6, 6, (2, 2), True, torch.float32, triton_device)
    with torch.autocast(triton_device, dtype=torch.float16):
        y = conv3x3_relu(**call_args(inputs), backend="triton")
    assert y.dtype == torch.float16
    grads = grads_of((y,), inputs)
    assert all(g.dtype == torch.float32 for g in grads.values())
    half = {k: t.detach().half().requires_grad_() for k, t in inputs.items()}
    ref = grads_of((conv3x3_relu(**call_args(half), backend="triton"),), half)
    for name in grads:
        torch.testing.assert_close(grads[name], ref[name].float())


def test_torch_backend_matches_plain_functional():
    inputs = make_inputs(2, 3, 4, 5, 8, 8, (2, 2), True, torch.float64, "cpu", channels_last=True)
    out = conv3x3_relu(**call_args(inputs), pool=True, backend="torch")
    ref = plain_reference(inputs["x"], inputs["weight"], inputs["bias"], inputs["skip"], True, True)
    for o, r in zip(out, ref):
        assert o.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(o, r, rtol=0, atol=0)


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_custom_op_autograd_formula_gradcheck_float64(pool, relu):
    # float64 runs the custom ops' ATen implementation of the same backward formula (saved x, skip
    # and y only: ReLU mask and pool argmax recomputed from y, the input gradient split at the crop)
    inputs = make_inputs(2, 2, 3, 3, 6, 6, (2, 4), True, torch.float64, "cpu")
    op = torch.ops.unet_fast.conv3x3_relu_pool if pool else torch.ops.unet_fast.conv3x3_relu

    def fn(x, weight, bias, skip):
        return op(x, weight, bias, skip, relu, False, False)

    assert torch.autograd.gradcheck(fn, (inputs["x"], inputs["weight"], inputs["bias"], inputs["skip"]), fast_mode=True)


def test_opcheck_backward_op(triton_device):
    inputs = make_inputs(2, 2, 3, 4, 6, 6, (2, 2), True, torch.float32, triton_device)
    x, weight, skip = inputs["x"].detach(), inputs["weight"].detach(), inputs["skip"].detach()
    y, pooled = torch.ops.unet_fast.conv3x3_relu_pool(x, weight, inputs["bias"].detach(), skip, True, False, False)
    args = (torch.randn_like(y), torch.randn_like(pooled), x, skip, weight, y, True, True, False, False, [True] * 4)
    torch.library.opcheck(torch.ops.unet_fast.conv3x3_relu_backward, args)


def test_auto_backend_on_cpu_runs_torch():
    inputs = make_inputs(1, 0, 2, 3, 5, 5, (0, 0), True, torch.float64, "cpu")
    out = conv3x3_relu(**call_args(inputs))  # float64 on CPU: only the torch backend can take it
    torch.testing.assert_close(out, plain_reference(inputs["x"], inputs["weight"], inputs["bias"], None, True, False)[0])


def test_triton_backend_refuses_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r'backend="triton" runs on CUDA tensors .*TRITON_INTERPRET=1'):
        conv3x3_relu(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), backend="triton")


def test_tf32_follows_pytorch_conv_setting():
    cudnn = torch.backends.cudnn
    if hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        saved = cudnn.conv.fp32_precision
        try:
            cudnn.conv.fp32_precision = "ieee"
            assert conv_allows_tf32() is False
            cudnn.conv.fp32_precision = "tf32"
            assert conv_allows_tf32() is True
        finally:
            cudnn.conv.fp32_precision = saved
    else:
        saved = cudnn.allow_tf32
        try:
            cudnn.allow_tf32 = False
            assert conv_allows_tf32() is False
            cudnn.allow_tf32 = True
            assert conv_allows_tf32() is True
        finally:
            cudnn.allow_tf32 = saved


def test_aot_compiles_representative_configs():
    # the main 16-bit configurations of forward and weight gradient for sm_90 (wgmma) and one tf32
    # forward for sm_80 (mma); `python -m unet_fast.tools.aot_check` compiles all of them. A fresh
    # process: @triton.jit kernels are interpreter objects under TRITON_INTERPRET=1.
    script = (
        "import sys\n"
        "from unet_fast.triton import conv3x3_relu, conv3x3_relu_backward  # noqa: F401 (they register)\n"
        "from unet_fast.triton.aot import registered\n"
        "from unet_fast.tools.aot_check import check, format_table\n"
        "configs = [c for c in registered() if c.kernel.startswith('conv3x3')]\n"
        "pick = lambda kernel, precision: next(c for c in configs if c.kernel == kernel and c.precision == precision)\n"
        "results = check([pick('conv3x3_fwd', 'bf16'), pick('conv3x3_wgrad', 'fp16')], [90])\n"
        "results += check([pick('conv3x3_fwd', 'tf32')], [80])\n"
        "print(format_table(results))\n"
        "sys.exit(1 if any(r.problem for r in results) else 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("wgmma.mma_async") == 2 and "mma.sync" in done.stdout


# ------------------------------------------------------------------------------------------
# GPU: CUDA against a float64 CPU reference (skipped without a GPU)
# ------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "batch,c0,c1,c_out,height,width,crop,relu,pool,bias",
    [
        (2, 64, 64, 64, 30, 34, (8, 8), True, False, True),
        (2, 0, 128, 256, 36, 28, (0, 0), True, True, True),
        (3, 0, 1, 64, 46, 46, (0, 0), True, True, True),
        (1, 19, 13, 37, 17, 21, (4, 2), False, False, True),
    ],
)
def test_cuda_matches_float64_reference(pinned_conv_precision, dtype, batch, c0, c1, c_out, height, width, crop, relu, pool, bias):
    inputs = make_inputs(batch, c0, c1, c_out, height, width, crop, bias, dtype, "cuda")
    out, grads = run(inputs, relu, pool, "triton")
    torch_out, torch_grads = run(inputs, relu, pool, "torch")  # cuDNN in the same dtype
    exact_inputs = {k: None if t is None else t.detach().cpu().double().requires_grad_() for k, t in inputs.items()}
    exact_out, exact_grads = run(exact_inputs, relu, pool, "torch")
    pairs = [*zip(out, torch_out, exact_out), *((grads[k], torch_grads[k], exact_grads[k]) for k in grads)]
    for fused, eager, exact in pairs:
        fused_error = (fused.double().cpu() - exact).abs().max().item()
        eager_error = (eager.double().cpu() - exact).abs().max().item()
        # within twice PyTorch's own error in this dtype, plus a floor for fp32 (both ~1e-6 there)
        floor = 1e-4 * exact.abs().max().item() if dtype == torch.float32 else 0.0
        assert fused_error <= 2 * eager_error + floor, (fused_error, eager_error)


@pytest.mark.gpu
def test_cuda_auto_backend_picks_per_shape_and_matches(pinned_conv_precision, monkeypatch):
    from unet_fast.ops.backend import chosen_backends
    from unet_fast.triton.runtime import AUTOTUNE_ENV

    monkeypatch.delenv(AUTOTUNE_ENV, raising=False)  # the GPU suite runs with UNET_FAST_AUTOTUNE=0

    inputs = make_inputs(2, 32, 32, 64, 26, 26, (4, 4), True, torch.float16, "cuda")
    out, grads = run(inputs, True, True, "auto")
    ref_out, ref_grads = run(inputs, True, True, "torch")
    for o, r in zip(out, ref_out):
        torch.testing.assert_close(o, r, atol=2e-2, rtol=2e-2)  # fp16 outputs of unit scale
    for name in grads:
        scale = ref_grads[name].abs().max().item()
        torch.testing.assert_close(grads[name], ref_grads[name], atol=2e-2 * scale, rtol=2e-2)
    picks = [choice for key, choice in chosen_backends().items() if key[1] == tuple(inputs["x"].shape)]
    assert len(picks) == 2 and set(picks) <= {"triton", "aten"}  # forward and backward


def test_launch_grids_fit_cuda_limits_for_paper_shape_at_batch_16():
    """Only grid axis 0 may exceed 65,535 blocks; pixel tiles go there, channel tiles stay small."""
    from unet_fast.shapes import level_sizes
    from unet_fast.triton.conv3x3_relu_tiles import GEMM_TILES, gemm_grid

    batch, widest = 16, 1024
    conv_inputs = []  # (input side, output side) of every 3x3 conv of the 572 network
    for encoder, decoder in level_sizes(572):
        conv_inputs += [(encoder + 4, encoder + 2), (encoder + 2, encoder), (decoder + 4, decoder + 2), (decoder + 2, decoder)]
    largest_rows = 0
    for side_in, side_out in conv_inputs:
        for block_m, block_n in {(tile["BLOCK_M"], tile["BLOCK_N"]) for tiles in GEMM_TILES.values() for tile in tiles}:
            for rows in (batch * side_out**2, batch * side_in**2):  # forward, dgrad
                grid = gemm_grid(rows, widest, block_m, block_n)
                assert all(blocks <= 65535 for blocks in grid[1:]), (side_in, block_m, grid)
                assert grid[0] < 2**31
                largest_rows = max(largest_rows, grid[0])
    assert largest_rows > 65535  # the case that failed with pixel tiles on axis 1


@pytest.mark.gpu
@pytest.mark.parametrize("pool", [False, True])
def test_cuda_nan_input_propagates_like_pytorch(pool):
    inputs = make_inputs(1, 0, 16, 16, 14, 14, (0, 0), True, torch.float32, "cuda")
    with torch.no_grad():
        inputs["x"][0, :, 5, 5] = float("nan")
    out, _ = run(inputs, True, pool, "triton")
    ref_out, _ = run(inputs, True, pool, "torch")
    for o, r in zip(out, ref_out):
        assert torch.equal(o.isnan(), r.isnan())

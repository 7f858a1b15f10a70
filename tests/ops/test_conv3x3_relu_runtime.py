"""The runtime rules around the fused 3x3 conv: one backend resolver, autocast, meta tensors, the CUDA
device guard, the int32 index-range guard, the autotuning opt-out, the weight gradient's split
reduction, the fp32 precision pin, and the model blocks' use of the op's per-shape choice.

Triton runs in its interpreter without a GPU (tests/conftest.py sets TRITON_INTERPRET=1)."""
import contextlib
import itertools

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ieee_fp32_convolutions
from tests.ops.conv3x3_relu_cases import call_args, grads_of, make_inputs, plain_reference, run
from unet_fast.ops import backend, conv1x1, conv3x3_relu, upconv2x2
from unet_fast.ops._numerics import conv_allows_tf32
from unet_fast.ops.backend import block_backend, resolve_backend
from unet_fast.triton import conv3x3_relu as forward_kernels
from unet_fast.triton import conv3x3_relu_backward as backward_kernels
from unet_fast.triton import conv3x3_relu_tiles as tiles
from unet_fast.triton.runtime import AUTOTUNE_ENV


def no_timing(fn):
    raise AssertionError("timed a backend although no timing was expected")


def aten_faster():
    """A timer under which ATen (timed second) is the faster of each pair."""
    timings = itertools.cycle([2.0, 1.0])
    return lambda fn: (fn(), next(timings))[1]


@pytest.fixture
def autotune_on(monkeypatch):
    monkeypatch.delenv(AUTOTUNE_ENV, raising=False)


# --- one resolver ---------------------------------------------------------------------------------


def test_every_op_refuses_triton_on_cpu_with_the_resolvers_message(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(1, 2, 5, 5)
    expected = resolve_error = None
    try:
        resolve_backend("triton", x.device, x.dtype)
    except ValueError as error:
        resolve_error = str(error)
    assert resolve_error and "TRITON_INTERPRET=1" in resolve_error
    calls = {
        "conv3x3_relu": lambda: conv3x3_relu(x, torch.randn(3, 2, 3, 3), backend="triton"),
        "conv1x1": lambda: conv1x1(x, torch.randn(3, 2, 1, 1), backend="triton"),
        "upconv2x2": lambda: upconv2x2(x, torch.randn(2, 3, 2, 2), backend="triton"),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as caught:
            call()
        expected = resolve_error
        assert str(caught.value) == expected, name
    # the launchers' interpreter switch is the same function: no interpreter, so no fixed tile
    monkeypatch.setenv(AUTOTUNE_ENV, "1")
    assert forward_kernels.FORWARD.fixed_tile("ieee") is None


def test_block_backend_keeps_auto_only_where_triton_runs():
    assert block_backend("auto", torch.device("cuda"), torch.float16) == "auto"
    assert block_backend("triton", torch.device("cuda"), torch.float16) == "triton"
    assert block_backend("auto", torch.device("cuda"), torch.float64) == "torch"
    assert block_backend("auto", torch.device("cpu"), torch.float32) == "torch"
    assert block_backend("torch", torch.device("cuda"), torch.float16) == "torch"


# --- autocast and meta tensors -----------------------------------------------------------------------


def test_autocast_leaves_float64_alone_like_torch():
    inputs = make_inputs(1, 2, 3, 4, 6, 6, (2, 2), True, torch.float64, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv3x3_relu(**call_args(inputs), backend="torch")
        eager = F.conv2d(inputs["x"][:, :, :, :], inputs["weight"][:, 2:])
    assert eager.dtype == torch.float64  # autocast's own rule
    assert out.dtype == torch.float64
    ref = plain_reference(inputs["x"], inputs["weight"], inputs["bias"], inputs["skip"], True, False)[0]
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_autocast_saves_the_parameter_not_a_cast_copy(triton_device):
    inputs = make_inputs(2, 2, 3, 4, 6, 6, (2, 2), True, torch.float32, triton_device)
    weight = inputs["weight"]
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(triton_device, dtype=torch.float16):
            y = conv3x3_relu(**call_args(inputs), backend="triton")
    assert y.dtype == torch.float16
    weight_shaped = [t for t in saved if t.shape == weight.shape]
    # the op saves the fp32 parameter itself (shared storage), no fp16 copy of it
    assert weight_shaped and all(t.dtype == torch.float32 and t.data_ptr() == weight.data_ptr() for t in weight_shaped)
    grads = grads_of((y,), inputs)
    assert grads["weight"].dtype == torch.float32 and grads["bias"].dtype == torch.float32
    half = {k: t.detach().half().requires_grad_() for k, t in inputs.items()}
    ref = grads_of((conv3x3_relu(**call_args(half), backend="triton"),), half)
    for name in grads:  # the same fp16 computation, the weight's gradient only rounded once more
        torch.testing.assert_close(grads[name], ref[name].float(), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_meta_tensors_give_shapes_dtypes_and_layout(backend):
    x = torch.empty(2, 3, 10, 12, device="meta", dtype=torch.float16)
    skip = torch.empty(2, 2, 14, 16, device="meta", dtype=torch.float16)
    weight = torch.empty(7, 5, 3, 3, device="meta", dtype=torch.float16)
    y, pooled = conv3x3_relu(x, weight, torch.empty(7, device="meta", dtype=torch.float16), skip=skip, pool=True,
                             backend=backend)
    assert y.shape == (2, 7, 8, 10) and pooled.shape == (2, 7, 4, 5)
    assert y.dtype == pooled.dtype == torch.float16 and y.device.type == "meta"
    assert y.is_contiguous(memory_format=torch.channels_last)


# --- CUDA device guard ---------------------------------------------------------------------------------


@pytest.mark.gpu
def test_tensors_on_a_second_gpu_while_the_first_is_current():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    torch.cuda.set_device(0)
    with ieee_fp32_convolutions():
        inputs = make_inputs(2, 16, 16, 32, 20, 20, (4, 4), True, torch.float32, "cuda:1")
        for backend in ("triton", "auto"):
            out, grads = run(inputs, True, True, backend)
            ref_out, ref_grads = run(inputs, True, True, "torch")
            for o, r in zip(out, ref_out):
                assert o.device == torch.device("cuda:1")
                torch.testing.assert_close(o, r, atol=1e-4, rtol=1e-4)
            for name in grads:
                torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-3, rtol=1e-3)
        x = torch.randn(2, 8, 6, 6, device="cuda:1", requires_grad=True)
        for op, weight in ((conv1x1, torch.randn(4, 8, 1, 1, device="cuda:1")),
                           (upconv2x2, torch.randn(8, 4, 2, 2, device="cuda:1"))):
            ref = F.conv2d(x, weight) if op is conv1x1 else F.conv_transpose2d(x, weight, stride=2)
            torch.testing.assert_close(op(x, weight, backend="triton"), ref, atol=1e-4, rtol=1e-4)
    assert torch.cuda.current_device() == 0


# --- every autotune configuration --------------------------------------------------------------------------

# (dtype, TF32 allowed, tolerance relative to the largest magnitude). The reference starts from the
# same rounded inputs, so what is left is the rounding of the outputs (fp16 5e-4, bf16 4e-3 of an
# element) and, with TF32, of the operands (about 1e-3 of the largest output over 576 products):
# each bound has a margin of about 5 over that; a miscompiled tile is wrong by O(1).
_TILE_SWEEP = [(torch.float16, False, 5e-3), (torch.bfloat16, False, 2e-2), (torch.float32, True, 5e-3),
               (torch.float32, False, 1e-5)]


def _exact_conv_andgrads_of(inputs, y, grad_y, grad_pooled):
    """Float64 outputs (y, pooled) of relu(conv(cat(crop(skip), x))) and its input gradients, with the
    ReLU mask and the pool's argmax taken from the fused op's own y: where rounding decides a mask or a
    window's maximum, the reference follows the op instead of failing it."""
    exact = {k: t.detach().double().cpu().requires_grad_() for k, t in inputs.items()}
    x, skip = exact["x"], exact["skip"]
    top, left = (skip.shape[2] - x.shape[2]) // 2, (skip.shape[3] - x.shape[3]) // 2
    cropped = skip[:, :, top : top + x.shape[2], left : left + x.shape[3]]
    pre = F.conv2d(torch.cat([cropped, x], 1), exact["weight"], exact["bias"])
    fused_y = y.detach().double().cpu()
    _, argmax = F.max_pool2d(fused_y, 2, return_indices=True)
    g = grad_y.double().cpu() + F.max_unpool2d(grad_pooled.double().cpu(), argmax, 2, output_size=fused_y.shape[-2:])
    grads = torch.autograd.grad(pre, list(exact.values()), g * (fused_y > 0))
    out = F.relu(pre).detach()
    return (out, F.max_pool2d(out, 2)), dict(zip(exact, grads))


@pytest.mark.parametrize("dtype,tf32,tolerance", _TILE_SWEEP, ids=["fp16", "bf16", "tf32", "fp32"])
@pytest.mark.parametrize("channels", [(32, 32, 64), (24, 40, 48)], ids=["aligned", "unaligned"])
def test_every_autotune_tile_computes_the_conv_and_its_gradients(triton_device, dtype, tf32, tolerance, channels):
    """GPU tests run with UNET_FAST_AUTOTUNE=0, i.e. the first tile of each list; the autotuner may
    pick any other. Each tile, forced in turn on forward, dgrad and wgrad, against float64 PyTorch: on
    a GPU that compiles each one; in the interpreter it checks each tile's edge masks."""
    if triton_device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bf16 wrongly")
    if triton_device == "cpu" and tf32:
        tolerance = _TILE_SWEEP[-1][2]  # the interpreter's dot is numpy's fp32: TF32 rounds nothing there
    c0, c1, c_out = channels
    klass = tiles.operand_class(dtype, "tf32" if tf32 else "ieee")
    gemm_tiles, wgrad_tiles = tiles.GEMM_TILES[klass], tiles.WGRAD_TILES[klass]
    inputs = {k: t.detach() for k, t in make_inputs(2, c0, c1, c_out, 14, 14, (4, 4), True, dtype, triton_device).items()}
    generator = torch.Generator().manual_seed(3)
    grad_y = torch.randn(2, c_out, 12, 12, generator=generator).to(dtype=dtype, device=triton_device)
    grad_pooled = torch.randn(2, c_out, 6, 6, generator=generator).to(dtype=dtype, device=triton_device)
    x, weight, bias, skip = inputs["x"], inputs["weight"], inputs["bias"], inputs["skip"]
    precision = "tf32" if tf32 else "ieee"
    for gemm_tile, wgrad_tile in zip(gemm_tiles, wgrad_tiles):
        with contextlib.ExitStack() as pins:
            pins.enter_context(forward_kernels.FORWARD.pinned(gemm_tile))
            pins.enter_context(backward_kernels.DGRAD.pinned(gemm_tile))
            pins.enter_context(backward_kernels.WGRAD.pinned(wgrad_tile))
            # the launchers directly: the op asks for TF32 only on CUDA, and this runs in the interpreter too
            y, pooled = forward_kernels.conv3x3_relu_forward(x, weight, bias, skip, relu=True, pool=True,
                                                             input_precision=precision)
            grads = backward_kernels.conv3x3_relu_backward(grad_y, grad_pooled, x, skip, weight, y, relu=True,
                                                           pool=True, input_precision=precision)
        grads = dict(zip(("x", "skip", "weight", "bias"), grads))
        exact_out, exact_grads = _exact_conv_andgrads_of(inputs, y, grad_y, grad_pooled)
        for name, fused, exact in [("y", y, exact_out[0]), ("pooled", pooled, exact_out[1]),
                                   *((name, grads[name], exact_grads[name]) for name in exact_grads)]:
            atol = tolerance * exact.abs().max().item()
            torch.testing.assert_close(fused.double().cpu(), exact, atol=atol, rtol=0,
                                       msg=lambda m: f"{name}, tiles {gemm_tile} / {wgrad_tile}: {m}")


# --- int32 index range -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x_shape,skip_shape,weight_shape,match",
    [
        ((1, 64, 6000, 6000), None, (8, 64, 3, 3), "x has 2304000000 elements per image"),
        ((1, 8, 6000, 6000), (1, 64, 6004, 6004), (8, 72, 3, 3), "skip has .* elements per image"),
        ((1, 1, 6002, 6002), None, (64, 1, 3, 3), r"the output \(weight.s C_out .* has .* elements per image"),
        ((600, 1, 2000, 2000), None, (8, 1, 3, 3), "x has 2400000000 pixels"),
        ((1, 1, 8, 8), None, (20000, 12000, 3, 3), "weight has 2160000000 elements"),
    ],
)
def test_index_range_guard_on_meta_tensors(x_shape, skip_shape, weight_shape, match):
    meta = lambda shape: None if shape is None else torch.empty(shape, device="meta")  # noqa: E731
    with pytest.raises(ValueError, match=match):
        tiles.check_index_range(meta(x_shape), meta(skip_shape), meta(weight_shape))
    tiles.check_index_range(meta((4, 64, 572, 572)), meta((4, 64, 580, 580)), meta((64, 128, 3, 3)))


def test_triton_backend_refuses_too_large_input_before_launch(triton_device):
    # an expanded view: 2.3e9 elements per image without allocating them
    x = torch.zeros(1, 1, 1, 1, device=triton_device).expand(1, 64, 6000, 6000)
    with pytest.raises(ValueError, match="elements per image"):
        conv3x3_relu(x, torch.zeros(4, 64, 3, 3, device=triton_device), backend="triton")
    pixels = torch.zeros(1, 1, 1, 1, device=triton_device).expand(700, 1, 2000, 2000)
    with pytest.raises(ValueError, match="pixels"):
        conv1x1(pixels, torch.zeros(2, 1, 1, 1, device=triton_device), backend="triton")


# --- autotuning opt-out ------------------------------------------------------------------------------------


def test_autotune_opt_out_fixes_the_kernel_configuration(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv(AUTOTUNE_ENV, "0")
    klass = tiles.operand_class(torch.bfloat16, "ieee")
    assert forward_kernels.FORWARD.fixed_tile(klass) == {
        "BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3,
    } == tiles.GEMM_TILES["16bit"][0]
    for precision, first_block_ci in (("tf32", 64), ("ieee", 64)):
        klass = tiles.operand_class(torch.float32, precision)
        assert backward_kernels.WGRAD.fixed_tile(klass)["BLOCK_CI"] == first_block_ci
    monkeypatch.setenv(AUTOTUNE_ENV, "1")
    assert forward_kernels.FORWARD.fixed_tile("16bit") is None  # autotuned


@pytest.mark.parametrize("autotune", ["1", "0"])
def test_auto_runs_the_measured_faster_implementation_or_triton_without_timing(triton_device, monkeypatch, autotune):
    # backend="auto" on CUDA times Triton against cuDNN per shape; here a fake timer makes ATen (timed
    # second) the faster, and the op must then run it, forward and backward, and record it; with
    # UNET_FAST_AUTOTUNE=0 it runs Triton and times nothing
    monkeypatch.setenv(AUTOTUNE_ENV, autotune)
    inputs = make_inputs(2, 2, 3, 4, 6, 6, (2, 2), True, torch.float32, triton_device)
    ops_args = (inputs["x"], inputs["weight"], inputs["bias"], inputs["skip"], True, False, True)  # tune=True
    with backend.fresh_choices(timer=aten_faster() if autotune == "1" else no_timing):
        y, pooled = torch.ops.unet_fast.conv3x3_relu_pool(*ops_args)
        grads = grads_of((y, pooled), inputs)
        choices = backend.chosen_backends()
    ref_out, ref_grads = run(inputs, True, True, "torch")
    torch.testing.assert_close((y, pooled), ref_out, atol=1e-5, rtol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-4, rtol=1e-4)
    if autotune == "1":
        assert sorted(key[0] for key in choices) == ["backward", "forward"] and set(choices.values()) == {"aten"}
    else:
        assert choices == {}


# --- weight gradient: split reduction ----------------------------------------------------------------------


def test_weight_gradient_split_reduction_matches_autograd(triton_device, monkeypatch):
    # M = 2 * 24 * 24 = 1152 output pixels > 1024 splits the weight-gradient reduction in two; the
    # crop offset and both channel sources go through the split as well
    splits = []
    wgrad_splits = backward_kernels._wgrad_splits
    monkeypatch.setattr(backward_kernels, "_wgrad_splits", lambda *a: splits.append(wgrad_splits(*a)) or splits[-1])
    inputs = make_inputs(2, 3, 2, 5, 26, 26, (2, 2), True, torch.float32, triton_device)
    out, grads = run(inputs, True, True, "triton")
    assert splits and min(splits) > 1
    reference = {k: None if t is None else t.detach().clone().requires_grad_() for k, t in inputs.items()}
    ref_out = plain_reference(reference["x"], reference["weight"], reference["bias"], reference["skip"], True, True)
    ref_grads = grads_of(ref_out, reference)
    # fp32 sums over 1152 pixels of unit-scale products in another order: ~1e-5 relative
    for name in ("weight", "bias"):
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-4, rtol=1e-4)


# --- fp32 precision pin -------------------------------------------------------------------------------------


def test_precision_pin_is_consistent_for_legacy_and_new_readers():
    cudnn = torch.backends.cudnn
    before = (cudnn.allow_tf32, conv_allows_tf32())
    with ieee_fp32_convolutions():
        assert conv_allows_tf32() is False
        assert cudnn.allow_tf32 is False  # the legacy getter inductor's conv lowering reads: no mixed-API error
        compiled = torch.compile(lambda x, w: F.relu(F.conv2d(x, w)))  # inductor
        x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
        torch.testing.assert_close(compiled(x, w), F.relu(F.conv2d(x, w)))
    assert (cudnn.allow_tf32, conv_allows_tf32()) == before


# --- model blocks share the op's per-shape choice -------------------------------------------------------------


def _encoder_block(backend, source, w1, b1, w2, b2):
    y1, y2, pooled = torch.ops.unet_fast._encoder_block(source, None, w1, b1, w2, b2, True, False, backend)
    return y1, y2, pooled


def test_block_auto_uses_the_ops_backend_choice(triton_device, autotune_on):
    generator = torch.Generator().manual_seed(3)
    leaves = [
        torch.randn(shape, generator=generator).to(triton_device).requires_grad_()
        for shape in ((2, 3, 12, 12), (4, 3, 3, 3), (4,), (5, 4, 3, 3), (5,))
    ]
    ref = _encoder_block("torch", *leaves)
    ref_grads = torch.autograd.grad(sum(o.sum() for o in ref), leaves)
    with backend.fresh_choices(timer=no_timing):
        _encoder_block("triton", *leaves)  # "triton" never times
        assert backend.chosen_backends() == {}
    with backend.fresh_choices(timer=aten_faster()):
        out = _encoder_block("auto", *leaves)
        grads = torch.autograd.grad(sum(o.sum() for o in out), leaves)
        picks = backend.chosen_backends()
    assert sorted(key[0] for key in picks) == ["backward", "backward", "forward", "forward"]
    assert set(picks.values()) == {"aten"}
    for o, r in zip(out, ref):
        assert o.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)

"""Property tests (hypothesis) of the public ops against torch.nn.functional in float64: random shapes
(batch 0 included), dtypes, memory layouts (contiguous, channels_last, strided slices, zero-stride
expanded views), crop offsets and values (large, subnormal, NaN, Inf), forward and backward.

Tolerances come from each dtype's rounding: a sum of K products computed with unit roundoff u is
within gamma_K = K u / (1 - K u) times the sum of |products| (Higham, Accuracy and Stability, 3.1),
and rounding the result to the output dtype adds u_out |y|. Inputs are drawn in the op's dtype and
the float64 reference sees those exact values, so input rounding plays no part.

Backward: the gradients of every input against PyTorch's own backward formulas in float64, NaN and
Inf included. ReLU at a NaN pre-activation: PyTorch's ``threshold_backward`` passes the gradient there
(it zeroes it where y <= 0 only), and so do both backends of conv3x3_relu (``test_relu_backward_at_nan``
pins it on a case where masking would give zeros).
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, strategies as st

from tests.reliability import counted, examples
from unet_fast.ops import center_crop_concat, conv1x1, conv3x3_relu, elastic_warp, upconv2x2

UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
SCALES = {"unit": 1.0, "large": 1e4, "subnormal": 1e-39}  # 1e-39: fp32 subnormal products and inputs


def gamma(terms: int, dtype: torch.dtype, fp32_accumulation: bool) -> float:
    # The Triton kernels accumulate low-precision products in fp32 (tl.dot); ATen's CPU convolutions
    # promise no such thing (a bf16 conv_transpose2d of one channel rounds each step to bf16, found by
    # the "long" profile), so the torch backend is held to the dtype's own roundoff.
    low = dtype in (torch.float16, torch.bfloat16)
    u = UNIT_ROUNDOFF[torch.float32 if low and fp32_accumulation else dtype]
    return terms * u / (1 - terms * u)


def tolerance(bound: torch.Tensor, expected: torch.Tensor, terms: int, dtype: torch.dtype,
              fp32_accumulation: bool = False) -> torch.Tensor:
    """Per-element error bound: accumulation (gamma_K * sum |products|), output rounding, a 2x margin,
    and the smallest subnormal of the dtype (flush-to-zero of subnormal results)."""
    tiny = torch.finfo(dtype).smallest_normal
    return 2 * (gamma(terms, dtype, fp32_accumulation) * bound + UNIT_ROUNDOFF[dtype] * expected.abs()) + tiny


def assert_within(got: torch.Tensor, expected: torch.Tensor, tol: torch.Tensor, what: str) -> None:
    got = got.double()
    nan = expected.isnan()
    assert torch.equal(got.isnan(), nan), f"{what}: NaN positions differ"
    inf = expected.isinf()
    assert torch.equal(got[inf], expected[inf]), f"{what}: Inf values differ"
    finite = ~(nan | inf)
    excess = ((got - expected).abs() - tol)[finite]
    assert excess.numel() == 0 or excess.max() <= 0, f"{what}: error exceeds the bound by {excess.max().item():.3g}"


def lay_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of a wider tensor
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout == "expanded" and t.shape[0] > 1:  # one item broadcast over the batch: stride 0
        return t[:1].expand(t.shape)
    return t


@st.composite
def tensors(draw, shape, dtype, scale_name, special=True):
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**20)))
    t = (torch.randn(shape, generator=generator, dtype=torch.float64) * SCALES[scale_name]).to(dtype)
    if special and t.numel() and draw(st.booleans()):
        index = tuple(draw(st.integers(0, s - 1)) for s in shape)
        t[index] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    return t


LAYOUTS = st.sampled_from(["contiguous", "channels_last", "strided", "expanded"])


@st.composite
def conv3x3_cases(draw, backend):
    dtypes = [torch.float32, torch.float16] if backend == "triton" else [torch.float64, torch.float32, torch.bfloat16]
    dtype = draw(st.sampled_from(dtypes))
    n = draw(st.integers(0, 2))
    c0, c1, c_out = draw(st.integers(0, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    pool = draw(st.booleans())
    h, w = (2 + 2 * draw(st.integers(1, 3)) for _ in range(2)) if pool else (draw(st.integers(3, 9)) for _ in range(2))
    crop = (2 * draw(st.integers(0, 2)), 2 * draw(st.integers(0, 2)))
    scale = draw(st.sampled_from(sorted(SCALES))) if dtype != torch.float16 else "unit"
    x = lay_out(draw(tensors((n, c1, h, w), dtype, scale)), draw(LAYOUTS))
    skip = lay_out(draw(tensors((n, c0, h + crop[0], w + crop[1]), dtype, scale)), draw(LAYOUTS)) if c0 else None
    weight = draw(tensors((c_out, c0 + c1, 3, 3), dtype, "unit", special=False)) * (9 * (c0 + c1)) ** -0.5
    bias = draw(tensors((c_out,), dtype, "unit", special=False)) if draw(st.booleans()) else None
    return dict(x=x, weight=weight, bias=bias, skip=skip, relu=draw(st.booleans()), pool=pool)


def conv3x3_reference(x, weight, bias, skip, relu, pool):
    """(outputs, their error bounds) in float64 from torch.nn.functional."""
    inputs = x.double() if skip is None else torch.cat([_crop(skip.double(), x.shape[-2:]), x.double()], 1)
    b = None if bias is None else bias.double()
    y = F.conv2d(inputs, weight.double(), b)
    bound = F.conv2d(inputs.abs().nan_to_num(posinf=0), weight.double().abs(), None if b is None else b.abs())
    if relu:
        y = torch.where(y.isnan(), y, y.clamp_min(0))
    if not pool:
        return (y,), (bound,)
    return (y, F.max_pool2d(y, 2)), (bound, F.max_pool2d(bound, 2))


def _crop(skip, size):
    top, left = (skip.shape[-2] - size[0]) // 2, (skip.shape[-1] - size[1]) // 2
    return skip[..., top : top + size[0], left : left + size[1]]


def check_conv3x3(case, backend, seed):
    # detach() keeps each layout (a clone would make the expanded views dense)
    leaves = {k: case[k].detach().requires_grad_() for k in ("x", "weight", "bias", "skip") if case[k] is not None}
    args = {**case, **leaves}
    got = conv3x3_relu(args["x"], args["weight"], args["bias"], skip=args["skip"], relu=case["relu"],
                       pool=case["pool"], backend=backend)
    got = got if case["pool"] else (got,)
    expected, bounds = conv3x3_reference(**case)
    terms = 9 * case["weight"].shape[1] + (case["bias"] is not None)
    for name, g, e, b in zip(("y", "pooled"), got, expected, bounds):
        assert g.shape == e.shape and g.dtype == case["x"].dtype, name
        assert_within(g, e, tolerance(b, e, terms, g.dtype, fp32_accumulation=backend == "triton"), name)
    generator = torch.Generator().manual_seed(seed)
    grads_out = [torch.randn(g.shape, generator=generator, dtype=torch.float64).to(g.dtype) for g in got]
    grads = dict(zip(leaves, torch.autograd.grad(got, list(leaves.values()), grads_out)))
    expected_grads = conv3x3_backward_reference(case, got[0].detach(), grads_out)
    dtype = case["x"].dtype
    for name, (want, bound, grad_terms) in expected_grads.items():
        tol = tolerance(bound, want, grad_terms, dtype, fp32_accumulation=backend == "triton")
        if case["pool"]:  # g = grad_y + routed grad_pooled is rounded to the dtype once before the sums
            tol = tol + 2 * UNIT_ROUNDOFF[dtype] * bound
        assert grads[name].shape == want.shape and grads[name].dtype == case[name].dtype, name
        assert_within(grads[name], want, tol, f"grad of {name}")


def conv3x3_backward_reference(case, y, grads_out):
    """{input name: (gradient, error bound, terms per sum)} in float64 by PyTorch's backward formulas
    (max_pool2d_with_indices_backward, threshold_backward, convolution_backward), with the pool's
    argmax and the ReLU mask taken from the op's own y: its rounding may flip a near-tie or a sign
    that the float64 y would decide the other way, a jump no tolerance covers."""
    y = y.double()
    g = grads_out[0].double()
    if case["pool"]:
        _, indices = torch.ops.aten.max_pool2d_with_indices(y, [2, 2], [2, 2])
        g = g + torch.ops.aten.max_pool2d_with_indices_backward(
            grads_out[1].double(), y, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)
    if case["relu"]:
        g = torch.ops.aten.threshold_backward(g, y, 0)
    x, skip, weight = case["x"].double(), case["skip"], case["weight"].double()
    inputs = x if skip is None else torch.cat([_crop(skip.double(), x.shape[-2:]), x], 1)
    conv_grads = [torch.ops.aten.convolution_backward(
        grad, data, w, [weight.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, True])
        for grad, data, w in ((g, inputs, weight), (g.abs(), inputs.abs().nan_to_num(posinf=0), weight.abs()))]
    (grad_inputs, grad_weight, grad_bias), (bound_inputs, bound_weight, bound_bias) = conv_grads
    out = {"x": (grad_inputs[:, -x.shape[1]:], bound_inputs[:, -x.shape[1]:], 9 * weight.shape[0]),
           "weight": (grad_weight, bound_weight, y[:, 0].numel())}
    if case["bias"] is not None:
        out["bias"] = (grad_bias, bound_bias, y[:, 0].numel())
    if skip is not None:  # skip's gradient: the crop window's, zero around it
        top, left = (skip.shape[-2] - x.shape[-2]) // 2, (skip.shape[-1] - x.shape[-1]) // 2
        pad = (left, skip.shape[-1] - x.shape[-1] - left, top, skip.shape[-2] - x.shape[-2] - top)
        out["skip"] = (F.pad(grad_inputs[:, : skip.shape[1]], pad), F.pad(bound_inputs[:, : skip.shape[1]], pad),
                       9 * weight.shape[0])
    return out


def nan_pixel_case(pool: bool, dtype=torch.float32) -> dict:
    """A NaN in x seen by every output window of y (and, with pool, an Inf in skip): where a y > 0
    mask and PyTorch's threshold_backward part, the gradients of x, skip and the weight differ."""
    generator = torch.Generator().manual_seed(5)
    size = 6 if pool else 5
    x = torch.randn(1, 2, size, size, generator=generator, dtype=dtype)
    x[0, 1, 2, 2] = float("nan")
    skip = torch.randn(1, 1, size + 2, size + 2, generator=generator, dtype=dtype)
    skip[0, 0, 3, 4] = float("inf")
    weight = torch.randn(3, 3, 3, 3, generator=generator, dtype=dtype) / 3
    return dict(x=x, weight=weight, bias=torch.randn(3, generator=generator, dtype=dtype), skip=skip, relu=True,
                pool=pool)


@examples(ci=40)
@given(conv3x3_cases("torch"), st.integers(0, 2**20))
@example(nan_pixel_case(pool=False, dtype=torch.float64), 0).via("NaN pre-activation")
@example(nan_pixel_case(pool=True), 1).via("NaN pre-activation, pooled")
@counted("conv3x3_relu (torch)")
def test_conv3x3_relu_torch_backend(case, seed):
    check_conv3x3(case, "torch", seed)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's NaN matmuls
@examples(ci=8)
@given(conv3x3_cases("triton"), st.integers(0, 2**20))
@example(nan_pixel_case(pool=False), 0).via("NaN pre-activation")
@example(nan_pixel_case(pool=True), 1).via("NaN pre-activation, pooled")
@counted("conv3x3_relu (triton, interpreter)")
def test_conv3x3_relu_triton_backend(case, seed):
    check_conv3x3(case, "triton", seed)


def check_pixel_gemm_conv(data, dtype, op, backend):
    """Forward and the gradients of x, weight and bias against float64 autograd of F.conv2d /
    F.conv_transpose2d, NaN and Inf included (no ReLU here: they propagate through the sums)."""
    n, c_in, c_out = data.draw(st.integers(0, 2)), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    h, w = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    scale = data.draw(st.sampled_from(sorted(SCALES))) if dtype != torch.float16 else "unit"  # fp16 tops at 65504
    x = lay_out(data.draw(tensors((n, c_in, h, w), dtype, scale)), data.draw(LAYOUTS))
    shape = (c_out, c_in, 1, 1) if op == "conv1x1" else (c_in, c_out, 2, 2)
    weight = data.draw(tensors(shape, dtype, "unit", special=False))
    bias = data.draw(tensors((c_out,), dtype, "unit", special=False))
    public, functional = (conv1x1, F.conv2d) if op == "conv1x1" else (upconv2x2, partial(F.conv_transpose2d, stride=2))
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]  # detach() keeps x's layout
    got = public(*leaves, backend=backend)
    grad_y = data.draw(tensors(tuple(got.shape), dtype, "unit", special=False))
    got_grads = torch.autograd.grad(got, leaves, grad_y)
    exact = [t.double().requires_grad_() for t in (x, weight, bias)]
    magnitudes = [t.double().abs().nan_to_num(posinf=0).requires_grad_() for t in (x, weight, bias)]
    expected, bound = functional(*exact), functional(*magnitudes)
    assert got.shape == expected.shape and got.dtype == dtype
    fp32_accumulation = backend == "triton"
    assert_within(got, expected, tolerance(bound.detach(), expected.detach(), c_in + 1, dtype, fp32_accumulation), op)
    # each gradient's sums: grad_x over the C_out (x 1 or 4 taps) outputs a pixel feeds, grad_weight
    # and grad_bias over the N*H*W pixels
    expected_grads = torch.autograd.grad(expected, exact, grad_y.double())
    bounds = torch.autograd.grad(bound, magnitudes, grad_y.double().abs())
    for name, g, e, b, terms in zip(("x", "weight", "bias"), got_grads, expected_grads, bounds,
                                    (c_out * (1 if op == "conv1x1" else 4), n * h * w, n * h * w)):
        assert g.shape == e.shape and g.dtype == dtype, name
        assert_within(g, e, tolerance(b, e, terms, dtype, fp32_accumulation), f"{op}: grad of {name}")


@examples(ci=20)
@given(st.data(), st.sampled_from([torch.float64, torch.float32, torch.bfloat16]), st.sampled_from(["conv1x1", "upconv2x2"]))
@counted("conv1x1 / upconv2x2 (torch)")
def test_pixel_gemm_convs_torch_backend(data, dtype, op):
    check_pixel_gemm_conv(data, dtype, op, "torch")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's NaN matmuls
@examples(ci=6)
@given(st.data(), st.sampled_from([torch.float32, torch.float16]), st.sampled_from(["conv1x1", "upconv2x2"]))
@counted("conv1x1 / upconv2x2 (triton, interpreter)")
def test_pixel_gemm_convs_triton_backend(data, dtype, op):
    check_pixel_gemm_conv(data, dtype, op, "triton")


@examples(ci=30)
@given(st.data(), st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16]))
@counted("center_crop_concat")
def test_center_crop_concat_is_exact(data, dtype):
    n, c0, c1 = data.draw(st.integers(0, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    h, w = data.draw(st.integers(1, 7)), data.draw(st.integers(1, 7))
    dh, dw = 2 * data.draw(st.integers(0, 3)), 2 * data.draw(st.integers(0, 3))
    skip = lay_out(data.draw(tensors((n, c0, h + dh, w + dw), dtype, "unit")), data.draw(LAYOUTS)).requires_grad_()
    x = lay_out(data.draw(tensors((n, c1, h, w), dtype, "unit")), data.draw(LAYOUTS)).requires_grad_()
    got = center_crop_concat(skip, x)
    expected = torch.cat([skip[..., dh // 2 : dh // 2 + h, dw // 2 : dw // 2 + w], x], 1)
    assert torch.equal(got.isnan(), expected.isnan()) and torch.equal(got.nan_to_num(), expected.nan_to_num())
    grad = torch.randn(expected.shape, dtype=torch.float64).to(dtype)
    got_grads = torch.autograd.grad(got, (skip, x), grad)
    expected_grads = torch.autograd.grad(expected, (skip, x), grad)
    for g, e in zip(got_grads, expected_grads):
        assert torch.equal(g, e)


@examples(ci=25)
@given(st.data(), st.sampled_from([torch.float64, torch.float32]), st.sampled_from(["nearest", "bilinear"]),
       st.sampled_from(["zeros", "border", "reflection"]))
@example(data=None, dtype=torch.float32, interpolation="bilinear", padding_mode="zeros").via("batch 0")
@counted("elastic_warp")
def test_elastic_warp_matches_grid_sample(data, dtype, interpolation, padding_mode):
    """A dense field and no affine: exactly ``F.grid_sample(align_corners=True)`` in pixel units."""
    if data is None:
        n, c, h, w, scale = 0, 1, 4, 5, "unit"
        image, field = torch.zeros(0, 1, 4, 5, dtype=dtype), torch.zeros(0, 2, 4, 5, dtype=dtype)
    else:
        n, c = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
        h, w = data.draw(st.integers(2, 9)), data.draw(st.integers(2, 9))
        scale = data.draw(st.sampled_from(["unit", "large"]))
        image = lay_out(data.draw(tensors((n, c, h, w), dtype, scale)), data.draw(st.sampled_from(["contiguous", "channels_last"])))
        field = data.draw(tensors((n, 2, h, w), dtype, "unit", special=False)) * data.draw(st.sampled_from([0.5, 3.0]))
    got = elastic_warp(image, field)if (interpolation, padding_mode) == ("bilinear", "reflection") else \
        elastic_warp(image, field, interpolation=interpolation, padding_mode=padding_mode)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    sy, sx = ys + field[:, 0].double(), xs + field[:, 1].double()
    grid = torch.stack([2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1], dim=-1)
    expected = F.grid_sample(image.double(), grid, mode=interpolation, padding_mode=padding_mode, align_corners=True)
    assert got.shape == expected.shape and got.dtype == dtype
    # Bilinear: 4 products of weights in [0, 1] with pixels; the source coordinate itself carries a
    # rounding of u * (|p| + |d|), which moves the result by up to that times the local gradient
    # (<= 2 max|pixel| per pixel). Nearest: exact unless a coordinate rounds across a .5 boundary.
    finite = image.double().nan_to_num(0, 0, 0).abs()
    peak = finite.amax(dim=(-2, -1), keepdim=True) if finite.numel() else finite
    u = UNIT_ROUNDOFF[dtype]
    bound = (8 * u * peak * (max(h, w) + 4)).expand_as(expected)
    if interpolation == "nearest":
        near = ((sy - sy.floor() - 0.5).abs() < 1e-6) | ((sx - sx.floor() - 0.5).abs() < 1e-6)
        assume_ok = ~near.unsqueeze(1).expand_as(expected)
        got, expected, bound = got[assume_ok], expected[assume_ok], bound[assume_ok]
    has_special = not image.isfinite().all()
    if has_special:  # NaN/Inf pixels: where they are read the output is NaN/Inf in both; compare finite ones
        keep = expected.isfinite() & got.isfinite()
        assert torch.equal(expected.isfinite(), got.isfinite()) or interpolation == "bilinear"
        got, expected, bound = got[keep], expected[keep], bound[keep]
    assert_within(got, expected, bound, "elastic_warp")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_relu_backward_at_nan(backend):
    """Both backends pass the gradient at a NaN pre-activation as PyTorch's threshold_backward does.
    Every 3x3 window here sees the NaN pixel, so a ``y > 0`` mask would give an all-zero input
    gradient where PyTorch's is finite and non-zero."""
    x = torch.randn(1, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    x[0, 0, 2, 2] = float("nan")
    weight = torch.randn(1, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    grad = torch.ones(1, 1, 3, 3)
    x_op = x.clone().requires_grad_()
    gx_op, = torch.autograd.grad(conv3x3_relu(x_op, weight.clone().requires_grad_(), backend=backend), (x_op,), grad)
    x_ref = x.double().requires_grad_()
    y = F.conv2d(x_ref, weight.double())
    assert y.isnan().all()
    gx_torch, = torch.autograd.grad(F.relu(y), (x_ref,), grad.double())
    assert gx_torch.abs().sum() > 0
    # the input gradient sums <= 9 products of unit-scale terms in fp32
    torch.testing.assert_close(gx_op.double(), gx_torch, rtol=0, atol=9 * 2.0**-24 * 8)

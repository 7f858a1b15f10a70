"""The validation audit: every public function refuses a bad input before it computes or launches
anything, with the exception type and a message that names the argument and the expected value.

One table, ``ROWS``, walks every public function (``unet_fast.ops``, the weight map, the metrics,
``predict_tiled`` and ``predict_large``) through what a caller can get wrong: mixed devices, meta
tensors where values are read, dtypes, ranks, sizes, and the int32 index limits of the Triton
kernels and the warp's coordinate range. The limits are reached with zero-stride expanded views and
meta tensors, which allocate nothing: an op that launched on them would read or write far outside
the memory behind them, so raising is the only way to pass.

Aliasing: no public function takes an ``out=`` tensor or writes into a caller's tensor, so inputs
that overlap each other (or themselves: expanded views) are harmless.
``test_outputs_share_no_storage_with_inputs`` checks both halves: outputs never share storage
with an input, and inputs are left unchanged.
"""
from __future__ import annotations

import re
from typing import Callable, NamedTuple

import numpy as np
import pytest
import torch

import unet_fast.metrics as metrics
import unet_fast.ops as ops
from tests.conftest import TRITON_DEVICE
from tests.inference_helpers import kaiming_unet
from tests.reliability import count
from unet_fast.inference import predict_large, predict_tiled
from unet_fast.ops.backend import resolve_backend
from unet_fast.triton.runtime import INT32_MAX, MAX_PIXELS
from unet_fast.weight_map import weight_map

META = torch.device("meta")


class Row(NamedTuple):
    function: str  # the public function's name
    argument: str  # the argument the message must name
    call: Callable  # call(tmp_path) makes the bad call
    error: type
    expected: str  # regex of the expected value (or the limit) the message must state


def _triton_runs() -> bool:
    """Whether backend="triton" runs here (CUDA, or the interpreter on CPU): the int32 rows need it."""
    try:
        resolve_backend("triton", TRITON_DEVICE, torch.float32)
    except (TypeError, ValueError):
        return False
    return True


def huge(*shape, device=TRITON_DEVICE) -> torch.Tensor:
    """A float32 tensor of ``shape`` backed by one element (all strides 0): no memory behind it."""
    return torch.zeros((1,) * len(shape), device=device).expand(*shape)


def _conv3x3_rows() -> list[Row]:
    x, w, b, skip = torch.randn(1, 3, 6, 6), torch.randn(4, 5, 3, 3), torch.randn(4), torch.randn(1, 2, 8, 8)
    conv = lambda x=x, w=w, b=b, **kw: lambda _: ops.conv3x3_relu(x, w, b, **{"skip": skip, "backend": "torch", **kw})  # noqa: E731
    rows = [
        Row("conv3x3_relu", "weight", conv(w=w.to(META)), ValueError, "on meta"),
        Row("conv3x3_relu", "bias", conv(b=b.to(META)), ValueError, "on meta"),
        Row("conv3x3_relu", "skip", conv(skip=skip.to(META)), ValueError, "on meta"),
        Row("conv3x3_relu", "x", conv(x=x.int()), TypeError, "float16, bfloat16, float32, float64"),
        Row("conv3x3_relu", "weight", conv(w=w.double()), TypeError, "float32"),
        Row("conv3x3_relu", "x", conv(x=x[0]), ValueError, "4-d"),
        Row("conv3x3_relu", "bias", conv(b=b[None]), ValueError, "1-d"),
        Row("conv3x3_relu", "weight", conv(w=w[:, :4]), ValueError, r"\(C_out, 5, 3, 3\)"),
        Row("conv3x3_relu", "x", conv(x=x[..., :2, :2], skip=skip[..., :4, :4]), ValueError, "at least 3x3"),
        Row("conv3x3_relu", "skip", conv(skip=skip[..., 1:, :]), ValueError, "even, non-negative"),
        Row("conv3x3_relu", "skip", conv(skip=skip.expand(2, 2, 8, 8)), ValueError, "same batch size"),
        Row("conv3x3_relu", "pool", conv(x=x[..., :5, :], skip=skip[..., :7, :], pool=True), ValueError, "even output"),
        Row("conv3x3_relu", "backend", conv(backend="cudnn"), ValueError, "'auto', 'triton', 'torch'"),
        Row("conv3x3_relu", "backend", conv(x=x.to(META), w=w.to(META), b=None, skip=None, backend="triton"),
            ValueError, "CUDA tensors"),
    ]
    if _triton_runs():
        limits = [  # (argument, x, skip, weight, limit): each past one int32 limit of the kernels
            ("x", huge(2048, 1, 1026, 1026), None, huge(1, 1, 3, 3), str(MAX_PIXELS)),  # N*H*W pixels
            ("x", huge(1, 2048, 1026, 1026), None, huge(1, 2048, 3, 3), str(INT32_MAX)),  # elements per image
            ("skip", huge(1, 1, 4, 4), huge(1, 8, 16388, 16388), huge(1, 9, 3, 3), str(INT32_MAX)),
            ("weight", huge(1, 64, 3, 3), None, huge(2**22, 64, 3, 3), str(INT32_MAX)),
            ("weight", huge(1, 1, 1026, 1026), None, huge(2048, 1, 3, 3), str(INT32_MAX)),  # output per image
        ]
        rows += [Row("conv3x3_relu", name, lambda _, x=x, s=s, w=w: ops.conv3x3_relu(x, w, skip=s, backend="triton"),
                     ValueError, limit) for name, x, s, w, limit in limits]
    return rows


def _pixel_gemm_rows(name: str) -> list[Row]:
    op = getattr(ops, name)
    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(3, 4, 1, 1) if name == "conv1x1" else torch.randn(4, 3, 2, 2)
    b = torch.randn(3)
    call = lambda x=x, w=w, b=b, **kw: lambda _: op(x, w, b, **kw)  # noqa: E731
    rows = [
        Row(name, "weight", call(w=w.to(META)), ValueError, "on meta"),
        Row(name, "bias", call(b=b.to(META)), ValueError, "on meta"),
        Row(name, "x", call(x=x.long()), TypeError, "float16, bfloat16, float32, float64"),
        Row(name, "x", call(x=x.numpy()), TypeError, "torch.Tensor"),
        Row(name, "x", call(x=x[0]), ValueError, "4-d"),
        Row(name, "weight", call(x=x[:, :2]), ValueError, "C_in=2"),
        Row(name, "bias", call(b=b[:2]), ValueError, "C_out=3"),
        Row(name, "backend", call(backend="cuda"), ValueError, "'auto', 'triton', 'torch'"),
    ]
    if _triton_runs():  # N*H*W pixels past the kernels' int32 pixel index
        big_w = huge(*w.shape[:2], *w.shape[2:])
        rows.append(Row(name, "x", lambda _: op(huge(2048, 4, 1024, 1025), big_w, backend="triton"), ValueError,
                        str(MAX_PIXELS)))
    return rows


def _center_crop_concat_rows() -> list[Row]:
    skip, x = torch.randn(2, 3, 8, 8), torch.randn(2, 1, 6, 6)
    cat = lambda skip=skip, x=x: lambda _: ops.center_crop_concat(skip, x)  # noqa: E731
    return [
        Row("center_crop_concat", "skip", cat(skip=skip.to(META)), ValueError, "on cpu"),
        Row("center_crop_concat", "skip", cat(x=x.double()), TypeError, "float64"),
        Row("center_crop_concat", "skip", cat(skip=skip.long(), x=x.long()), TypeError, "float16"),
        Row("center_crop_concat", "x", cat(x=x[0]), ValueError, "4-d"),
        Row("center_crop_concat", "skip", cat(x=x[:1]), ValueError, "same batch size"),
        Row("center_crop_concat", "skip", cat(x=x[..., :5, :]), ValueError, "even, non-negative"),
    ]


def _elastic_warp_rows() -> list[Row]:
    image, field = torch.randn(2, 1, 8, 9), torch.zeros(2, 2, 3, 3)
    label, weight = torch.zeros(2, 8, 9, dtype=torch.long), torch.ones(2, 8, 9)
    warp = lambda image=image, field=field, **kw: lambda _: ops.elastic_warp(image, field, **kw)  # noqa: E731
    nan_field = field.clone()
    nan_field[0, 0, 1, 1] = float("nan")
    limit = str(2**22 - 1)
    return [
        Row("elastic_warp", "displacement", warp(field=field.to(META)), ValueError, "on cpu"),
        Row("elastic_warp", "label", warp(label=label.to(META)), ValueError, "on cpu"),
        Row("elastic_warp", "weight", warp(weight=weight.to(META)), ValueError, "on cpu"),
        Row("elastic_warp", "affine", warp(affine=torch.zeros(2, 2, 3, device=META)), ValueError, "on cpu"),
        Row("elastic_warp", "image", warp(image=image.to(torch.complex64)), TypeError, "float16"),
        Row("elastic_warp", "image", warp(image=image[0, 0]), ValueError, r"\(N, C, H, W\)"),
        Row("elastic_warp", "displacement", warp(field=field[:, :1]), ValueError, r"\(N, 2, gh, gw\)"),
        Row("elastic_warp", "displacement", warp(field=nan_field), ValueError, "finite"),
        Row("elastic_warp", "label", warp(label=label[:, :4]), ValueError, r"\(2, 8, 9\)"),
        Row("elastic_warp", "label", warp(label=weight), TypeError, "int64"),
        Row("elastic_warp", "intensity", warp(intensity=torch.ones(2, 2)), ValueError, r"\(N, 3\)"),
        Row("elastic_warp", "out_size", warp(out_size=(0, 4)), ValueError, "at least 1"),
        Row("elastic_warp", "offset", warp(offset=(0.5, 1)), TypeError, "pair of ints"),
        Row("elastic_warp", "interpolation", warp(interpolation="cubic"), ValueError, "nearest, bilinear, bicubic"),
        Row("elastic_warp", "padding_mode", warp(padding_mode="wrap"), ValueError, "zeros, border, reflection"),
        # the coordinate range, on an expanded view and on meta tensors (shapes only)
        Row("elastic_warp", "image", warp(image=huge(1, 1, 2**22, 2, device="cpu"), field=field[:1]), ValueError, limit),
        Row("elastic_warp", "image", warp(image=torch.empty(1, 1, 3, 2**22, device=META), field=field[:1].to(META)),
            ValueError, limit),
    ]


def _border_distances_and_weight_map_rows() -> list[Row]:
    ids = torch.zeros(2, 5, 5, dtype=torch.long)
    ids[:, 1, 1], ids[:, 3, 3] = 1, 2
    labels = (ids > 0).long()
    return [
        Row("border_distances", "instances", lambda _: ops.border_distances(ids.to(META), 5.0), ValueError, "CPU or CUDA"),
        Row("border_distances", "instances", lambda _: ops.border_distances(ids.float(), 5.0), TypeError, "integer"),
        Row("border_distances", "instances", lambda _: ops.border_distances(ids[None], 5.0), ValueError,
            r"\(H, W\) or \(N, H, W\)"),
        Row("border_distances", "max_distance", lambda _: ops.border_distances(ids, -1.0), ValueError, ">= 0"),
        Row("border_distances", "max_distance", lambda _: ops.border_distances(ids, float("nan")), ValueError, "finite"),
        Row("weight_map", "labels", lambda _: weight_map(labels.to(META)), ValueError, "CPU or CUDA"),
        Row("weight_map", "instances", lambda _: weight_map(labels, instances=ids.to(META)), ValueError, "CPU or CUDA"),
        Row("weight_map", "labels", lambda _: weight_map(labels.double()), TypeError, "integer"),
        Row("weight_map", "labels", lambda _: weight_map(labels + 1), ValueError, r"\[0, 1\]"),
        Row("weight_map", "instances", lambda _: weight_map(labels, instances=ids[:, :3]), ValueError, "labels shape"),
        Row("weight_map", "num_classes", lambda _: weight_map(labels, num_classes=1), ValueError, ">= 2"),
        Row("weight_map", "sigma", lambda _: weight_map(labels, sigma=-1.0), ValueError, ">= 0"),
        Row("weight_map", "class_weights", lambda _: weight_map(labels, class_weights=[1.0]), ValueError, "2 entries"),
        Row("weight_map", "foreground", lambda _: weight_map(labels, foreground=2), ValueError, r"\[0, 1\]"),
    ]


def _simple_point_warp_rows() -> list[Row]:
    maps = torch.zeros(1, 4, 4, dtype=torch.uint8)
    spw = ops.simple_point_warp
    return [
        Row("simple_point_warp", "target", lambda _: spw(maps.to(META), maps), ValueError, "CPU tensor"),
        Row("simple_point_warp", "prediction", lambda _: spw(maps, maps.long()), ValueError, "uint8"),
        Row("simple_point_warp", "target", lambda _: spw(maps[0], maps), ValueError, r"\(N, H, W\)"),
        Row("simple_point_warp", "prediction", lambda _: spw(maps, maps[:, :3]), ValueError, "target shape"),
    ]


def _metric_rows() -> list[Row]:
    target = np.zeros((6, 6), np.int64)
    target[1:3, 1:3] = 1
    probs = np.full((6, 6), 0.25, np.float32)
    nan_probs = probs.copy()
    nan_probs[0, 0] = np.nan
    rows = []
    for name in ("pixel_error", "foreground_iou", "foreground_dice", "rand_error", "info_error", "rand_scores",
                 "variation_of_information", "voi_total", "warping_error", "segmentation_metrics"):
        metric = getattr(metrics, name)
        rows += [
            Row(name, "pred", lambda _, m=metric: m(torch.from_numpy(target).to(META), target), ValueError, "CPU or CUDA"),
            Row(name, "target", lambda _, m=metric: m(target, target.astype(np.float32)), TypeError, "integer"),
            Row(name, "pred", lambda _, m=metric: m(target[:4], target), ValueError, r"target shape \(6, 6\)"),
            Row(name, "target", lambda _, m=metric: m(target, target[None, None]), ValueError, r"\(H, W\) or \(N, H, W\)"),
        ]
        if name != "segmentation_metrics":  # takes class maps only
            rows += [
                Row(name, "threshold", lambda _, m=metric: m(probs, target, threshold="0.5"), TypeError, r"\[0, 1\]"),
                Row(name, "threshold", lambda _, m=metric: m(probs, target, threshold=1.5), ValueError, r"\[0, 1\]"),
                Row(name, "pred", lambda _, m=metric: m(nan_probs, target, threshold=0.5), ValueError, "NaN"),
                Row(name, "pred", lambda _, m=metric: m(target, target, threshold=0.5), TypeError, "float"),
            ]
        if name not in ("pixel_error", "segmentation_metrics"):  # these two ignore it for class maps
            rows.append(Row(name, "foreground", lambda _, m=metric: m(target, target, foreground="1"), TypeError,
                            "integer class id"))
    for name in ("segment_scores", "adapted_rand_error_segments"):
        metric = getattr(metrics, name)
        rows += [
            Row(name, "pred", lambda _, m=metric: m(probs, target), TypeError, "integer"),
            Row(name, "pred", lambda _, m=metric: m(target[:, :4], target), ValueError, "target shape"),
        ]
    best = metrics.best_over_thresholds
    rows += [
        Row("best_over_thresholds", "thresholds", lambda _: best("pixel", probs, target, ["a"]), TypeError, "numbers"),
        Row("best_over_thresholds", "thresholds", lambda _: best("pixel", probs, target, []), ValueError, "empty"),
        Row("best_over_thresholds", "threshold", lambda _: best("pixel", probs, target, [0.5, 2.0]), ValueError,
            r"\[0, 1\]"),
        Row("best_over_thresholds", "metric", lambda _: best("pixel_errors", probs, target, [0.5]), ValueError,
            "pixel, rand, info"),
        Row("get_metric", "metric", lambda _: metrics.get_metric("dice_score"), ValueError, "pixel, rand, info"),
    ]
    return rows


def _inference_rows() -> list[Row]:
    model = kaiming_unet(in_channels=1, num_classes=2, base_channels=2, depth=2)
    meta_model = kaiming_unet(in_channels=1, num_classes=2, base_channels=2, depth=2).to(META)
    image = torch.rand(1, 1, 20, 20)
    tiled = lambda **kw: lambda _: predict_tiled(**{"model": model, "image": image, "tile_size": 100, **kw})  # noqa: E731
    source = np.zeros((20, 20), np.float32)
    large = lambda out="o.zarr", **kw: lambda tmp: predict_large(  # noqa: E731
        **{"model": model, "source": source, "out": tmp / out, "tile_size": 100, "progress": False, **kw})
    return [
        Row("predict_tiled", "image", tiled(image=image.to(META)), ValueError, "CPU or CUDA"),
        Row("predict_tiled", "model", tiled(model=meta_model), ValueError, "load its weights"),
        Row("predict_tiled", "model", tiled(model=torch.nn.Conv2d(1, 2, 1)), TypeError, "depth, padding"),
        Row("predict_tiled", "image", tiled(image=(image * 255).to(torch.uint8)), TypeError, "floating point"),
        Row("predict_tiled", "image", tiled(image=image[0, 0]), ValueError, r"\(C, H, W\) or \(N, C, H, W\)"),
        Row("predict_tiled", "image", tiled(image=image.expand(1, 3, 20, 20)), ValueError, "expects 1"),
        Row("predict_tiled", "image", tiled(image=image[..., :0]), ValueError, "non-empty"),
        Row("predict_tiled", "tile_size", tiled(tile_size=10), ValueError, "smallest usable tile is"),
        Row("predict_tiled", "tile_size", tiled(tile_size=100.0), TypeError, "integer"),
        Row("predict_tiled", "batch_size", tiled(batch_size=0), ValueError, ">= 1"),
        Row("predict_tiled", "tta", tiled(tta="yes"), TypeError, "bool"),
        Row("predict_large", "device", large(device="gpu9"), ValueError, "'cpu' or 'cuda:0'"),
        Row("predict_large", "device", large(device="meta"), ValueError, "'cpu' or 'cuda:0'"),
        Row("predict_large", "device", large(device="cuda:1"), ValueError, r"model.to\('cuda:1'\)"),
        Row("predict_large", "model", large(model=meta_model), ValueError, "load its weights"),
        Row("predict_large", "source", large(source=5), TypeError, "path or an array-like"),
        Row("predict_large", "source", large(source=np.zeros((2, 3, 20, 20), np.float32)), ValueError, "channel"),
        Row("predict_large", "out", large(out="o.png"), ValueError, r"\.zarr store or a \.tif"),
        Row("predict_large", "probs", large(out="o.tif", probs=True), ValueError, r"\.zarr output"),
        Row("predict_large", "amp", large(amp="fp8"), ValueError, "'bf16' or 'fp16'"),
        Row("predict_large", "batch_size", large(batch_size=0), ValueError, ">= 1"),
        Row("predict_large", "tile_size", large(tile_size=10), ValueError, "smallest usable tile is"),
        Row("predict_large", "resume", large(resume=1), TypeError, "bool"),
    ]


ROWS = [
    *_conv3x3_rows(), *_pixel_gemm_rows("conv1x1"), *_pixel_gemm_rows("upconv2x2"), *_center_crop_concat_rows(),
    *_elastic_warp_rows(), *_border_distances_and_weight_map_rows(), *_simple_point_warp_rows(), *_metric_rows(),
    *_inference_rows(),
]


def _public_functions() -> set[str]:
    metric_functions = {name for name in metrics.__all__ if callable(getattr(metrics, name))
                        and not isinstance(getattr(metrics, name), type)}
    return set(ops.__all__) | metric_functions | {"weight_map", "predict_tiled", "predict_large"}


def test_the_table_walks_every_public_function():
    missing = _public_functions() - {row.function for row in ROWS}
    assert not missing, f"public functions without bad-input rows: {sorted(missing)}"


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.function}-{r.argument}-{i}" for i, r in enumerate(ROWS)])
def test_bad_input_raises_a_clear_error(row, tmp_path):
    with pytest.raises(row.error) as raised:
        row.call(tmp_path)
    message = str(raised.value)
    assert re.search(rf"\b{row.argument}\b", message), f"the message does not name {row.argument!r}: {message}"
    assert re.search(row.expected, message), f"the message does not state {row.expected!r}: {message}"
    assert not any(tmp_path.iterdir()), "refused, yet something was written"
    count("bad_inputs", f"{row.function} (audit table)")


def test_ops_without_an_int32_limit_take_meta_tensors_beyond_it():
    """The C++ crop-concat and warp index in int64, and the torch backends are ATen's: on meta tensors
    past 2**31 elements they give the output shape rather than refusing."""
    skip, x = torch.empty(2, 2**16, 130, 130, device=META), torch.empty(2, 2**16, 128, 128, device=META)
    assert ops.center_crop_concat(skip, x).shape == (2, 2**17, 128, 128)
    image = torch.empty(1, 2**12, 2**10, 2**10, device=META)
    assert ops.elastic_warp(image, torch.empty(1, 2, 3, 3, device=META)).shape == image.shape
    weight = torch.empty(4, 2**17, 3, 3, device=META)
    assert ops.conv3x3_relu(x, weight, skip=skip, backend="torch").shape == (2, 4, 126, 126)
    assert ops.conv1x1(x, torch.empty(3, 2**16, 1, 1, device=META), backend="torch").shape == (2, 3, 128, 128)
    assert ops.upconv2x2(x, torch.empty(2**16, 3, 2, 2, device=META), backend="torch").shape == (2, 3, 256, 256)


# --- aliasing ----------------------------------------------------------------------------------------

def _flat_tensors(values) -> list[torch.Tensor]:
    out = []
    for v in values if isinstance(values, (tuple, list)) else (values,):
        if isinstance(v, (tuple, list)):
            out += _flat_tensors(v)
        elif isinstance(v, torch.Tensor):
            out.append(v)
    return out


def _alias_cases() -> list[tuple[str, Callable, tuple]]:
    """(name, function, inputs), the inputs including zero-stride, channels_last and overlapping views."""
    torch.manual_seed(0)
    base = torch.randn(2, 4, 10, 10)
    x, skip = base[:, 1:3, 1:9, 1:9], base[:, :2]  # two overlapping views of one storage
    expanded = torch.randn(1, 3, 6, 6).expand(2, 3, 6, 6)
    channels_last = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    ids = torch.zeros(1, 6, 6, dtype=torch.long)
    ids[0, 1, 1], ids[0, 4, 4] = 1, 2
    maps = (torch.rand(1, 8, 8) > 0.5).to(torch.uint8)
    model = kaiming_unet(in_channels=1, num_classes=2, base_channels=2, depth=2)
    backends = ["torch"] + (["triton"] if _triton_runs() else [])
    cases = []
    for backend in backends:
        on = (lambda t: t.to(TRITON_DEVICE)) if backend == "triton" else (lambda t: t)
        cases += [
            (f"conv3x3_relu ({backend})", lambda *a, b=backend: ops.conv3x3_relu(*a[:2], skip=a[2], pool=True, backend=b),
             tuple(map(on, (x, torch.randn(3, 4, 3, 3), skip)))),
            (f"conv1x1 ({backend})", lambda *a, b=backend: ops.conv1x1(*a, backend=b),
             tuple(map(on, (expanded, torch.randn(1, 3, 1, 1), torch.randn(1))))),
            (f"upconv2x2 ({backend})", lambda *a, b=backend: ops.upconv2x2(*a, backend=b),
             tuple(map(on, (channels_last, torch.randn(4, 1, 2, 2), torch.randn(1))))),
        ]
    return cases + [
        ("center_crop_concat", ops.center_crop_concat, (skip, x)),
        ("elastic_warp", lambda *a: ops.elastic_warp(*a[:2], label=a[2], weight=a[3]),
         (expanded, torch.randn(2, 2, 3, 3), ids.expand(2, 6, 6), torch.rand(1, 6, 6).expand(2, 6, 6))),
        ("elastic_warp (integer image)", ops.elastic_warp, (ids, torch.zeros(1, 2, 6, 6))),
        ("border_distances", lambda i: ops.border_distances(i, 10.0), (ids,)),
        ("simple_point_warp", ops.simple_point_warp, (maps, maps.flip(-1))),
        ("weight_map", lambda labels: weight_map(labels), ((ids > 0).long(),)),
        ("predict_tiled", lambda image: predict_tiled(model, image, tile_size=100), (torch.rand(1, 1, 20, 20),)),
    ]


@pytest.mark.parametrize("name,function,inputs", _alias_cases(), ids=[c[0] for c in _alias_cases()])
def test_outputs_share_no_storage_with_inputs(name, function, inputs):
    before = [t.clone() for t in inputs]
    outputs = _flat_tensors(function(*inputs))
    assert outputs
    for out in outputs:
        for t in inputs:
            assert out.untyped_storage().data_ptr() != t.untyped_storage().data_ptr(), f"{name}: an output aliases an input"
    for t, saved in zip(inputs, before):
        assert torch.equal(t, saved), f"{name} wrote into an input"

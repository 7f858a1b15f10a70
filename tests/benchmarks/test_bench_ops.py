"""Op cases at CI size: each fused op against its eager PyTorch composite, on a decoder-like
shape (channels 16, 36x36 output) with the op's "auto" backend (Triton on CUDA, torch on CPU).
Ops this build does not have are skipped."""
import pytest
import torch
import torch.nn.functional as F

import unet_fast.ops
from unet_fast.reference import center_crop_concat as reference_crop_concat


def op(name: str):
    function = getattr(unet_fast.ops, name, None)
    if function is None:
        pytest.skip(f"unet_fast.ops.{name} is not in this build")
    return function


@pytest.fixture
def tensors(device):
    generator = torch.Generator().manual_seed(0)

    def make(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    return make


def time_provider(timed, provider: str, fused, eager) -> None:
    """Times the fused op or its eager composite, whichever ``provider`` names."""
    timed(fused if provider == "fused" else eager)


@pytest.mark.parametrize("provider", ["fused", "eager"])
def test_conv3x3_relu_skip_concat(timed, benchmark, tensors, provider):
    conv3x3_relu = op("conv3x3_relu")
    skip, x = tensors(2, 16, 42, 42), tensors(2, 16, 38, 38)
    weight, bias = tensors(16, 32, 3, 3) * 0.1, tensors(16)
    benchmark.group = "conv3x3_relu skip+concat 2x(16+16)x38x38"
    time_provider(timed, provider, lambda: conv3x3_relu(x, weight, bias, skip=skip),
                  lambda: F.relu(F.conv2d(reference_crop_concat(skip, x), weight, bias)))


@pytest.mark.parametrize("provider", ["fused", "eager"])
def test_conv3x3_relu_pool(timed, benchmark, tensors, provider):
    conv3x3_relu = op("conv3x3_relu")
    x, weight, bias = tensors(2, 16, 38, 38), tensors(16, 16, 3, 3) * 0.1, tensors(16)
    benchmark.group = "conv3x3_relu+pool 2x16x38x38"

    def eager():
        y = F.relu(F.conv2d(x, weight, bias))
        return y, F.max_pool2d(y, 2)

    time_provider(timed, provider, lambda: conv3x3_relu(x, weight, bias, pool=True), eager)


@pytest.mark.parametrize("provider", ["fused", "eager"])
def test_upconv2x2(timed, benchmark, tensors, provider):
    upconv2x2 = op("upconv2x2")
    x, weight, bias = tensors(2, 32, 18, 18), tensors(32, 16, 2, 2) * 0.1, tensors(16)
    benchmark.group = "upconv2x2 2x32x18x18 -> 16"
    time_provider(timed, provider, lambda: upconv2x2(x, weight, bias), lambda: F.conv_transpose2d(x, weight, bias, stride=2))


@pytest.mark.parametrize("provider", ["fused", "eager"])
def test_conv1x1(timed, benchmark, tensors, provider):
    conv1x1 = op("conv1x1")
    x, weight, bias = tensors(2, 16, 36, 36), tensors(2, 16, 1, 1), tensors(2)
    benchmark.group = "conv1x1 2x16x36x36 -> 2"
    time_provider(timed, provider, lambda: conv1x1(x, weight, bias), lambda: F.conv2d(x, weight, bias))


@pytest.mark.parametrize("provider", ["fused", "eager"])
def test_center_crop_concat(timed, benchmark, tensors, provider):
    crop_concat = op("center_crop_concat")
    skip, x = tensors(2, 16, 42, 42), tensors(2, 16, 38, 38)
    benchmark.group = "center_crop_concat 2x(16+16)x38x38"
    try:
        crop_concat(skip, x)
    except ImportError as error:  # the C++ extension is not built
        pytest.skip(str(error))
    time_provider(timed, provider, lambda: crop_concat(skip, x), lambda: reference_crop_concat(skip, x))


@pytest.mark.parametrize("provider", ["fused", "grid_sample"])
def test_elastic_warp(timed, benchmark, tensors, device, provider):
    elastic_warp = op("elastic_warp")
    image = tensors(4, 1, 128, 128)
    displacement = tensors(4, 2, 3, 3) * 10.0
    benchmark.group = "elastic_warp 4x1x128x128, 3x3 grid"
    try:
        elastic_warp(image, displacement)
    except ImportError as error:
        pytest.skip(str(error))
    if provider == "fused":
        timed(lambda: elastic_warp(image, displacement))
        return
    ys, xs = torch.meshgrid(torch.arange(128.0, device=device), torch.arange(128.0, device=device), indexing="ij")

    def composite():
        dense = F.interpolate(displacement, size=(128, 128), mode="bicubic", align_corners=True)
        grid = torch.stack([(xs + dense[:, 1]) / 127 * 2 - 1, (ys + dense[:, 0]) / 127 * 2 - 1], dim=-1)
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=True)

    timed(composite)

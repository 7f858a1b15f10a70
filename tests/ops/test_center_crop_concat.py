"""center_crop_concat (C++/CUDA op) against torch.cat of a center crop."""
import pytest
import torch

from tests.ops.op_contract import OpContract
from unet_fast.ops import center_crop_concat
from unet_fast.reference import center_crop_concat as reference

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _inputs(dtype=torch.float32, device="cpu", skip_hw=(11, 14), x_hw=(7, 8), batch=2, c0=3, c1=5):
    skip = torch.randn(batch, c0, *skip_hw, dtype=dtype, device=device)
    x = torch.randn(batch, c1, *x_hw, dtype=dtype, device=device)
    return skip, x


class TestCenterCropConcatContract(OpContract):
    op_name = "center_crop_concat"
    device = "cpu"
    float64_tolerance = {"rtol": 0, "atol": 0}  # a copy: bit-exact

    def public(self, skip, x):
        return center_crop_concat(skip, x)

    def sample_inputs(self, device, dtype):
        return [(tuple(t.requires_grad_() for t in _inputs(dtype, device, skip_hw=skip_hw, x_hw=x_hw)), {})
                for skip_hw, x_hw in (((11, 14), (7, 8)), ((6, 6), (6, 6)))]

    def reference(self, skip, x):
        return reference(skip, x)

    def opcheck_args(self, device):
        skip, x = _inputs(device=device)
        channels_last = tuple(t.to(memory_format=torch.channels_last).requires_grad_() for t in _inputs(device=device))
        return [(skip, x), channels_last]

    def bad_inputs(self):
        skip, x = _inputs()
        return [
            (lambda: center_crop_concat(skip, x.double()), TypeError, "dtype"),
            (lambda: center_crop_concat(skip.long(), x.long()), TypeError, "skip must have dtype"),
            (lambda: center_crop_concat(skip, x[0]), ValueError, "4-d"),
            (lambda: center_crop_concat(skip, x[:1]), ValueError, "batch size"),
            (lambda: center_crop_concat(skip, x.numpy()), TypeError, "torch.Tensor"),
            (lambda: center_crop_concat(*_inputs(skip_hw=(10, 10), x_hw=(7, 8))), ValueError, "even"),
            (lambda: center_crop_concat(*_inputs(skip_hw=(6, 6), x_hw=(8, 6))), ValueError, "even, non-negative"),
        ]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("skip_hw,x_hw", [((11, 14), (7, 8)), ((6, 6), (6, 6)), ((9, 5), (1, 1))])
def test_matches_cat_of_crop_exactly(dtype, channels_last, skip_hw, x_hw):
    skip, x = _inputs(dtype, skip_hw=skip_hw, x_hw=x_hw)
    if channels_last:
        skip, x = skip.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    out = center_crop_concat(skip, x)
    assert torch.equal(out, reference(skip, x))  # a copy: bit-exact
    expected_format = torch.channels_last if channels_last and x_hw != (1, 1) else torch.contiguous_format
    assert out.is_contiguous(memory_format=expected_format)


def test_mixed_layouts_and_non_contiguous_views():
    skip, x = _inputs()
    skip = skip.to(memory_format=torch.channels_last)
    x_view = torch.randn(2, 10, 7, 16)[:, ::2, :, ::2]  # strided in channels and width
    assert torch.equal(center_crop_concat(skip, x_view), reference(skip, x_view))


def test_gradients_route_back_to_the_crop_window():
    skip, x = (t.requires_grad_() for t in _inputs(torch.float64))
    out = center_crop_concat(skip, x)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected = torch.autograd.grad(reference(skip, x), (skip, x), grad)
    assert torch.equal(skip.grad, expected[0]) and torch.equal(x.grad, expected[1])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_matches_cpu(dtype, channels_last):
    skip, x = _inputs(dtype, skip_hw=(37, 41), x_hw=(29, 33), c0=16, c1=16)
    if channels_last:
        skip, x = skip.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    out = center_crop_concat(skip.cuda(), x.cuda())
    assert torch.equal(out.cpu(), reference(skip, x))
    assert out.is_cuda and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    with pytest.raises(ValueError, match="on cuda"):
        center_crop_concat(skip.cuda(), x)

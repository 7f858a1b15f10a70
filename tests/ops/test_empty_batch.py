"""An empty batch (N = 0) works forward and backward on every backend, as in PyTorch: empty outputs,
empty input gradients and zero weight and bias gradients."""
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import TRITON_DEVICE
from unet_fast import UNet
from unet_fast.ops import conv1x1, conv3x3_relu, upconv2x2
from unet_fast.reference import UNet as ReferenceUNet
from unet_fast.reference.functional import center_crop_concat

BACKENDS = ["triton", "torch"]


def _leaf(*shape):
    return torch.randn(*shape, device=TRITON_DEVICE).requires_grad_()


def _check_against_pytorch(ours, theirs, inputs):
    """Same output shapes as PyTorch's, and the same (empty or zero) gradients."""
    ours, theirs = [o if isinstance(o, (tuple, list)) else (o,) for o in (ours, theirs)]
    assert [o.shape for o in ours] == [t.shape for t in theirs]
    ours_grads = torch.autograd.grad([o.sum() for o in ours], inputs, allow_unused=True)
    theirs_grads = torch.autograd.grad([t.sum() for t in theirs], inputs, allow_unused=True)
    for got, expected, tensor in zip(ours_grads, theirs_grads, inputs):
        expected = torch.zeros_like(tensor) if expected is None else expected
        assert got is not None and got.shape == tensor.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_skip, pool", [(False, False), (False, True), (True, False)])
def test_conv3x3_relu_empty_batch(backend, with_skip, pool):
    x, weight, bias = _leaf(0, 3, 10, 10), _leaf(5, 3 + 2 * with_skip, 3, 3), _leaf(5)
    skip = _leaf(0, 2, 14, 14) if with_skip else None
    inputs = [x, weight, bias] + ([skip] if with_skip else [])
    ours = conv3x3_relu(x, weight, bias, skip=skip, pool=pool, backend=backend)
    y = F.relu(F.conv2d(x if skip is None else center_crop_concat(skip, x), weight, bias))
    _check_against_pytorch(ours, (y, F.max_pool2d(y, 2)) if pool else y, inputs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pixel_gemm_ops_empty_batch(backend):
    x, up_weight, weight, bias = _leaf(0, 6, 5, 5), _leaf(6, 4, 2, 2), _leaf(4, 6, 1, 1), _leaf(4)
    _check_against_pytorch(upconv2x2(x, up_weight, bias, backend=backend),
                           F.conv_transpose2d(x, up_weight, bias, stride=2), [x, up_weight, bias])
    _check_against_pytorch(conv1x1(x, weight, bias, backend=backend), F.conv2d(x, weight, bias), [x, weight, bias])


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_empty_batch(backend):
    torch.manual_seed(0)
    reference = ReferenceUNet(depth=2, base_channels=4).to(TRITON_DEVICE)
    model = UNet(depth=2, base_channels=4, backend=backend).to(TRITON_DEVICE)
    model.load_state_dict(reference.state_dict())
    x = torch.randn(0, 1, 20, 20, device=TRITON_DEVICE)
    logits = model(x)
    assert logits.shape == reference(x).shape == (0, 2, 4, 4)
    logits.sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        torch.testing.assert_close(parameter.grad, torch.zeros_like(parameter), rtol=0, atol=0)

"""The oneDNN fused conv + ReLU helper against F.conv2d + relu, with the fused path on and off."""
import pytest
import torch
import torch.nn.functional as F

from unet_fast.ops import onednn

needs_onednn = pytest.mark.skipif(not onednn.ONEDNN_AVAILABLE, reason="this PyTorch build has no oneDNN")


def _inputs(dtype=torch.float32, channels_last=False, bias=True, shape=(2, 5, 13, 11), out_channels=7):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(dtype)
    weight = (torch.randn(out_channels, shape[1], 3, 3, generator=generator) / 5).to(dtype)
    b = torch.randn(out_channels, generator=generator).to(dtype) if bias else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, weight, b


# fp32: a 45-term dot product (5 channels x 9 taps) summed in another order than ATen's: a few ulp
FP32 = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("enabled", [pytest.param(True, marks=needs_onednn), False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_conv2d_relu(enabled, channels_last, bias):
    x, weight, b = _inputs(channels_last=channels_last, bias=bias)
    with onednn.onednn_enabled(enabled):
        assert onednn.runs_onednn(x) == enabled
        y = onednn.conv3x3_relu_cpu(x, weight, b)
    expected = F.relu(F.conv2d(x.contiguous(), weight, b))
    torch.testing.assert_close(y, expected, **FP32)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_other_dtypes_run_the_composite():
    x, weight, b = _inputs(torch.float64)
    assert not onednn.runs_onednn(x)
    torch.testing.assert_close(onednn.conv3x3_relu_cpu(x, weight, b), F.relu(F.conv2d(x, weight, b)), rtol=0, atol=0)


def test_switch_restores_and_checks_its_argument():
    x, _, _ = _inputs()
    before = onednn.runs_onednn(x)
    with pytest.raises(RuntimeError):
        with onednn.onednn_enabled(False):
            raise RuntimeError("inside")
    assert onednn.runs_onednn(x) == before
    with pytest.raises(TypeError, match="enabled must be a bool"):
        with onednn.onednn_enabled("no"):
            pass

"""unet_fast.UNet's two CPU paths against the reference: oneDNN's fused conv + ReLU with the C++
backward kernels, and the PyTorch composite (builds without oneDNN, or ``onednn_enabled(False)``)."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from unet_fast import UNet
from unet_fast.ops import onednn, relu_pool_backward
from unet_fast.reference import UNet as ReferenceUNet
from unet_fast.shapes import valid_input_size

PATHS = [pytest.param(True, id="onednn", marks=pytest.mark.skipif(not onednn.ONEDNN_AVAILABLE, reason="no oneDNN")),
         pytest.param(False, id="composite")]


def _pair(recompute=False, **config):
    torch.manual_seed(0)
    reference = ReferenceUNet(dropout=0.0, **config)
    return reference, UNet.from_reference(reference, backend="auto", recompute=recompute)


def _input(model, batch=2, channels_last=False):
    size = valid_input_size(1, model.depth, model.padding)
    x = torch.randn(batch, model.in_channels, size, size, generator=torch.Generator().manual_seed(1))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _op_names(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@pytest.mark.parametrize("enabled", PATHS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_eval_matches_reference(enabled, channels_last):
    reference, fast = _pair(depth=3, base_channels=8, in_channels=3, num_classes=3)
    reference.eval(), fast.eval()
    x = _input(reference, channels_last=channels_last)
    with torch.no_grad(), onednn.onednn_enabled(enabled):
        out = fast(x)
        names = _op_names(lambda: fast(x))
    # fp32 convolutions summed in another order (oneDNN's blocking, channels_last): a few ulp per layer
    torch.testing.assert_close(out, reference(x), rtol=1e-5, atol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert ("mkldnn::_convolution_pointwise" in names) == enabled


@pytest.mark.parametrize("enabled", PATHS)
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_match_reference(enabled, recompute, channels_last):
    reference, fast = _pair(recompute=recompute, depth=3, base_channels=4, in_channels=2, num_classes=3)
    x = _input(reference, channels_last=channels_last)
    grad_out = None
    results = []
    for model in (reference, fast):
        inputs = x.detach().clone().requires_grad_()
        with onednn.onednn_enabled(enabled):
            out = model(inputs)
            if grad_out is None:
                grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
            names = _op_names(lambda: torch.autograd.grad(model(inputs), [inputs], grad_out))
            grads = torch.autograd.grad(out, [inputs, *model.parameters()], grad_out)
        results.append((out.detach(), grads, names))
    (out_ref, grads_ref, _), (out_fast, grads_fast, names) = results
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-6)
    labels = ["input", *(name for name, _ in reference.named_parameters())]
    for label, got, want in zip(labels, grads_fast, grads_ref):
        # fp32 gradients of the same convolutions; sums over up to a few thousand terms
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m: f"{label}: {m}")
    assert ("mkldnn::_convolution_pointwise" in names) == enabled
    assert ("unet_fast::relu_pool_backward" in names) == relu_pool_backward.HAS_KERNEL


def test_an_sgd_step_gives_the_reference_weights():
    reference, fast = _pair(depth=3, base_channels=8)
    x = _input(reference, batch=1)
    target = torch.randint(0, 2, reference(x).shape[:1] + reference(x).shape[2:],
                           generator=torch.Generator().manual_seed(2))
    for model in (reference, fast):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), target).backward()
            optimizer.step()
    for (name, want), got in zip(reference.named_parameters(), fast.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")

"""relu_pool_backward (C++ CPU kernel, PyTorch composite elsewhere) against autograd of relu + max_pool2d."""
import pytest
import torch
import torch.nn.functional as F

from unet_fast.ops import relu_pool_backward as module
from unet_fast.ops.relu_pool_backward import relu_pool_backward

needs_kernel = pytest.mark.skipif(not module.HAS_KERNEL, reason="unet_fast._C without relu_pool_backward")


def _autograd_reference(z, grad_y, grad_pooled):
    """z's gradient through y = relu(z) and pooled = max_pool2d(y, 2), by autograd (in float64 for
    the reduced-precision dtypes, so that only the kernel's one rounding differs)."""
    z = z.detach().double().requires_grad_(True)
    y = F.relu(z)
    terms = []
    if grad_y is not None:
        terms.append((y * grad_y.double()).sum())
    if grad_pooled is not None:
        terms.append((F.max_pool2d(y, 2) * grad_pooled.double()).sum())
    sum(terms).backward()
    return z.grad


def _case(shape, dtype, with_grad_y, with_pool, channels_last=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # small integers: ties inside pool windows and exact zeros (the ReLU's kink) are common
    z = torch.randint(-3, 4, shape, generator=generator).to(dtype)
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    n, c, h, w = shape
    grad_y = torch.randn(shape, generator=generator).to(dtype) if with_grad_y else None
    grad_pooled = torch.randn((n, c, h // 2, w // 2), generator=generator).to(dtype) if with_pool else None
    return z, grad_y, grad_pooled


# the kernel rounds the sum of two values once in the dtype, the float64 reference not at all: half an
# ulp, i.e. 2^-(mantissa bits + 1) relative (24 bits for fp32, 8 for bf16, 11 for fp16)
TOLERANCES = {torch.float64: (0.0, 0.0), torch.float32: (2**-24, 0.0), torch.bfloat16: (2**-8, 0.0),
              torch.float16: (2**-11, 0.0)}


@needs_kernel
@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("with_grad_y,with_pool", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("shape", [(2, 3, 8, 10), (1, 2, 7, 9), (1, 1, 3, 2), (2, 17, 5, 6)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_kernel_matches_autograd(dtype, with_grad_y, with_pool, shape, channels_last):
    """Both loops of the kernel (NCHW rows; channels_last runs of channels), odd sizes included."""
    z, grad_y, grad_pooled = _case(shape, dtype, with_grad_y, with_pool, channels_last=channels_last)
    if channels_last:
        grad_y, grad_pooled = (None if g is None else g.contiguous(memory_format=torch.channels_last)
                               for g in (grad_y, grad_pooled))
    out = relu_pool_backward(F.relu(z), grad_y, grad_pooled)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), _autograd_reference(z, grad_y, grad_pooled), rtol=rtol, atol=atol)
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@needs_kernel
def test_layouts_and_strided_inputs():
    z, grad_y, grad_pooled = _case((2, 5, 12, 14), torch.float32, True, True, channels_last=True)
    y = F.relu(z)
    out = relu_pool_backward(y, grad_y, grad_pooled.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)  # y's layout
    torch.testing.assert_close(out.double(), _autograd_reference(z, grad_y, grad_pooled), rtol=2**-24, atol=0)
    wide = torch.randn(2, 10, 12, 14)
    sliced = wide[:, 2:7]  # a channel slice, as the decoder's concat gradient gives
    torch.testing.assert_close(relu_pool_backward(y.contiguous(), sliced, None).double(),
                               _autograd_reference(z, sliced, None), rtol=2**-24, atol=0)


@needs_kernel
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_nan_follows_pytorch(memory_format):
    z, grad_y, grad_pooled = _case((1, 2, 6, 6), torch.float32, True, True)
    z[0, 0, 0, 1] = float("nan")  # a window's argmax
    z[0, 1, 2, 2] = z[0, 1, 3, 3] = float("nan")  # two NaNs in one window: the later one wins
    z[0, 1, 4, 5] = float("nan")  # a NaN beside negative numbers only: it still takes the pool's gradient
    z[0, 1, 4, 4] = z[0, 1, 5, 4] = z[0, 1, 5, 5] = -1.0
    z, grad_y, grad_pooled = (t.contiguous(memory_format=memory_format) for t in (z, grad_y, grad_pooled))
    out = relu_pool_backward(F.relu(z), grad_y, grad_pooled)
    torch.testing.assert_close(out.double(), _autograd_reference(z, grad_y, grad_pooled), rtol=2**-24,
                               atol=0, equal_nan=True)


def test_composite_matches_autograd():
    """The fallback off CPU (or without the extension) computes the same formula."""
    z, grad_y, grad_pooled = _case((2, 3, 8, 10), torch.float64, True, True)
    out = module._composite(F.relu(z), grad_y, grad_pooled)
    torch.testing.assert_close(out, _autograd_reference(z, grad_y, grad_pooled), rtol=0, atol=0)
    out = module._composite(F.relu(z), None, grad_pooled)
    torch.testing.assert_close(out, _autograd_reference(z, None, grad_pooled), rtol=0, atol=0)


@needs_kernel
def test_bad_shapes_and_dtypes_are_refused():
    y = torch.rand(1, 2, 6, 6)
    with pytest.raises(RuntimeError, match="grad_pooled must have shape"):
        relu_pool_backward(y, None, torch.rand(1, 2, 2, 3))
    with pytest.raises(RuntimeError, match="grad_y has dtype"):
        relu_pool_backward(y, torch.rand(1, 2, 6, 6, dtype=torch.float64), None)
    with pytest.raises(RuntimeError, match="4-d"):
        relu_pool_backward(torch.rand(2, 6, 6), None, None)


@needs_kernel
def test_opcheck():
    z, grad_y, grad_pooled = _case((1, 2, 6, 8), torch.float32, True, True)
    torch.library.opcheck(torch.ops.unet_fast.relu_pool_backward, (F.relu(z), grad_y, grad_pooled),
                          test_utils=("test_schema", "test_faketensor"))

"""max_pool2x2 (C++ CPU kernel) against F.max_pool2d."""
import pytest
import torch
import torch.nn.functional as F

from unet_fast.ops import max_pool2x2 as module
from unet_fast.ops.max_pool2x2 import max_pool2x2

needs_kernel = pytest.mark.skipif(not module.HAS_KERNEL, reason="unet_fast._C without max_pool2x2")


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 3, 8, 10), (1, 4, 7, 9), (1, 1, 3, 2)])
def test_equals_max_pool2d(dtype, shape):
    y = torch.randint(-3, 4, shape).to(dtype)  # ties in most windows
    out = torch.ops.unet_fast.max_pool2x2(y)  # the kernel itself, not the wrapper's fallback
    assert torch.equal(out, F.max_pool2d(y, 2))  # a selection: bit-exact
    assert out.is_contiguous()


@needs_kernel
def test_nan_and_layouts():
    y = torch.randn(2, 3, 6, 8)
    y[0, 1, 2, 3] = float("nan")
    y[1, 2, 5, 7] = float("nan")
    torch.testing.assert_close(torch.ops.unet_fast.max_pool2x2(y), F.max_pool2d(y, 2), rtol=0, atol=0, equal_nan=True)
    y_cl = y.contiguous(memory_format=torch.channels_last)
    out = torch.ops.unet_fast.max_pool2x2(y_cl)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, F.max_pool2d(y, 2), rtol=0, atol=0, equal_nan=True)


def test_wrapper_matches_max_pool2d_on_any_layout():
    y = torch.randn(1, 4, 10, 12)
    for t in (y, y.contiguous(memory_format=torch.channels_last), y[:, :, 1:, 1:]):
        torch.testing.assert_close(max_pool2x2(t), F.max_pool2d(t, 2), rtol=0, atol=0)


@needs_kernel
def test_refuses_a_non_4d_input_and_passes_opcheck():
    with pytest.raises(RuntimeError, match="4-d"):
        torch.ops.unet_fast.max_pool2x2(torch.rand(3, 4, 4))
    torch.library.opcheck(torch.ops.unet_fast.max_pool2x2, (torch.randn(1, 2, 6, 8),),
                          test_utils=("test_schema", "test_faketensor"))

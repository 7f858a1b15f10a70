"""upconv2x2 against F.conv_transpose2d: the contract and cases of the per-pixel GEMM ops
(tests/ops/pixel_gemm_cases.py), and the GEMM launchers' own cases (tile choice, TF32 layout)."""
import torch
import torch.nn.functional as F

from tests.conftest import TRITON_DEVICE
from tests.conftest import ieee_fp32_convolutions
from tests.ops.pixel_gemm_cases import PixelGemmContract


class TestUpconv2x2Contract(PixelGemmContract):
    op_name = "upconv2x2"


def test_tile_choice_matches_what_the_ahead_of_time_check_compiles():
    """The 128-row tile runs only on channels_last products with 16-aligned depth and columns (the
    specialization that aot_check compiles and checks for register spills); IEEE fp32 has its own."""
    from unet_fast.triton.aot import registered
    from unet_fast.triton.pixel_gemm import gemm_tile_name

    rows = 8 * 52 * 52  # the paper model's second up-convolution at batch 8
    assert gemm_tile_name(rows, 512, 4 * 256, True, torch.bfloat16, "ieee") == "large"
    assert gemm_tile_name(rows, 512, 4 * 256, True, torch.float32, "tf32") == "large"
    assert gemm_tile_name(rows, 512, 4 * 256, False, torch.bfloat16, "ieee") == "small"  # NCHW
    assert gemm_tile_name(rows, 64, 2, True, torch.bfloat16, "ieee") == "small"  # 1x1 conv to 2 classes
    assert gemm_tile_name(rows, 2, 64, True, torch.bfloat16, "ieee") == "small"  # its input gradient
    assert gemm_tile_name(rows // 8, 512, 1024, True, torch.bfloat16, "ieee") == "small"  # small map
    assert gemm_tile_name(rows, 512, 1024, True, torch.float32, "ieee") == "fp32"
    large = {c.label.rsplit(" ", 1)[0] for c in registered() if c.kernel == "pixel_gemm" and c.label.endswith(" large")}
    assert large == {"up-conv forward", "up-conv input grad"}


def test_tf32_products_read_the_weight_k_major():
    """With TF32 the launcher hands the kernels a K-major weight (sm_90's tf32 wgmma reads only that
    layout without 4-byte copies): the up-conv and the 1x1 conv, forward and input gradient, still
    match PyTorch (the ops ask for TF32 only on CUDA; the launchers run it in the interpreter too)."""
    from unet_fast.triton.conv1x1 import conv1x1_backward, conv1x1_forward
    from unet_fast.triton.upconv2x2 import upconv2x2_backward, upconv2x2_forward

    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 6, device=TRITON_DEVICE).to(memory_format=torch.channels_last)
    up_weight, up_bias = torch.randn(16, 8, 2, 2, device=TRITON_DEVICE) / 4, torch.randn(8, device=TRITON_DEVICE)
    grad_up = torch.randn(2, 8, 10, 12, device=TRITON_DEVICE)
    one_weight, one_bias = torch.randn(3, 16, 1, 1, device=TRITON_DEVICE) / 4, torch.randn(3, device=TRITON_DEVICE)
    grad_one = torch.randn(2, 3, 5, 6, device=TRITON_DEVICE)
    with ieee_fp32_convolutions():
        expected = [F.conv_transpose2d(x, up_weight, up_bias, stride=2), F.conv2d(x, one_weight, one_bias)]
        expected_grads = [F.conv2d(grad_up, up_weight, stride=2), F.conv_transpose2d(grad_one, one_weight)]
    fused = [upconv2x2_forward(x, up_weight, up_bias, input_precision="tf32"),
             conv1x1_forward(x, one_weight, one_bias, input_precision="tf32")]
    fused_grads = [upconv2x2_backward(grad_up, x, up_weight, input_precision="tf32")[0],
                   conv1x1_backward(grad_one, x, one_weight, input_precision="tf32")[0]]
    # On a GPU TF32 rounds the operands to 10 mantissa bits: ~1e-3 of the largest output over 64
    # products, 5e-3 is a margin of 5. The interpreter's dot is numpy's fp32 (TF32 rounds nothing):
    # sums of <= 64 products of unit-scale terms round to ~64 * 2**-24 = 4e-6 of their magnitude.
    relative = 5e-3 if TRITON_DEVICE == "cuda" else 1e-5
    for got, want in zip(fused + fused_grads, expected + expected_grads):
        torch.testing.assert_close(got, want, atol=relative * want.abs().max().item(), rtol=0)

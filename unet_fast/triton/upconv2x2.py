"""Launchers of the 2x2 stride-2 transposed convolution (``nn.ConvTranspose2d(C_in, C_out, 2, stride=2)``).

Forward is one GEMM, [N*H*W, C_in] @ [C_in, 4*C_out], whose epilogue adds the bias and scatters
column (i, j, c) of pixel (h, w) to output pixel (2h + i, 2w + j). The backward is two GEMMs over the
same views: grad_x = grad_y_view @ W_packed^T and grad_W_packed = x_view^T @ grad_y_view.
"""
from __future__ import annotations

import torch

from unet_fast.triton.pixel_gemm import pixel_gemm, pixel_gemm_wgrad
from unet_fast.triton.runtime import check_pixels, pixel_rows


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_in, C_out, 2, 2) -> [C_in, 4*C_out] with column (i*2 + j)*C_out + c."""
    c_in, c_out = weight.shape[:2]
    return weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)


def upconv2x2_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
                      input_precision: str = "ieee") -> torch.Tensor:
    """x (N, C_in, H, W), weight (C_in, C_out, 2, 2), bias (C_out,) or None, all one dtype
    -> y (N, C_out, 2H, 2W), channels_last."""
    check_pixels(pixel_rows(x))  # before allocating anything
    n, _, height, width = x.shape
    y = torch.empty((n, weight.shape[1], 2 * height, 2 * width), device=x.device, dtype=x.dtype,
                    memory_format=torch.channels_last)
    return pixel_gemm(x, 1, pack_weight(weight).contiguous(), y, 2, bias, input_precision)


def upconv2x2_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, *, need_input_grad: bool = True,
                       input_precision: str = "ieee") -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """grad_y (N, C_out, 2H, 2W) -> (grad_x (N, C_in, H, W) channels_last or None, grad_weight
    (C_in, C_out, 2, 2), grad_bias (C_out,)), in x's dtype; reductions accumulate in fp32."""
    check_pixels(pixel_rows(x))  # before allocating anything
    c_in, c_out = weight.shape[:2]
    grad_x = None
    if need_input_grad:
        grad_x = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
        pixel_gemm(grad_y, 2, pack_weight(weight).contiguous().t(), grad_x, 1, None, input_precision)
    grad_packed = pixel_gemm_wgrad(x, 1, grad_y, 2, input_precision)
    grad_weight = grad_packed.view(c_in, 2, 2, c_out).permute(0, 3, 1, 2).contiguous().to(weight.dtype)
    grad_bias = grad_y.sum((0, 2, 3), dtype=torch.float32).to(weight.dtype)
    return grad_x, grad_weight, grad_bias

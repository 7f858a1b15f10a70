"""Launchers of the 1x1 convolution (the U-Net's output layer): per-pixel GEMMs.

Forward [N*H*W, C_in] @ W^T + bias; backward grad_x = grad_y_view @ W and grad_W = grad_y_view^T @ x_view.
"""
from __future__ import annotations

import torch

from unet_fast.triton.pixel_gemm import pixel_gemm, pixel_gemm_wgrad
from unet_fast.triton.runtime import check_pixels, pixel_rows


def conv1x1_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
                    input_precision: str = "ieee") -> torch.Tensor:
    """x (N, C_in, H, W), weight (C_out, C_in, 1, 1), bias (C_out,) or None, one dtype
    -> y (N, C_out, H, W), channels_last."""
    check_pixels(pixel_rows(x))  # before allocating anything
    c_out, c_in = weight.shape[:2]
    y = torch.empty((x.shape[0], c_out, *x.shape[2:]), device=x.device, dtype=x.dtype,
                    memory_format=torch.channels_last)
    return pixel_gemm(x, 1, weight.reshape(c_out, c_in).t(), y, 1, bias, input_precision)


def conv1x1_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, *, need_input_grad: bool = True,
                     input_precision: str = "ieee") -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """grad_y (N, C_out, H, W) -> (grad_x (N, C_in, H, W) channels_last or None, grad_weight
    (C_out, C_in, 1, 1), grad_bias (C_out,)), in x's dtype; reductions accumulate in fp32."""
    check_pixels(pixel_rows(x))  # before allocating anything
    c_out, c_in = weight.shape[:2]
    grad_x = None
    if need_input_grad:
        grad_x = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
        pixel_gemm(grad_y, 1, weight.reshape(c_out, c_in), grad_x, 1, None, input_precision)
    grad_weight = pixel_gemm_wgrad(grad_y, 1, x, 1, input_precision).view(c_out, c_in, 1, 1).to(weight.dtype)
    grad_bias = grad_y.sum((0, 2, 3), dtype=torch.float32).to(weight.dtype)
    return grad_x, grad_weight, grad_bias

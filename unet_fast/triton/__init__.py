"""Triton kernels and their launchers. Importing this package registers every kernel
configuration with ``unet_fast.triton.aot`` for the ahead-of-time check."""
from unet_fast.triton import conv1x1, conv3x3, pixel_gemm, upconv2x2  # noqa: F401

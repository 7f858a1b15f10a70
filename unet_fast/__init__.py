"""unet_fast: the original U-Net with fused Triton and CUDA kernels."""
from unet_fast._ext import build_info
from unet_fast._version import __version__
from unet_fast import ops, reference, shapes
from unet_fast.model import UNet

__all__ = ["__version__", "build_info", "ops", "reference", "shapes", "UNet"]

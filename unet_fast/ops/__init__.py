"""Public ops: input validation, backend choice, torch.library registration."""
from unet_fast.ops.conv3x3 import conv3x3_relu
from unet_fast.ops.crop_concat import center_crop_concat
from unet_fast.ops.elastic import elastic_warp
from unet_fast.ops.gemm_convs import conv1x1, upconv2x2

__all__ = ["center_crop_concat", "elastic_warp", "conv3x3_relu", "conv1x1", "upconv2x2"]

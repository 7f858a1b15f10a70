"""Public ops: input validation, backend choice, torch.library registration; one module per op.

Schemas of center_crop_concat, elastic_warp, border_distances and simple_point_warp live in csrc/unet_fast.cpp (C++/CUDA
kernels); conv3x3_relu, upconv2x2 and conv1x1 are defined in Python (``torch.library.custom_op``)
over the Triton kernels of ``unet_fast.triton``. ``unet_fast.ops.backend`` owns the backend choice.
"""
from unet_fast.ops.border_distances import border_distances
from unet_fast.ops.center_crop_concat import center_crop_concat
from unet_fast.ops.conv1x1 import conv1x1
from unet_fast.ops.conv3x3_relu import conv3x3_relu
from unet_fast.ops.elastic_warp import elastic_warp
from unet_fast.ops.simple_point_warp import simple_point_warp
from unet_fast.ops.upconv2x2 import upconv2x2

__all__ = [
    "border_distances", "center_crop_concat", "elastic_warp", "conv3x3_relu", "conv1x1", "simple_point_warp", "upconv2x2",
]

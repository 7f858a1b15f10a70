"""Paper-exact PyTorch references: the ground truth every fused kernel is tested against."""
from unet_fast.reference.functional import center_crop, center_crop_concat
from unet_fast.reference.unet import UNet

__all__ = ["UNet", "center_crop", "center_crop_concat"]

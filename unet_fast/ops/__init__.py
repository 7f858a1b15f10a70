"""Public ops: input validation, backend choice, torch.library registration."""
from unet_fast.ops.crop_concat import center_crop_concat

__all__ = ["center_crop_concat"]

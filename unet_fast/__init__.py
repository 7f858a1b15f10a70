"""unet_fast: the original U-Net with fused Triton and CUDA kernels."""
from unet_fast._ext import build_info
from unet_fast._version import __version__
from unet_fast import ops, reference, shapes
from unet_fast.model import UNet

# The workflow's entry points, imported on first access so that ``import unet_fast`` stays light
# (no scipy, numpy image I/O or matplotlib until they are used). Functions are not exported under a
# submodule's own name (``unet_fast.train`` is the module, ``unet_fast.train.train`` the function).
_LAZY_ATTRIBUTES = {
    "predict_tiled": "unet_fast.inference",
    "predict_large": "unet_fast.inference",
    "TrainConfig": "unet_fast.train",
    "load_model": "unet_fast.train",
    "weighted_cross_entropy": "unet_fast.losses",
    "dice_loss": "unet_fast.losses",
    "segmentation_metrics": "unet_fast.metrics",
    "ElasticAugment": "unet_fast.augment",
    "SyntheticEMDataset": "unet_fast.data",
    "ImageFolderDataset": "unet_fast.data",
}
_LAZY_SUBMODULES = ("augment", "checkpoint", "data", "inference", "losses", "metrics", "train", "weight_map")


def __getattr__(name: str):
    import importlib

    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    elif name in _LAZY_SUBMODULES:
        value = importlib.import_module(f"unet_fast.{name}")
    else:
        raise AttributeError(f"module 'unet_fast' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES) | set(_LAZY_SUBMODULES))


__all__ = ["__version__", "build_info", "ops", "reference", "shapes", "UNet", *_LAZY_ATTRIBUTES]

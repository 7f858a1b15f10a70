"""Overlap-tile inference: in memory (:func:`predict_tiled`) and streamed from a file or array of any
size into a Zarr store or BigTIFF (:func:`predict_large`).

``predict_large`` needs the ``io`` extra (``pip install unet-fast[io]``: zarr and tifffile); they are
imported only when it runs, so ``import unet_fast.inference`` works without them.
"""
from unet_fast.inference.streaming import predict_large
from unet_fast.inference.tiling import (
    DEFAULT_TILE_SIZE,
    DIHEDRAL,
    MEMORY_FRACTION,
    context_margin,
    default_tile_size,
    free_device_memory,
    mirror_pad,
    predict_tiled,
    tile_activation_bytes,
)

__all__ = [
    "DEFAULT_TILE_SIZE",
    "DIHEDRAL",
    "MEMORY_FRACTION",
    "context_margin",
    "default_tile_size",
    "free_device_memory",
    "mirror_pad",
    "predict_large",
    "predict_tiled",
    "tile_activation_bytes",
]

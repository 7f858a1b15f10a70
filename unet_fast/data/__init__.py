"""Training data: the embedded synthetic EM data set, image folders / TIFF stacks, tile sampling."""
from unet_fast.data.folder import ImageFolderDataset, read_image, read_label, read_pages
from unet_fast.data.synthetic import SyntheticEMDataset, make_synthetic_em, synthetic_em_sample, write_synthetic_mosaic
from unet_fast.data.tiles import Tile, TileSampler, fit_tile_size

__all__ = [
    "ImageFolderDataset",
    "SyntheticEMDataset",
    "Tile",
    "TileSampler",
    "fit_tile_size",
    "make_synthetic_em",
    "read_image",
    "read_label",
    "read_pages",
    "synthetic_em_sample",
    "write_synthetic_mosaic",
]

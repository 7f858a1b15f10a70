"""The embedded default dataset: synthetic EM-like images of cells separated by thin membranes.

Every image is drawn by this module from a seed, so the data ships as code and is reproducible bit
for bit: sample ``i`` of ``make_synthetic_em(n, seed=s)`` depends only on ``(s, i, size, cell_size)``,
not on ``n``. The construction:

1. Cell centres on a jittered hexagonal grid (spacing ``cell_size`` px, varied per image), extended
   one spacing beyond the image so border cells are cut like real ones.
2. A smooth random displacement field warps pixel coordinates; each pixel's nearest and
   second-nearest centre (a Voronoi tessellation of the warped plane) give its cell and its
   distance to the cell border (the bisector of the two centres), so borders wiggle.
3. Pixels closer to a border than the local membrane half-width (1 to 3.5 px, smoothly varying)
   are membrane; cell pixels 4-adjacent to another cell's pixels are made membrane too, so cells
   are always separated (4-connectivity) and the labels are exact by construction.
4. The image: per-cell brightness, fine texture, dark organelle-like blobs inside cells, dark
   membranes with a Gaussian profile of varying depth, uneven illumination, optical blur and
   Gaussian noise, clipped to [0, 1].

Labels follow ISBI 2012 after its 255 -> 1 mapping: 1 = cell, 0 = membrane.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

MEMBRANE, CELL = 0, 1
NUM_CLASSES = 2


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise varying over about ``scale`` pixels (cubic upsampling of a coarse grid)."""
    coarse_shape = tuple(max(2, int(np.ceil(s / scale))) + 1 for s in shape)
    coarse = torch.from_numpy(rng.standard_normal(coarse_shape))[None, None]
    # Bicubic interpolation through the coarse grid, whose corners land on the image corners.
    fine = torch.nn.functional.interpolate(coarse, size=shape, mode="bicubic", align_corners=True)
    return fine[0, 0].numpy()


def _cell_centres(rng: np.random.Generator, size: int, spacing: float) -> np.ndarray:
    row_step = spacing * np.sqrt(3) / 2
    rows = np.arange(-row_step, size + 2 * row_step, row_step)
    cols = np.arange(-spacing, size + 2 * spacing, spacing)
    yy, xx = np.meshgrid(rows, cols, indexing="ij")
    xx = xx + (np.arange(len(rows))[:, None] % 2) * spacing / 2  # hexagonal: odd rows shifted
    centres = np.stack([yy.ravel(), xx.ravel()], axis=1)
    return centres + rng.uniform(-0.3, 0.3, centres.shape) * spacing


def _separate_touching_cells(instances: np.ndarray) -> np.ndarray:
    """Sets to 0 (membrane) every cell pixel 4-adjacent to a pixel of another cell."""
    touching = np.zeros(instances.shape, dtype=bool)
    for axis in (0, 1):
        a = instances.take(np.arange(instances.shape[axis] - 1), axis=axis)
        b = instances.take(np.arange(1, instances.shape[axis]), axis=axis)
        clash = (a != b) & (a != 0) & (b != 0)
        lower = [slice(None)] * 2
        upper = [slice(None)] * 2
        lower[axis] = slice(0, -1)
        upper[axis] = slice(1, None)
        touching[tuple(lower)] |= clash
        touching[tuple(upper)] |= clash
    return np.where(touching, 0, instances)


def synthetic_em_sample(
    size: int = 512, seed: int = 0, index: int = 0, cell_size: float = 48.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic EM image with exact labels: sample ``index`` of the data set ``seed``.

    Args:
        size: height and width in pixels; cell_size: mean cell diameter in pixels (varied +-20%).
    Returns:
        image (size, size) float32 in [0, 1]; labels (size, size) int64 (1 = cell, 0 = membrane);
        instances (size, size) int64: the 4-connected components of the cells, ids 1..M, 0 on membrane.
    """
    rng = np.random.default_rng([seed, index])
    shape = (size, size)
    spacing = cell_size * rng.uniform(0.8, 1.2)

    centres = _cell_centres(rng, size, spacing)
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    warp = 0.12 * spacing
    points = np.stack(
        [(yy + warp * _smooth_noise(rng, shape, spacing)).ravel(), (xx + warp * _smooth_noise(rng, shape, spacing)).ravel()],
        axis=1,
    )
    dist, nearest = cKDTree(centres).query(points, k=2)
    separation = np.linalg.norm(centres[nearest[:, 0]] - centres[nearest[:, 1]], axis=1)
    border_distance = ((dist[:, 1] ** 2 - dist[:, 0] ** 2) / (2 * separation)).reshape(shape)
    cell_of_pixel = nearest[:, 0].reshape(shape)

    half_width = np.clip(rng.uniform(1.6, 2.4) + 0.5 * _smooth_noise(rng, shape, 2 * spacing), 1.0, 3.5)
    membrane = border_distance < half_width
    cells = _separate_touching_cells(np.where(membrane, 0, cell_of_pixel + 1))
    labels = np.where(cells > 0, CELL, MEMBRANE).astype(np.int64)
    # Instances are the connected components of the cell class, as a semantic label map defines them.
    instances, _ = ndimage.label(labels)

    # Appearance: every term is a smooth or per-cell function of the same geometry.
    brightness = rng.uniform(0.55, 0.8, len(centres))[cell_of_pixel]
    texture = 0.15 * ndimage.gaussian_filter(rng.standard_normal(shape), 1.2) + 0.03 * _smooth_noise(rng, shape, 6.0)
    blob_centres = np.zeros(shape)
    count = rng.poisson(0.6 * (size / spacing) ** 2)
    blob_centres[rng.integers(0, size, count), rng.integers(0, size, count)] = rng.uniform(0.5, 1.0, count)
    blobs = ndimage.gaussian_filter(blob_centres, rng.uniform(2.5, 4.0))
    blobs = 0.3 * blobs / max(blobs.max(), 1e-12)
    depth = np.clip(rng.uniform(0.55, 0.75) + 0.1 * _smooth_noise(rng, shape, spacing), 0.3, 0.85)
    profile = depth * np.exp(-0.5 * (border_distance / (0.85 * half_width)) ** 2)
    illumination = 0.06 * _smooth_noise(rng, shape, size / 2)
    image = (brightness + texture - blobs) * (1 - profile) + illumination
    image = ndimage.gaussian_filter(image, rng.uniform(0.6, 1.0))
    image = image + rng.uniform(0.02, 0.05) * rng.standard_normal(shape)
    return np.clip(image, 0, 1).astype(np.float32), labels, instances.astype(np.int64)


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def make_synthetic_em(
    num_images: int, size: int = 512, seed: int = 0, *, cell_size: float = 48.0, return_instances: bool = False
):
    """``num_images`` synthetic EM images with exact labels (about 0.3 s per 512x512 image on one core).

    Args:
        num_images: how many images; image ``i`` is the same for any ``num_images > i``.
        size: height and width in pixels (>= 16).
        seed: the data set's seed.
        cell_size: mean cell diameter in pixels (varied +-20% per image); 48 gives about 110 cells at 512.
        return_instances: also return the cell instance maps.
    Returns:
        images (N, 1, size, size) float32 in [0, 1], labels (N, size, size) int64 (1 = cell,
        0 = membrane) and, with ``return_instances``, instances (N, size, size) int64 (0 = membrane).
    """
    num_images = _check_positive_int("num_images", num_images)
    size = _check_positive_int("size", size, minimum=16)
    if not isinstance(cell_size, (int, float)) or not 8 <= cell_size <= size:
        raise ValueError(f"cell_size must be a number in [8, size={size}], got {cell_size!r}")
    samples = [synthetic_em_sample(size, int(seed), i, float(cell_size)) for i in range(num_images)]
    images = torch.from_numpy(np.stack([s[0] for s in samples]))[:, None]
    labels = torch.from_numpy(np.stack([s[1] for s in samples]))
    if not return_instances:
        return images, labels
    return images, labels, torch.from_numpy(np.stack([s[2] for s in samples]))


class SyntheticEMDataset(torch.utils.data.Dataset):
    """The embedded data set as a map-style Dataset, generated once at construction.

    Item ``i`` is ``(image (1, H, W) float32 in [0, 1], label (H, W) int64)``. Attributes:
    ``images`` (N, 1, H, W), ``labels`` (N, H, W), ``instances`` (N, H, W), ``num_classes`` = 2,
    ``in_channels`` = 1 and ``names`` ("synthetic_000", ...), the same interface as
    :class:`unet_fast.data.ImageFolderDataset`.
    """

    num_classes = NUM_CLASSES
    in_channels = 1

    def __init__(self, num_images: int, size: int = 512, seed: int = 0, *, cell_size: float = 48.0):
        self.images, self.labels, self.instances = make_synthetic_em(
            num_images, size, seed, cell_size=cell_size, return_instances=True
        )
        self.names = [f"synthetic_{i:03d}" for i in range(num_images)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


def _mosaic_tiles(height: int, width: int, tile: int, seed: int, distinct: int, cell_size: float):
    """(top, left, image uint8, labels uint8) tiles of the mosaic, row by row; each tile one of
    ``distinct`` samples under one of the 8 flips/rotations, both drawn from ``(seed, row, column)``."""
    samples: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            rng = np.random.default_rng([seed, top // tile, left // tile])
            index, turns, flip = int(rng.integers(distinct)), int(rng.integers(4)), bool(rng.integers(2))
            if index not in samples:
                image, labels, _ = synthetic_em_sample(tile, seed, index, cell_size)
                samples[index] = (np.round(image * 255).astype(np.uint8), labels.astype(np.uint8))
            image, labels = (np.rot90(a[:, ::-1] if flip else a, turns) for a in samples[index])
            h, w = min(tile, height - top), min(tile, width - left)
            yield top, left, np.ascontiguousarray(image[:h, :w]), np.ascontiguousarray(labels[:h, :w])


def write_synthetic_mosaic(path, height: int, width: int, *, seed: int = 0, tile: int = 512, distinct: int = 8,
                           cell_size: float = 48.0, labels_path=None) -> None:
    """Write a large synthetic EM image (uint8, 0-255) tile by tile, never whole in memory.

    The mosaic is a grid of ``tile`` x ``tile`` synthetic images (:func:`synthetic_em_sample`), each
    one of ``distinct`` samples of the data set ``seed`` flipped/rotated at random, deterministic by
    ``seed``. ``path``: a ``.tif``/``.tiff`` (tiled BigTIFF, uncompressed) or ``.zarr`` (an array at
    the store's root, chunked by tile). ``labels_path``: also write the labels (1 = cell) alike.
    """
    height = _check_positive_int("height", height)
    width = _check_positive_int("width", width)
    tile = _check_positive_int("tile", tile, minimum=16)
    distinct = _check_positive_int("distinct", distinct)
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16 (TIFF tiles are), got {tile}")
    for target, part in ((path, 2), (labels_path, 3)):
        if target is None:
            continue
        tiles = _mosaic_tiles(height, width, tile, int(seed), distinct, float(cell_size))
        suffix = str(target).lower().rsplit(".", 1)[-1]
        if suffix in ("tif", "tiff"):
            import tifffile

            def padded(tiles):
                for values in tiles:
                    full = np.zeros((tile, tile), np.uint8)
                    full[: values[part].shape[0], : values[part].shape[1]] = values[part]
                    yield full

            tifffile.imwrite(target, data=padded(tiles), shape=(height, width), dtype=np.uint8,
                             tile=(tile, tile), bigtiff=True)
        elif suffix == "zarr":
            try:
                import zarr
            except ImportError as error:
                raise ImportError("writing Zarr needs zarr 3: pip install 'unet-fast[io]'") from error
            array = zarr.create_array(str(target), shape=(height, width), chunks=(tile, tile), dtype=np.uint8,
                                      overwrite=True)
            for values in tiles:
                top, left, data = values[0], values[1], values[part]
                array[top : top + data.shape[0], left : left + data.shape[1]] = data
        else:
            raise ValueError(f"{target}: the mosaic is written as .tif/.tiff or .zarr")

"""Segments (instances) from a U-Net's boundary or cell probability map, for connectomics.

Two methods, both returning (H, W) uint32 label images (0 = boundary / no segment, segments
numbered 1..n in raster order of their first pixel after a size filter):

- ``"cc"``: connected components of the thresholded cell map (4- or 8-connected).
- ``"watershed"``: scikit-image's seeded watershed flooding the boundary probability inside the
  thresholded cell map; seeds are the maxima of the cell map's distance transform
  (``seeds="distance"``, which splits cells joined by a thin neck) or the connected cores where the
  cell probability reaches ``core_threshold`` (``seeds="cores"``).

Segments smaller than ``min_size`` pixels are removed (set to 0).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.measure import label
from skimage.morphology import remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

METHODS = ("cc", "watershed")
SEED_METHODS = ("distance", "cores")


def _cell_probability(probability, kind: str) -> np.ndarray:
    probability = np.asarray(probability)
    if probability.ndim != 2:
        raise ValueError(f"probability must be an (H, W) map, got shape {probability.shape}")
    if probability.dtype.kind not in "fub":
        raise TypeError(f"probability must be a numeric map in [0, 1], got dtype {probability.dtype}")
    probability = probability.astype(np.float32)
    if not np.all(np.isfinite(probability)) or probability.min(initial=0) < 0 or probability.max(initial=0) > 1:
        raise ValueError("probability must hold finite values in [0, 1]")
    if kind not in ("cell", "boundary"):
        raise ValueError(f"kind must be 'cell' or 'boundary', got {kind!r}")
    return probability if kind == "cell" else 1.0 - probability


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def _finish(segments: np.ndarray, min_size: int) -> np.ndarray:
    if min_size > 1:
        segments = remove_small_objects(segments, max_size=min_size - 1)
    return relabel_sequential(segments)[0].astype(np.uint32)


def segment(probability, method: str = "cc", *, kind: str = "cell", threshold: float = 0.5,
            connectivity: int = 4, seeds: str = "distance", core_threshold: float = 0.9,
            min_distance: int = 3, min_size: int = 0) -> np.ndarray:
    """Segments of one probability map.

    Args:
        probability: (H, W) probability in [0, 1] of cells (``kind="cell"``) or of boundary
            (``kind="boundary"``, used as 1 - probability).
        method: ``"cc"`` or ``"watershed"`` (module docstring).
        threshold: cells where the cell probability >= threshold.
        connectivity: 4 or 8, of the connected components (``"cc"``) and of the watershed's
            neighbourhood.
        seeds: ``"distance"`` or ``"cores"`` (watershed only).
        core_threshold: the cell probability of the cores (``seeds="cores"``).
        min_distance: the least distance in pixels between two distance-transform seeds.
        min_size: segments of fewer pixels are removed.
    Returns:
        (H, W) uint32 segment ids, 0 = no segment.
    """
    cells = _cell_probability(probability, kind)
    threshold = _check_fraction("threshold", threshold)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    if int(min_size) != min_size or min_size < 0:
        raise ValueError(f"min_size must be an integer >= 0, got {min_size}")
    mask = cells >= threshold
    step = 1 if connectivity == 4 else 2
    components = label(mask, connectivity=step)
    if method == "cc":
        return _finish(components, int(min_size))
    if seeds == "distance":
        if int(min_distance) != min_distance or min_distance < 1:
            raise ValueError(f"min_distance must be an integer >= 1, got {min_distance}")
        distance = ndimage.distance_transform_edt(mask)
        peaks = peak_local_max(distance, min_distance=int(min_distance), labels=components, exclude_border=False)
        markers = np.zeros(mask.shape, dtype=np.int64)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    elif seeds == "cores":
        core_threshold = _check_fraction("core_threshold", core_threshold)
        markers = label(cells >= max(core_threshold, threshold), connectivity=step)
    else:
        raise ValueError(f"seeds must be one of {', '.join(SEED_METHODS)}, got {seeds!r}")
    segments = watershed(1.0 - cells, markers, connectivity=step, mask=mask)
    return _finish(segments, int(min_size))


def write_segments(path, probabilities, method: str = "cc", foreground: int = 1) -> np.ndarray:
    """Segment a predicted (K, H, W) class probability map (``foreground`` = the cell class) and
    write the uint32 segments as a TIFF at path; returns them."""
    import tifffile

    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 3 or not 0 <= foreground < probabilities.shape[0]:
        raise ValueError(f"probabilities must be (K, H, W) with K > {foreground}, got shape {probabilities.shape}")
    segments = segment(np.clip(probabilities[foreground], 0.0, 1.0), method)
    tifffile.imwrite(Path(path), segments)
    return segments

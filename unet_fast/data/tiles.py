"""Random tile origins for training on large images, optionally oversampling rare classes.

A tile is a ``(tile_h, tile_w)`` window of a sample's label map at ``(top, left)``: the region the
loss sees (for a valid-padding U-Net the network input is that window grown by the model's border,
which the trainer mirror-pads). Where the tile is larger than the image the only origin is 0 and
the window extends past the image: the caller pads.

Uniform sampling (default) draws a sample with probability proportional to its number of possible
origins, then an origin uniformly: every window of the data set is equally likely.

Class-balanced sampling (``class_balanced=True``, the remedy for rare classes) draws from candidate
origins on a grid with step ``grid_step`` (default tile / 16, plus the last origin on each axis) of
every sample. Let ``p_k`` be the fraction of all candidates whose window contains class k; a
candidate is drawn with probability proportional to ``max(1 / p_k)`` over the classes it contains.
A class found in 5% of the windows is thus seen about 20x more often than under uniform sampling,
while classes present everywhere leave the sampling uniform over the grid.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from unet_fast import shapes
from unet_fast.errors import DataError


@dataclass(frozen=True)
class Tile:
    """Where a tile lies: sample ``index``, window origin ``(top, left)`` in that sample's label map."""

    index: int
    top: int
    left: int


def fit_tile_size(tile_size: int, image_sizes: Sequence[tuple[str, tuple[int, int]]], depth: int = 5,
                  padding: str = "valid") -> tuple[int, str | None]:
    """(input tile, note): the largest valid input size <= ``tile_size`` whose output window fits in
    every image of ``image_sizes`` (pairs of a name and its (H, W)), and a note saying so when that
    is smaller than the largest valid size <= ``tile_size`` (None otherwise).

    ``DataError`` naming the smallest image when not even the smallest valid tile's output fits.
    """
    requested = shapes.largest_valid_input_size(tile_size, depth, padding)
    if requested is None:
        raise ValueError(shapes.invalid_size_message(tile_size, depth, padding))
    name, (height, width) = min(image_sizes, key=lambda item: min(item[1]))
    tile = requested
    while tile is not None and shapes.output_size(tile, depth, padding) > min(height, width):
        tile = shapes.largest_valid_input_size(tile - 1, depth, padding)
    if tile is None:
        smallest = shapes.valid_input_size(1, depth, padding)
        raise DataError(
            f"training image {name} is {height}x{width}, smaller than the {shapes.output_size(smallest, depth, padding)} px "
            f"output window of the smallest valid tile ({smallest} px) of a depth-{depth} network with padding "
            f"{padding!r}: use larger images or a smaller --depth"
        )
    if tile == requested:
        return tile, None
    return tile, (
        f"note: the {shapes.output_size(requested, depth, padding)} px output window of {requested} px tiles "
        f"(--tile-size {tile_size}) does not fit in training image {name} ({height}x{width}); training uses "
        f"{tile} px tiles ({shapes.output_size(tile, depth, padding)} px output), the largest that fit"
    )


def _tile_shape(tile_size) -> tuple[int, int]:
    if isinstance(tile_size, (int, np.integer)) and not isinstance(tile_size, bool):
        tile_size = (int(tile_size), int(tile_size))
    if (
        not isinstance(tile_size, (tuple, list))
        or len(tile_size) != 2
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in tile_size)
    ):
        raise ValueError(f"tile_size must be a positive int or a pair (height, width) of them, got {tile_size!r}")
    return int(tile_size[0]), int(tile_size[1])


def _origins(length: int, tile: int, step: int) -> np.ndarray:
    last = max(length - tile, 0)
    return np.unique(np.append(np.arange(0, last + 1, step), last))


def _window_counts(labels: np.ndarray, num_classes: int, tile: tuple[int, int], tops, lefts) -> np.ndarray:
    """(K, len(tops), len(lefts)) pixel counts of each class in each window (clipped to the image), by integral images."""
    height, width = labels.shape
    bottoms = np.minimum(tops + tile[0], height)
    rights = np.minimum(lefts + tile[1], width)
    counts = np.empty((num_classes, len(tops), len(lefts)), dtype=np.int64)
    for k in range(num_classes):
        integral = np.zeros((height + 1, width + 1), dtype=np.int64)
        integral[1:, 1:] = (labels == k).cumsum(0).cumsum(1)
        counts[k] = (
            integral[np.ix_(bottoms, rights)]
            - integral[np.ix_(tops, rights)]
            - integral[np.ix_(bottoms, lefts)]
            + integral[np.ix_(tops, lefts)]
        )
    return counts


class TileSampler:
    """An endless iterator of random :class:`Tile` s over a list of label maps.

    Args:
        labels: per sample, an (H, W) integer class map (tensor or array); sizes may differ.
        tile_size: int or (height, width) of the window.
        num_classes: K; needed for class-balanced sampling (labels must lie in [0, K)).
        class_balanced: oversample windows containing rare classes (see the module docstring).
        grid_step: candidate grid step for class-balanced sampling (default max(1, min(tile) // 16)).
        seed: seed of the sampler's own numpy generator (e.g. add the DDP rank for distinct streams).

    ``state_dict()`` / ``load_state_dict()`` save and restore the generator (JSON-serializable), so a
    resumed run draws the same tiles.
    """

    def __init__(
        self,
        labels: Sequence,
        tile_size,
        *,
        num_classes: int = 2,
        class_balanced: bool = False,
        grid_step: int | None = None,
        seed: int = 0,
    ):
        self.tile = _tile_shape(tile_size)
        if len(labels) == 0:
            raise ValueError("labels is empty: the sampler needs at least one label map")
        maps = [l.cpu().numpy() if isinstance(l, torch.Tensor) else np.asarray(l) for l in labels]
        for i, label in enumerate(maps):
            if label.ndim != 2:
                raise ValueError(f"labels[{i}] must be a 2-d (H, W) class map, got shape {label.shape}")
        self.shapes = [label.shape for label in maps]
        self.class_balanced = bool(class_balanced)
        self._rng = np.random.default_rng(seed)
        # Uniform sampling: sample i with probability proportional to its number of origins.
        ranges = np.array([[max(h - self.tile[0], 0) + 1, max(w - self.tile[1], 0) + 1] for h, w in self.shapes])
        self._origin_ranges = ranges
        self._sample_probs = ranges.prod(1) / ranges.prod(1).sum()
        if self.class_balanced:
            self._build_candidates(maps, num_classes, grid_step)

    def _build_candidates(self, maps, num_classes: int, grid_step: int | None) -> None:
        if grid_step is None:
            grid_step = max(1, min(self.tile) // 16)
        if isinstance(grid_step, bool) or not isinstance(grid_step, (int, np.integer)) or grid_step < 1:
            raise ValueError(f"grid_step must be a positive int, got {grid_step!r}")
        present, candidates = [], []
        for i, label in enumerate(maps):
            if label.size and (label.min() < 0 or label.max() >= num_classes):
                raise ValueError(f"labels[{i}] has values outside [0, {num_classes - 1}] (num_classes={num_classes})")
            tops = _origins(label.shape[0], self.tile[0], grid_step)
            lefts = _origins(label.shape[1], self.tile[1], grid_step)
            counts = _window_counts(label, num_classes, self.tile, tops, lefts)
            present.append((counts > 0).reshape(num_classes, -1).T)
            grid_top, grid_left = np.meshgrid(tops, lefts, indexing="ij")
            candidates.append(np.stack([np.full(grid_top.size, i), grid_top.ravel(), grid_left.ravel()], axis=1))
        present_all = np.concatenate(present)  # (candidates, K)
        self._candidates = np.concatenate(candidates)
        fraction = present_all.mean(axis=0)
        self.class_window_fraction = fraction  # p_k, for inspection
        inverse = np.where(fraction > 0, 1.0 / np.maximum(fraction, 1e-300), 0.0)
        weights = (present_all * inverse).max(axis=1)
        self._candidate_probs = weights / weights.sum()

    def sample(self) -> Tile:
        """One random tile."""
        if self.class_balanced:
            index, top, left = self._candidates[self._rng.choice(len(self._candidates), p=self._candidate_probs)]
            return Tile(int(index), int(top), int(left))
        index = int(self._rng.choice(len(self.shapes), p=self._sample_probs))
        top = int(self._rng.integers(self._origin_ranges[index, 0]))
        left = int(self._rng.integers(self._origin_ranges[index, 1]))
        return Tile(index, top, left)

    def __iter__(self):
        return self

    def __next__(self) -> Tile:
        return self.sample()

    def state_dict(self) -> dict:
        return {"bit_generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self._rng.bit_generator.state = state["bit_generator"]

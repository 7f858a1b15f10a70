"""Geometry of streamed overlap-tile prediction: output chunks and the model tiles that compute them.

The output is cut into chunks on a fixed grid (the Zarr chunks). Each chunk is computed, for every
test-time transform, by ONE model tile in that transform's frame whose origin in the mirror-padded
transformed image is a multiple of the pooling period ``2**(depth-1)``: the alignment that makes
:func:`~unet_fast.inference.tiling.predict_tiled` exact, so both give the same values up to float
summation order. A chunk edge ``c`` fits one aligned tile in every frame when
``c <= kept - step + 1`` (the tile's kept output ``kept``, the period ``step``: an aligned origin lies
at most ``step - 1`` before the chunk); without test-time augmentation chunks start on multiples of
``step`` and may be ``floor(kept / step) * step`` long, as ``predict_tiled``'s stride.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from unet_fast import shapes
from unet_fast.inference.tiling import _transform


def reflect_indices(positions: np.ndarray, size: int) -> np.ndarray:
    """Indices into an axis of ``size`` pixels that mirror padding (``mirror_pad``) reads for
    ``positions`` (image coordinates, possibly outside [0, size)): period ``2 * (size - 1)``."""
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    phase = np.remainder(positions, period)
    return np.where(phase < size, phase, period - phase)


@dataclass(frozen=True)
class AxisTiling:
    """The tiling of one image axis of ``size`` pixels: tile edge, kept output, chunk length."""

    size: int
    tile: int
    kept: int
    margin: int
    step: int
    chunk: int

    @classmethod
    def plan(cls, size: int, tile_cap: int, margin: int, depth: int, padding: str, tta: bool) -> "AxisTiling":
        step = 2 ** (depth - 1)
        tile = min(tile_cap, shapes.valid_input_size(size + 2 * margin, depth, padding))
        kept = tile - 2 * margin
        if size <= kept:
            chunk = size
        else:
            chunk = kept - step + 1 if tta else (kept // step) * step
        return cls(size, tile, kept, margin, step, chunk)

    @property
    def chunks(self) -> int:
        return -(-self.size // self.chunk)

    def chunk_range(self, index: int) -> tuple[int, int]:
        return index * self.chunk, min((index + 1) * self.chunk, self.size)

    def tile_origin(self, start: int, stop: int) -> int:
        """The aligned padded-frame origin of the tile whose kept output holds [start, stop)."""
        origin = (start // self.step) * self.step
        assert stop - origin <= self.kept, (start, stop, self)
        return origin

    def input_indices(self, origin: int) -> tuple[np.ndarray, np.ndarray]:
        """For the tile at padded ``origin``: the image index each input position reads (mirrored
        at the edges) and whether it lies within the mirrored margin (beyond it the input is zero,
        as in ``predict_tiled``; no kept output depends on it)."""
        positions = np.arange(origin, origin + self.tile) - self.margin
        return reflect_indices(positions, self.size), positions < self.size + self.margin


def axis_maps(turns: int, flip: bool) -> tuple[tuple[int, bool], tuple[int, bool]]:
    """For each axis of the transformed image: the original axis it runs along and whether reversed."""
    probe = _transform(torch.arange(6).reshape(2, 3), turns, flip)
    maps = []
    for neighbour in (probe[1, 0], probe[0, 1]):
        (row_a, col_a), (row_b, col_b) = divmod(int(probe[0, 0]), 3), divmod(int(neighbour), 3)
        maps.append((0, row_b < row_a) if row_a != row_b else (1, col_b < col_a))
    return maps[0], maps[1]


@dataclass(frozen=True)
class TileJob:
    """One model tile: the chunk ``(z, i, j)`` it computes in transform ``transform``'s frame.

    ``rows``/``cols``: original-image indices of the input window (zero where not ``*_valid``);
    ``transpose``: the window is transposed into the transformed frame; ``crop``: the kept output
    slices (in the model output) holding the chunk, in the transformed frame.
    """

    chunk: tuple[int, int, int]
    transform: int
    rows: np.ndarray
    rows_valid: np.ndarray
    cols: np.ndarray
    cols_valid: np.ndarray
    transpose: bool
    crop: tuple[slice, slice]

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.cols), len(self.rows)) if self.transpose else (len(self.rows), len(self.cols))


class ChunkPlan:
    """Chunks of an (H, W) output and the tiles computing them under the given transforms."""

    def __init__(self, height: int, width: int, *, tile_cap: int, margin: int, border: int, depth: int,
                 padding: str, transforms: tuple[tuple[int, bool], ...]):
        tta = len(transforms) > 1
        self.axes = (AxisTiling.plan(height, tile_cap, margin, depth, padding, tta),
                     AxisTiling.plan(width, tile_cap, margin, depth, padding, tta))
        self.transforms = transforms
        self.maps = [axis_maps(turns, flip) for turns, flip in transforms]
        self.offset = margin - border  # kept output starts here in the model's output

    @property
    def chunk_shape(self) -> tuple[int, int]:
        return self.axes[0].chunk, self.axes[1].chunk

    @property
    def grid(self) -> tuple[int, int]:
        return self.axes[0].chunks, self.axes[1].chunks

    def chunk_slices(self, i: int, j: int) -> tuple[slice, slice]:
        return slice(*self.axes[0].chunk_range(i)), slice(*self.axes[1].chunk_range(j))

    def jobs(self, z: int, i: int, j: int) -> list[TileJob]:
        ranges = (self.axes[0].chunk_range(i), self.axes[1].chunk_range(j))
        jobs = []
        for index, maps in enumerate(self.maps):
            indices, crop = {}, []
            for original, reversed_ in maps:
                axis = self.axes[original]
                start, stop = ranges[original]
                if reversed_:
                    start, stop = axis.size - stop, axis.size - start
                origin = axis.tile_origin(start, stop)
                idx, valid = axis.input_indices(origin)
                indices[original] = (axis.size - 1 - idx if reversed_ else idx, valid)
                first = self.offset + start - origin
                crop.append(slice(first, first + stop - start))
            jobs.append(TileJob((z, i, j), index, *indices[0], *indices[1], transpose=maps[0][0] == 1,
                                crop=tuple(crop)))
        return jobs

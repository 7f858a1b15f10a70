"""Where streamed predictions go: a Zarr group (labels, probabilities, completion record) or a BigTIFF.

A Zarr output group holds, at its root, ``labels`` ((H, W) or (Z, H, W) class ids, uint8 or uint16 for
more than 256 classes) and with probabilities ``probs`` ((K, H, W) or (Z, K, H, W) float16), chunked
like the output tiles and compressed (zarr's default Zstandard), and ``done``: one uint8 per chunk, set
after that chunk's arrays are written, so a resumed run skips exactly the completed chunks. The
run's settings are kept in the group's ``unet_fast`` attribute; resuming with other settings is
refused. ``complete`` is set there once every chunk is written.

A TIFF output is written in a Zarr store beside it (``<out>.partial.zarr``, which also makes it
resumable), converted to a tiled, compressed BigTIFF under a temporary name at the end, renamed into
place and the partial store removed: a TIFF at ``out`` is always whole.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np

from unet_fast.errors import OutputWriteError, PathExistsError
from unet_fast.inference.sources import TIFF_SUFFIXES, import_tifffile, import_zarr

TIFF_TILE = 256  # BigTIFF tile edge: a multiple of 16, as TIFF requires


def is_tiff_path(path) -> bool:
    return Path(path).suffix.lower() in TIFF_SUFFIXES


def _disk_error(error: OSError, out) -> OutputWriteError:
    if error.errno == errno.ENOSPC:
        return OutputWriteError(errno.ENOSPC, f"{out}: the disk is full; free space (or choose another --out) and rerun "
                                     "with --resume to finish the remaining chunks")
    return OutputWriteError(error.errno, f"{out}: cannot write the output ({error}); fix the problem and rerun with --resume")


class ZarrSink:
    """Chunk-by-chunk writer into ``store`` (a ``.zarr`` path), group ``group`` (None: the root)."""

    def __init__(self, store, group: str | None, *, stack: int | None, height: int, width: int,
                 num_classes: int, chunk_shape: tuple[int, int], grid: tuple[int, int], probs: bool,
                 settings: dict, resume: bool, overwrite: bool, create: bool):
        zarr = import_zarr()
        self.name = str(store) if group is None else f"{store}/{group}"
        self.store, self.group_name, self.stack, self.probs = store, group, stack, probs
        self.settings = settings
        if create:
            self.group = self._create(zarr, stack, height, width, num_classes, chunk_shape, grid, resume, overwrite)
        else:  # other ranks open what rank 0 created
            self.group = zarr.open_group(str(store), mode="r+", path=group or "")
        self.labels, self.done = self.group["labels"], self.group["done"]
        self.prob_array = self.group["probs"] if probs else None

    def _existing(self, zarr):
        try:
            root = zarr.open_group(str(self.store), mode="r")
            return root if self.group_name is None else root[self.group_name]
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
            return None

    def _create(self, zarr, stack, height, width, num_classes, chunk_shape, grid, resume, overwrite):
        existing = self._existing(zarr) if Path(self.store).exists() else None
        if existing is not None and "labels" in existing:
            if resume:
                saved = dict(existing.attrs).get("unet_fast", {}).get("settings")
                if saved != self.settings:
                    changed = sorted(k for k in self.settings if (saved or {}).get(k) != self.settings[k])
                    raise ValueError(f"{self.name}: cannot resume: it was written with other settings "
                                     f"({', '.join(changed) or 'unknown'} differ); rerun without --resume and "
                                     "with --overwrite to start again")
                return zarr.open_group(str(self.store), mode="r+", path=self.group_name or "")
            if not overwrite:
                raise PathExistsError(f"{self.name} already holds a prediction: pass --resume (resume=True) to "
                                      "finish it or --overwrite (overwrite=True) to replace it")
        elif Path(self.store).exists() and self.group_name is None and any(Path(self.store).iterdir()) \
                and not overwrite:
            raise PathExistsError(f"{self.store} exists and is not a prediction store: choose another output "
                                  "or pass --overwrite (overwrite=True) to replace it")
        if self.group_name is None:
            group = zarr.open_group(str(self.store), mode="w")
        else:
            root = zarr.open_group(str(self.store), mode="a")
            group = root.create_group(self.group_name, overwrite=True)
        lead = () if stack is None else (stack,)
        lead_chunk = () if stack is None else (1,)
        label_dtype = np.uint8 if num_classes <= 256 else np.uint16
        group.create_array("labels", shape=(*lead, height, width), chunks=(*lead_chunk, *chunk_shape),
                           dtype=label_dtype, fill_value=0)
        if self.probs:
            group.create_array("probs", shape=(*lead, num_classes, height, width),
                               chunks=(*lead_chunk, num_classes, *chunk_shape), dtype=np.float16, fill_value=0)
        group.create_array("done", shape=(stack or 1, *grid), chunks=(1, 1, 1), dtype=np.uint8, fill_value=0)
        group.attrs["unet_fast"] = {"settings": self.settings, "complete": False}
        return group

    def completed(self) -> set[tuple[int, int, int]]:
        """The chunks (z, i, j) whose completion is recorded."""
        return {tuple(int(v) for v in index) for index in np.argwhere(self.done[...] > 0)}

    def write(self, chunk: tuple[int, int, int], rows: slice, cols: slice, probs: np.ndarray) -> None:
        """Store one chunk's float32 probabilities (K, h, w), its labels, then its completion."""
        z, i, j = chunk
        lead = () if self.stack is None else (z,)
        labels = probs.argmax(axis=0).astype(self.labels.dtype)
        try:
            self.labels[(*lead, rows, cols)] = labels
            if self.prob_array is not None:
                self.prob_array[(*lead, slice(None), rows, cols)] = probs.astype(np.float16)
            self.done[z, i, j] = 1
        except OSError as error:
            raise _disk_error(error, self.name) from error

    def finish(self) -> None:
        self.group.attrs["unet_fast"] = {"settings": self.settings, "complete": True}


def partial_store(out) -> Path:
    return Path(f"{out}.partial.zarr")


def check_tiff_output(out, resume: bool, overwrite: bool) -> None:
    if Path(out).exists() and not overwrite:
        raise PathExistsError(f"{out} already exists: pass --overwrite (overwrite=True) to replace it")
    if partial_store(out).exists() and not (resume or overwrite):
        raise PathExistsError(f"{partial_store(out)} holds an interrupted prediction for {out}: pass --resume "
                              "(resume=True) to finish it or --overwrite (overwrite=True) to start again")


def zarr_labels_to_bigtiff(store: Path, out) -> None:
    """Stream ``store``'s labels into a tiled, zlib-compressed BigTIFF at ``out`` (one page per slice)."""
    tifffile, zarr = import_tifffile(), import_zarr()
    labels = zarr.open_group(str(store), mode="r")["labels"]
    pages = labels.shape[:-2]
    height, width = labels.shape[-2:]

    def tiles():
        for page in np.ndindex(*pages):
            for top in range(0, height, TIFF_TILE):
                band = labels[(*page, slice(top, top + TIFF_TILE), slice(None))]
                for left in range(0, width, TIFF_TILE):
                    tile = np.zeros((TIFF_TILE, TIFF_TILE), dtype=labels.dtype)
                    part = band[:, left : left + TIFF_TILE]
                    tile[: part.shape[0], : part.shape[1]] = part
                    yield tile

    temporary = Path(f"{out}.writing")
    try:
        tifffile.imwrite(temporary, data=tiles(), shape=labels.shape, dtype=labels.dtype,
                         tile=(TIFF_TILE, TIFF_TILE), compression="zlib", bigtiff=True)
        os.replace(temporary, out)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise _disk_error(error, out) from error
    shutil.rmtree(store)

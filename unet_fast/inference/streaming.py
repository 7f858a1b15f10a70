"""Streamed overlap-tile prediction of images of any size: from a lazy source into Zarr or BigTIFF.

A valid-convolution U-Net needs no blending: every output tile is final when it is computed, so
nothing of the whole image is ever held. One reader thread fetches and mirror-pads the next batch
of tiles (keeping one band of the source, the rows the current chunk row needs, in its own dtype),
the model runs in the calling thread, and one writer thread stores finished chunks; both talk to it
through queues of ``PREFETCH`` batches. Host memory therefore stays within a small multiple of one
band of the source plus ``PREFETCH`` batches of tiles and the model, whatever the image size
(measured in benchmarks/bench_large_inference.py).

Under ``torch.distributed`` (``torchrun``) every rank takes a contiguous share of the chunks, so no
two ranks write one chunk; rank 0 creates the store and finishes it. With ``distributed=False`` a
rank predicts the whole source alone (the ``predict`` command's rule when the ranks divide whole files).
"""
from __future__ import annotations

import hashlib
import queue
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from unet_fast import shapes
from unet_fast.inference.geometry import ChunkPlan
from unet_fast.inference.sinks import ZarrSink, check_tiff_output, is_tiff_path, partial_store, zarr_labels_to_bigtiff
from unet_fast.inference.sources import open_source
from unet_fast.inference.tiling import (DEFAULT_TILE_SIZE, DIHEDRAL, _check_int, _inverse_transform, _model_config,
                                        _smallest_tile, _unwrap, context_margin, default_tile_size, model_device)

PREFETCH = 2  # batches queued between the reader, the model and the writer
# Tiles per forward pass. On CPU a batch of 4 tiles of 572 px through UNet(base_channels=2, depth=2)
# alone raises the peak RSS by ~230 MB (ru_maxrss), so streaming there defaults to 2 tiles.
DEFAULT_BATCH_SIZE = {"cuda": 4, "cpu": 2}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Without tile_size, a streamed tile on CUDA grows past predict_tiled's 572 up to this edge when the
# memory model says it fits: larger tiles recompute less overlap (depth 5 keeps 388 of 572 px, 2.2x
# the output's area in work; 1860 of 2044, 1.2x). On CPU the cap stays 572.
CUDA_TILE_CAP = 2048


class _Background:
    """A daemon thread running ``target(queue_out)`` or consuming items; its exception re-raised here."""

    def __init__(self, target):
        self.queue: queue.Queue = queue.Queue(maxsize=PREFETCH)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(target,), daemon=True)
        self.thread.start()

    def _run(self, target) -> None:
        try:
            target(self.queue)
        except BaseException as error:  # handed to the main thread
            self.error = error
            self._drain_and_signal()

    def _drain_and_signal(self) -> None:
        while True:  # unblock a main thread waiting on a full or empty queue
            try:
                self.queue.put_nowait(None)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    pass

    def put(self, item) -> None:
        """Queue ``item`` for the thread, raising its exception if it has failed meanwhile."""
        while True:
            self.check()
            try:
                return self.queue.put(item, timeout=0.1)
            except queue.Full:
                continue

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _model_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(_unwrap(model).state_dict().items()):  # the same for wrapped models
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _window(band: np.ndarray, band_origin: tuple[int, int], job, source) -> np.ndarray:
    """The job's normalised, mirror-padded input (C, tile_h, tile_w) in the transformed frame."""
    rows, cols = job.rows - band_origin[0], job.cols - band_origin[1]
    window = source.normalize(band[:, rows][:, :, cols], job.chunk[0])
    window[:, ~job.rows_valid] = 0
    window[:, :, ~job.cols_valid] = 0
    return np.ascontiguousarray(window.transpose(0, 2, 1)) if job.transpose else window


def _batches(source, plan: ChunkPlan, chunks: list, batch_size: int, pin: bool):
    """Batches ``(tensor (B, C, h, w), jobs)`` of equal-shaped tiles, chunk row by chunk row."""
    buckets: dict[tuple[int, int], list] = {}
    rows_of = {}
    for chunk in chunks:
        rows_of.setdefault(chunk[:2], []).append(chunk)
    for (z, _), row_chunks in rows_of.items():
        jobs = [job for chunk in row_chunks for job in plan.jobs(*chunk)]
        low = (min(int(j.rows.min()) for j in jobs), min(int(j.cols.min()) for j in jobs))
        high = (max(int(j.rows.max()) for j in jobs), max(int(j.cols.max()) for j in jobs))
        band = source.read(z, slice(low[0], high[0] + 1), slice(low[1], high[1] + 1))
        for job in jobs:
            bucket = buckets.setdefault(job.shape, [])
            bucket.append((job, _window(band, low, job, source)))
            if len(bucket) == batch_size:
                yield _stack(buckets.pop(job.shape), pin)
        del band
    for bucket in buckets.values():
        yield _stack(bucket, pin)


def _stack(items, pin: bool):
    tensor = torch.from_numpy(np.stack([window for _, window in items]))
    return (tensor.pin_memory() if pin else tensor), [job for job, _ in items]


class _ChunkAssembler:
    """Collects each chunk's per-transform probabilities and writes the chunk once all have arrived."""

    def __init__(self, sink, plan: ChunkPlan):
        self.sink, self.plan = sink, plan
        self.pending: dict[tuple, dict[int, np.ndarray]] = {}

    def add(self, job, probs: np.ndarray) -> None:
        turns, flip = self.plan.transforms[job.transform]
        tile = probs[:, job.crop[0], job.crop[1]]
        parts = self.pending.setdefault(job.chunk, {})
        parts[job.transform] = _inverse_transform(torch.from_numpy(tile), turns, flip).numpy()
        if len(parts) == len(self.plan.transforms):
            del self.pending[job.chunk]
            total = parts[0]
            for index in range(1, len(parts)):  # the order predict_tiled sums in
                total = total + parts[index]
            if len(parts) > 1:
                total = total / np.float32(len(parts))
            self.sink.write(job.chunk, *self.plan.chunk_slices(*job.chunk[1:]), total)


def _settings(model, config, source, plan, tile_cap, tta, probs, amp) -> dict:
    return {"source_shape": list(source.shape), "layout": source.layout, "normalize": source.normalize_mode,
            "tile_cap": tile_cap,
            "chunks": list(plan.chunk_shape), "tta": tta, "probs": probs, "amp": amp,
            "num_classes": config["num_classes"], "model": _model_digest(model)}


def _tile_cap(model, config, tile_size, batch_size, device) -> int:
    depth, padding = config["depth"], config["padding"]
    margin = context_margin(depth, padding, config["up_mode"])
    smallest = _smallest_tile(depth, padding, margin)
    if tile_size is None:
        return default_tile_size(model, batch_size, device, cap=CUDA_TILE_CAP if device.type == "cuda"
                                 else DEFAULT_TILE_SIZE)
    _check_int("tile_size", tile_size, 1)
    if tile_size < smallest:
        raise ValueError(f"tile_size={tile_size} is too small for a depth-{depth} U-Net with padding={padding!r}: "
                         f"the smallest usable tile is {smallest}")
    return shapes.largest_valid_input_size(tile_size, depth, padding)


def predict_large(model, source, out, *, tile_size: int | None = None, batch_size: int | None = None,
                  tta: bool = False, probs: bool = False, amp: str | None = None, device=None,
                  resume: bool = False, overwrite: bool = False, progress: bool = True,
                  group: str | None = None, layout: str | None = None, channel_axis: int | None = None,
                  normalize: str = "dtype", channels_last: bool = False, distributed: bool = True) -> dict:
    """Segment ``source`` tile by tile into ``out`` without holding the image or its output in memory.

    Args:
        model: a U-Net (``unet_fast.UNet`` or ``unet_fast.reference.UNet``); run in eval mode, no grad.
        source: a TIFF/BigTIFF path (single page or a stack), a Zarr array or path, an OME-Zarr image
            (its full-resolution level), a NumPy (memmap) array or any array-like with ``shape``,
            ``dtype`` and slicing; (H, W), (C, H, W), (H, W, C) or stacks (Z, H, W), (Z, C, H, W),
            (Z, H, W, C). Ambiguous shapes need ``layout`` (e.g. ``"ZYX"``) or ``channel_axis``.
            ``normalize`` as the training loader's: "dtype" (8-bit / 255, 16-bit / 65535) or
            "minmax" (each slice by its own range, at the cost of one more pass over it).
        out: a ``.zarr`` path (``labels`` and, with ``probs``, float16 ``probs`` at the root or in
            ``group``) or a ``.tif``/``.tiff`` path for a BigTIFF of the labels.
        tile_size, batch_size: largest tile edge and tiles per pass (4; 2 on CPU). Default tile: as
            ``predict_tiled`` (the largest whose activations fit the free device memory), up to
            ``CUDA_TILE_CAP`` on CUDA and 572 elsewhere.
        tta: average over the 8 flips and rotations, each in its own aligned frame (as ``predict_tiled``).
        amp: None, "bf16" or "fp16" autocast. device: the model's parameters' (the default; a
            device given must be that one). channels_last: feed channels-last batches (convert the
            model yourself).
        resume: finish an interrupted run, skipping recorded chunks; overwrite: replace an output.
        progress: a tqdm bar on rank 0 (tiles, tiles/s, megapixels/s, ETA).
        distributed: under ``torch.distributed``, divide the chunks among the ranks (every rank must
            call with the same arguments); False: this process writes the whole output alone.

    Returns:
        ``{"tiles", "chunks", "seconds", "megapixels_per_s", "out"}`` for this rank's share.
    """
    config = _model_config(model)
    for name, flag in (("tta", tta), ("probs", probs), ("resume", resume), ("overwrite", overwrite),
                       ("distributed", distributed)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if amp not in (None, *AMP_DTYPES):
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    device = model_device(model, device)
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE.get(device.type, 4)
    _check_int("batch_size", batch_size, 1)
    src = open_source(source, in_channels=config["in_channels"], layout=layout, channel_axis=channel_axis,
                      normalize=normalize)
    stack, channels, height, width = src.shape
    if channels != config["in_channels"]:
        raise ValueError(f"source {src.name} has {channels} channel(s) (layout {src.layout}) but the model takes "
                         f"{config['in_channels']}; give layout/channel_axis if the axes were misread")
    tiff_out = is_tiff_path(out)
    if tiff_out and probs:
        raise ValueError(f"probs=True needs a .zarr output: {out} is a TIFF, which holds the labels only")
    if not tiff_out and Path(out).suffix.lower() != ".zarr":
        raise ValueError(f"out must be a .zarr store or a .tif/.tiff path, got {out}")

    depth, padding = config["depth"], config["padding"]
    tile_cap = _tile_cap(model, config, tile_size, batch_size, device)
    transforms = DIHEDRAL if tta else DIHEDRAL[:1]
    plan = ChunkPlan(height, width, tile_cap=tile_cap, margin=context_margin(depth, padding, config["up_mode"]),
                     border=shapes.border(depth, padding), depth=depth, padding=padding, transforms=transforms)
    rank, world = _rank_and_world() if distributed else (0, 1)
    if tiff_out and rank == 0:
        check_tiff_output(out, resume, overwrite)
    store = partial_store(out) if tiff_out else Path(out)
    sink_args = dict(stack=stack if src.stacked else None, height=height, width=width,
                     num_classes=config["num_classes"], chunk_shape=plan.chunk_shape, grid=plan.grid,
                     probs=probs, settings=_settings(model, config, src, plan, tile_cap, tta, probs, amp),
                     resume=resume, overwrite=overwrite)
    sink = ZarrSink(store, None if tiff_out else group, create=rank == 0, **sink_args) if rank == 0 else None
    _barrier(world)
    if sink is None:
        sink = ZarrSink(store, None if tiff_out else group, create=False, **sink_args)
    done = sink.completed() if resume else set()
    every = [(z, i, j) for z in range(stack) for i in range(plan.grid[0]) for j in range(plan.grid[1])]
    mine = [c for c in every[rank * len(every) // world:(rank + 1) * len(every) // world] if c not in done]

    start = time.perf_counter()
    tiles = _run(model, src, sink, plan, mine, batch_size, device, amp, channels_last, progress and rank == 0)
    seconds = time.perf_counter() - start
    _barrier(world)
    if rank == 0:
        sink.finish()
        if tiff_out:
            zarr_labels_to_bigtiff(store, out)
    _barrier(world)
    pixels = sum((s.stop - s.start) * (t.stop - t.start) for s, t in (plan.chunk_slices(*c[1:]) for c in mine))
    return {"tiles": tiles, "chunks": len(mine), "seconds": seconds, "out": str(out),
            "megapixels_per_s": pixels / 1e6 / seconds if seconds > 0 else 0.0}


def _run(model, source, sink, plan, chunks, batch_size, device, amp, channels_last, show) -> int:
    """Predict ``chunks`` with the reader and writer threads; the number of tiles run."""
    from tqdm.auto import tqdm

    total = len(chunks) * len(plan.transforms)
    pixels_per_tile = plan.chunk_shape[0] * plan.chunk_shape[1] / len(plan.transforms)
    bar = tqdm(total=total, unit="tile", disable=not show, dynamic_ncols=True, desc=Path(sink.name).name)
    pin = device.type == "cuda"

    def produce(q):
        for batch in _batches(source, plan, chunks, batch_size, pin):
            q.put(batch)
        q.put(None)

    reader = _Background(produce)
    assembler = _ChunkAssembler(sink, plan)

    def consume(q):
        while (item := q.get()) is not None:
            for job, probs in zip(*item):
                assembler.add(job, probs)

    writer = _Background(consume)
    dtype = parameter.dtype if (parameter := next(iter(model.parameters()), None)) is not None else torch.float32
    autocast = torch.autocast(device.type, dtype=AMP_DTYPES[amp]) if amp else nullcontext()
    was_training, done, started = model.training, 0, time.perf_counter()
    model.eval()
    try:
        with torch.no_grad(), autocast:
            while (item := reader.queue.get()) is not None:
                batch, jobs = item
                batch = batch.to(device=device, dtype=dtype, non_blocking=pin)
                if channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                probs = model(batch).float().softmax(dim=1).cpu().numpy()
                writer.put((jobs, probs))
                done += len(jobs)
                bar.update(len(jobs))
                bar.set_postfix_str(f"{done * pixels_per_tile / 1e6 / (time.perf_counter() - started):.2f} MP/s")
        reader.check()
        writer.put(None)
        writer.thread.join()
        writer.check()
    finally:
        model.train(was_training)
        bar.close()
    return done

"""The ``unet-fast predict`` command: finds the inputs, predicts each in memory (``predict_tiled``:
PNG class maps, TIFF probabilities and segments) or streamed (``predict_large``: inputs over
LARGE_IMAGE_PIXELS, Zarr inputs, a ``.zarr`` --out) and writes them.

Under torchrun the ranks divide the work so that no two write the same file or chunk and the
outputs are those of one process: with at least as many inputs as ranks, input i goes whole to rank
i mod N; with fewer, every streamed input's chunks are divided among all ranks (and an in-memory
input, which cannot be divided, goes whole to rank i mod N)."""
from __future__ import annotations

from pathlib import Path

from unet_fast.errors import UsageError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
# Inputs above this many pixels per page, Zarr inputs and any .zarr --out are streamed (predict_large).
LARGE_IMAGE_PIXELS = 4096 * 4096


def _image_paths(inputs: list[str]) -> list[Path]:
    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir() and path.suffix.lower() != ".zarr":
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"--input directory {path} contains no PNG or TIFF images")
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            raise UsageError(f"--input {path} does not exist")
    stems = [_stem(p) for p in paths]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise UsageError(f"--input has several images with the stem(s) {', '.join(duplicates)}: outputs would overwrite each other")
    return paths


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_large(path: Path) -> bool:
    """Whether an input is streamed: a Zarr store or a TIFF page over LARGE_IMAGE_PIXELS."""
    if path.suffix.lower() == ".zarr" or path.is_dir():
        return True
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            page = tiff.pages.first
            return page.imagelength * page.imagewidth > LARGE_IMAGE_PIXELS
    except Exception as error:  # tifffile raises many types for damaged files
        raise UsageError(f"{path}: cannot read the TIFF ({type(error).__name__}: {error})") from None


def _distributed(device):
    """(rank, world size, device) under torchrun: gloo on CPU, NCCL on CUDA (one GPU per local rank)."""
    import os

    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def _share_of_inputs(paths: list[Path], streamed: list[Path], rank: int, world: int) -> tuple[list[Path], list[Path]]:
    """This rank's inputs: (those it predicts whole and alone, streamed ones whose chunks all ranks divide)."""
    if len(paths) >= world:
        return paths[rank::world], []
    alone = [p for index, p in enumerate(paths) if p not in streamed and index % world == rank]
    return alone, [p for p in paths if p in streamed]


def _predict_streamed(args, model, device, path: Path, several: bool, distributed: bool, show: bool) -> str:
    """predict_large of one input: into --out if it is a .zarr (a group per stem when ``several``),
    else into --out/<stem>.zarr; what it wrote, for the log."""
    from unet_fast.inference import predict_large

    out = Path(args.out)
    into_store = out.suffix.lower() == ".zarr"
    target = out if into_store else out / f"{_stem(path)}.zarr"
    group = _stem(path) if into_store and several else None
    try:
        predict_large(model, path, target, tile_size=args.tile_size, batch_size=args.batch_size, tta=args.tta,
                      probs=args.probs, amp=args.amp, device=device, resume=args.resume, overwrite=args.overwrite,
                      progress=args.progress and show, group=group, layout=args.layout,
                      channel_axis=args.channel_axis, distributed=distributed)
    except ImportError as error:
        raise UsageError(str(error)) from None
    return f"{target}" + (f" (group {group})" if group else "")


def _write_labels(path: Path, labels) -> None:
    """(H, W) class ids as an 8-bit PNG (16-bit for more than 256 classes)."""
    import numpy as np
    from PIL import Image

    array = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    Image.fromarray(array).save(path)


def _write_probabilities(path: Path, probs) -> None:
    """(K, H, W) float32 probabilities as a K-page TIFF."""
    try:
        import tifffile
    except ImportError:
        raise UsageError("--probs needs the 'tifffile' package: pip install tifffile") from None
    tifffile.imwrite(path, probs)


def _predict_in_memory(args, model, device, path: Path) -> list[Path]:
    """predict_tiled of every page of ``path`` into --out/<stem>.png (and probabilities, segments);
    the PNGs written."""
    import torch

    from unet_fast.data import read_image
    from unet_fast.inference import predict_tiled
    from unet_fast.instances import write_segments

    out = Path(args.out)
    pages = read_image(path)  # (C, H, W) float32 in [0, 1] per page
    written = []
    for page, array in enumerate(pages):
        stem = path.stem if len(pages) == 1 else f"{path.stem}_{page:03d}"
        image = torch.from_numpy(array)
        if image.shape[0] != model.in_channels:
            raise UsageError(f"{path} has {image.shape[0]} channel(s) but the model was trained on {model.in_channels}")
        probs, labels = predict_tiled(model, image.to(device), tile_size=args.tile_size,
                                      batch_size=args.batch_size or 4, tta=args.tta)
        _write_labels(out / f"{stem}.png", labels.cpu().numpy())
        if args.probs:
            _write_probabilities(out / f"{stem}_probs.tif", probs.cpu().numpy())
        if args.segments:
            write_segments(out / f"{stem}_segments.tif", probs.cpu().numpy(), args.segments_method)
        written.append(out / f"{stem}.png")
    return written


def run_predict(args) -> int:
    """`unet-fast predict`: every input in memory (PNG class maps, TIFF probabilities and segments) or
    streamed into Zarr/BigTIFF (large inputs, a .zarr --out); under torchrun divided among the ranks."""
    from unet_fast.train import choose_checkpoint, describe_checkpoint, load_model, resolve_device

    rank, world, device = _distributed(resolve_device(args.device))
    paths = _image_paths(args.input)
    directory, kind = choose_checkpoint(args.checkpoint)  # the run's best, else its latest
    model = load_model(directory, device)
    if rank == 0:
        print(describe_checkpoint(directory, kind))
    out = Path(args.out)
    streamed = [p for p in paths if out.suffix.lower() == ".zarr" or _is_large(p)]
    if args.segments and streamed:
        raise UsageError(f"--segments needs in-memory prediction, but {streamed[0]} is streamed (a .zarr --out "
                         f"or an input over {LARGE_IMAGE_PIXELS} pixels): segment the streamed labels "
                         "with unet_fast.instances.segment")
    if out.suffix.lower() != ".zarr":
        out.mkdir(parents=True, exist_ok=True)
    alone, divided = _share_of_inputs(paths, streamed, rank, world)
    several = len(paths) > 1
    if world > 1:
        import torch.distributed as dist

        if several and out.suffix.lower() == ".zarr" and rank == 0:
            _create_root_group(out)  # before the ranks add their groups to it at once
        dist.barrier()
    prefix = f"rank {rank}: " if world > 1 else ""
    for path in divided:
        target = _predict_streamed(args, model, device, path, several, distributed=True, show=rank == 0)
        if rank == 0:
            print(f"{prefix}{path} -> {target} (chunks divided among {world} ranks)")
    for path in alone:
        if path in streamed:
            targets = [_predict_streamed(args, model, device, path, several, distributed=False, show=rank == 0)]
        else:
            targets = _predict_in_memory(args, model, device, path)
        for target in targets:
            print(f"{prefix}{path} -> {target}")
    if world > 1:  # no closing barrier: a rank left with more work may outlast the group's timeout
        dist.destroy_process_group()
    return 0


def _create_root_group(out: Path) -> None:
    from unet_fast.inference.sources import import_zarr

    try:
        import_zarr().open_group(str(out), mode="a")
    except ImportError as error:
        raise UsageError(str(error)) from None

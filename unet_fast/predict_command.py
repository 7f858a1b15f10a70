"""The ``unet-fast predict`` command: finds the inputs, predicts each in memory (``predict_tiled``:
PNG class maps, TIFF probabilities and segments) or streamed (``predict_large``: inputs over
LARGE_IMAGE_PIXELS, Zarr inputs, a ``.zarr`` --out, every input under torchrun) and writes them."""
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


def _predict_streamed(args, model, device, paths: list[Path], rank: int) -> None:
    """predict_large for every path: into --out if it is a .zarr (groups per stem when several), else
    into --out/<stem>.zarr."""
    from unet_fast.inference import predict_large

    out = Path(args.out)
    into_store = out.suffix.lower() == ".zarr"
    for path in paths:
        target = out if into_store else out / f"{_stem(path)}.zarr"
        group = _stem(path) if into_store and len(paths) > 1 else None
        predict_large(model, path, target, tile_size=args.tile_size, batch_size=args.batch_size, tta=args.tta,
                      probs=args.probs, amp=args.amp, device=device, resume=args.resume, overwrite=args.overwrite,
                      progress=args.progress, group=group, layout=args.layout, channel_axis=args.channel_axis)
        if rank == 0:
            print(f"{path} -> {target}" + (f" (group {group})" if group else ""))


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


def run_predict(args) -> int:
    """`unet-fast predict`: every input in memory (PNG class maps, TIFF probabilities and segments) or
    streamed into Zarr/BigTIFF (large inputs, a .zarr --out, torchrun)."""
    import torch

    from unet_fast.data import read_image
    from unet_fast.inference import predict_tiled
    from unet_fast.instances import write_segments
    from unet_fast.train import choose_checkpoint, describe_checkpoint, load_model, resolve_device

    rank, world, device = _distributed(resolve_device(args.device))
    paths = _image_paths(args.input)
    directory, kind = choose_checkpoint(args.checkpoint)  # the run's best, else its latest
    model = load_model(directory, device)
    if rank == 0:
        print(describe_checkpoint(directory, kind))
    out = Path(args.out)
    streamed = [p for p in paths if world > 1 or out.suffix.lower() == ".zarr" or _is_large(p)]
    if args.segments and streamed:
        raise UsageError(f"--segments needs in-memory prediction, but {streamed[0]} is streamed (a .zarr --out, "
                         f"torchrun, or an input over {LARGE_IMAGE_PIXELS} pixels): segment the streamed labels "
                         "with unet_fast.instances.segment")
    if out.suffix.lower() != ".zarr":
        out.mkdir(parents=True, exist_ok=True)
    try:
        _predict_streamed(args, model, device, streamed, rank)
    except ImportError as error:
        raise UsageError(str(error)) from None
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    for path in (p for p in paths if p not in streamed):
        pages = read_image(path)  # (C, H, W) float32 in [0, 1] per page
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
            print(f"{path} -> {out / (stem + '.png')}")
    return 0

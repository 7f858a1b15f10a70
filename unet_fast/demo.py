"""``unet-fast demo``: train on the synthetic EM data set, segment held-out images, report.

On a GPU: the paper's network (depth 5, 64 channels, 572 tiles). On CPU: a small configuration
(depth 4, 8 channels, 188 px tiles) meant to finish in a few minutes on 2 cores. Both use the
trainer's defaults otherwise (AdamW, border-weighted loss).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from unet_fast.metrics import segmentation_metrics
from unet_fast.train import TrainConfig, build_model, load_model, resolve_device, train

CPU_DEMO = dict(base_channels=8, depth=4, tile_size=188, steps=300, synthetic_images=8,
                synthetic_size=256, val_interval=100)
GPU_DEMO = dict(base_channels=64, depth=5, tile_size=572, steps=1000, synthetic_images=16,
                synthetic_size=512, val_interval=250)
HELD_OUT = 3


def _throughput(model_config: dict, device: torch.device, tile: int, rounds: int = 5,
                warmup: int = 3) -> dict[str, float]:
    """Forward tiles/s of the fast and the reference model at the demo's tile size: the median of
    ``rounds`` timed calls per model, the models taking turns so that drift on a shared machine hits
    both, after ``warmup`` calls each (CPU convolution libraries build their kernels on first use)."""
    import statistics

    from unet_fast.train import fast_model_class

    x = torch.rand(1, model_config["in_channels"], tile, tile, device=device)
    kinds = ["reference"] + (["fast"] if fast_model_class() is not None else [])
    models = {kind: build_model(kind, **model_config).to(device).eval() for kind in kinds}
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}

    def call(model) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - begin

    with torch.no_grad():
        for model in models.values():
            for _ in range(warmup):
                call(model)
        for _ in range(rounds):
            for kind, model in models.items():
                seconds[kind].append(call(model))
    return {kind: 1.0 / statistics.median(times) for kind, times in seconds.items()}


def _overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Three panels side by side (RGB uint8): image, truth and prediction in red over the image."""
    gray = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    panels = []
    for mask in (None, truth == 0, prediction == 0):
        rgb = np.stack([gray] * 3, axis=-1)
        if mask is not None:
            rgb[mask] = (0.5 * rgb[mask] + [127, 0, 0]).astype(np.uint8)
        panels.append(rgb)
    return np.concatenate(panels, axis=1)


def run_demo(out=None, steps=None, seed: int = 0, device: str = "auto", progress: bool = True) -> Path:
    from PIL import Image

    from unet_fast.data import make_synthetic_em
    from unet_fast.inference import predict_tiled

    torch_device = resolve_device(device)
    settings = dict(GPU_DEMO if torch_device.type == "cuda" else CPU_DEMO)
    if steps is not None:
        settings["steps"] = steps
    run_dir = Path(out) if out is not None else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    print(f"unet-fast demo on {torch_device}: training {settings['steps']} steps "
          f"(depth {settings['depth']}, {settings['base_channels']} channels, {settings['tile_size']} px tiles)")
    summary = train(TrainConfig(data="synthetic", out=str(run_dir), seed=seed, device=device, progress=progress, **settings))
    model = load_model(run_dir, torch_device)

    # Held-out images: indices beyond the training and validation images of the same seed.
    first = settings["synthetic_images"] + 2
    images, labels = make_synthetic_em(first + HELD_OUT, settings["synthetic_size"], seed)
    images, labels = images[first:], labels[first:]
    totals: dict[str, float] = {}
    overlays = []
    begin = time.perf_counter()
    for image, truth in zip(images, labels):
        _, prediction = predict_tiled(model, image.to(torch_device))
        scores = segmentation_metrics(prediction.cpu(), truth)
        for key, value in scores.items():
            totals[key] = totals.get(key, 0.0) + value / HELD_OUT
        overlays.append(_overlay(image[0].numpy(), truth.numpy(), prediction.cpu().numpy()))
    seconds = time.perf_counter() - begin
    Image.fromarray(np.concatenate(overlays, axis=0)).save(run_dir / "overlays.png")

    print(f"held-out ({HELD_OUT} images, overlap-tile, {seconds:.1f} s): pixel error {totals['pixel_error']:.4f}  "
          f"IoU {totals['foreground_iou']:.4f}  Dice {totals['foreground_dice']:.4f}  Rand error {totals['rand_error']:.4f}")
    speed = _throughput(model.config(), torch_device, settings["tile_size"])
    line = "  ".join(f"{kind} {value:.2f} tiles/s" for kind, value in speed.items())
    if "fast" in speed:
        line += f"  (fast/reference {speed['fast'] / speed['reference']:.2f}x)"
    print(f"forward throughput at {settings['tile_size']} px: {line}")
    print(f"training took {summary['seconds']:.0f} s; overlays (image | truth | prediction): {run_dir / 'overlays.png'}")
    print(f"run directory: {run_dir}")
    return run_dir

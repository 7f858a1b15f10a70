"""First-contact headline benchmark, most important first (the run's deadline cuts from the end).

Every ratio is against a peer measured in the same step: the paper model's training step (bf16
autocast, SGD) against the eager reference in channels_last and against ``torch.compile`` of the
reference, MFU against the bf16 matmul rate measured in the same step; the fused conv op summed over
the paper's shapes against eager conv + bias + ReLU (+ cat + pool); the elastic warp as a fraction
of the copy bandwidth; overlap-tile inference of a 2048x2048 image. The dry run times the same code
at the dry run's tiny size on the CPU and skips what only a GPU measures (MFU, torch.compile).
The training steps autotune each conv shape once (the short timing) and write the winners to
``OUTDIR/autotune.json``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from unet_fast.benchmark.first_contact_checks import model_size

CPU_SKIP_COMPILE = "dry run: torch.compile takes minutes on a small CPU; measured on the GPU only"


def _device(context: dict) -> torch.device:
    return torch.device("cpu" if context["dry_run"] else "cuda")


def _shape(context: dict, batch: int):
    from unet_fast.benchmark.cases import Shape

    config, size = model_size(context)
    if context["dry_run"]:  # a tile of 36 (20 output pixels) keeps the tile count small
        return Shape(f"first-contact-dry-b{batch}", config, batch=batch, size=size, tiled_size=48, tile_size=36)
    return Shape(f"first-contact-{size}-b{batch}", config, batch=batch, size=size, tiled_size=2048, tile_size=size)


def _timed(context: dict, candidates: dict) -> dict:
    from unet_fast.benchmark.measure import time_interleaved

    dry = context["dry_run"]
    timings, errors = time_interleaved(candidates, _device(context), warmup=1 if dry else 3,
                                       rounds=2 if dry else 7, min_sample_ms=1.0 if dry else 50.0)
    if errors:
        raise RuntimeError("; ".join(f"{name}: {error}" for name, error in errors.items()))
    return timings


def _export_autotune(context: dict) -> str | None:
    """Writes the Triton autotuner's winners to OUTDIR/autotune.json (None when nothing was tuned)."""
    from unet_fast.triton.autotune import export_winners

    return export_winners(Path(context["outdir"]) / "autotune.json")


def train_step(batch: int, peer: str):
    """The paper model's training step, unet_fast against ``peer`` ("reference-cl" or
    "reference-compile"), bf16 autocast (fp32 in the dry run)."""

    def step(context: dict) -> dict:
        from unet_fast.benchmark.flops import train_step_flops
        from unet_fast.benchmark.measure import matmul_peak, peak_memory
        from unet_fast.benchmark.providers import build_model, make_runnable, reference_model

        if context["dry_run"] and peer == "reference-compile":
            return {"status": f"skipped: {CPU_SKIP_COMPILE}"}
        if context["dry_run"] and batch > 1:
            return {"status": "skipped: dry run: the batch-1 step runs the same code"}
        device = _device(context)
        shape = _shape(context, batch)
        dtype = "fp32" if context["dry_run"] else "bf16"
        reference = reference_model(shape, device)
        runnables = {name: make_runnable("train-step", name, build_model(name, reference, "default", False), shape, dtype, device)
                     for name in ("unet_fast", peer)}
        timings = _timed(context, {name: r.run for name, r in runnables.items()})
        record: dict = {"batch": shape.batch, "size": shape.size, "dtype": dtype,
                        "ms": {name: t["ms"] for name, t in timings.items()},
                        "speedup": timings[peer]["ms"] / timings["unet_fast"]["ms"],
                        "memory": {name: peak_memory(r.run, device) for name, r in runnables.items()}}
        flops = train_step_flops(shape.config, shape.size, shape.size, shape.batch)
        if device.type == "cuda":
            peak = matmul_peak(device, torch.bfloat16, 8192, rounds=5)
            record["matmul_bf16_tflops"] = peak["tflops"]
            record["mfu"] = {name: flops / t["ms"] / 1e9 / peak["tflops"] for name, t in timings.items()}
            record["autotune_file"] = _export_autotune(context)
        else:
            record["mfu"] = "skipped: dry run: MFU is measured against the GPU's bf16 matmul rate"
        record["headline"] = f"x{record['speedup']:.2f} vs {peer}, {timings['unet_fast']['ms']:.1f} ms"
        return record

    return step


def fused_conv(context: dict) -> dict:
    """conv3x3_relu (backend "triton") forward + backward summed over the paper's 3x3 shapes, against
    eager cat + conv + bias + ReLU (+ pool)."""
    from unet_fast.benchmark.ops.conv3x3_relu import eager_block, fused_block, measure, unet_conv_shapes

    device = _device(context)
    config, size = model_size(context)
    dtype = torch.float32 if context["dry_run"] else torch.bfloat16
    shapes = unet_conv_shapes(size, 1, base=config["base_channels"], depth=config["depth"])
    if context["dry_run"]:
        shapes = shapes[1:2]  # the interpreter: one pooled layer runs the code path
    fused_ms = sum(measure(fused_block("triton"), shape, "fwdbwd", dtype, device) for shape in shapes)
    eager_ms = sum(measure(eager_block, shape, "fwdbwd", dtype, device) for shape in shapes)
    return {"shapes": len(shapes), "dtype": str(dtype).replace("torch.", ""), "fused_ms": fused_ms, "eager_ms": eager_ms,
            "speedup": eager_ms / fused_ms, "headline": f"x{eager_ms / fused_ms:.2f} over {len(shapes)} shapes"}


def elastic_warp_bandwidth(context: dict) -> dict:
    """elastic_warp of a 2048x2048 x16 batch (image + label) as a fraction of the copy bandwidth."""
    from unet_fast.benchmark.measure import copy_bandwidth
    from unet_fast.ops import elastic_warp

    device = _device(context)
    size, batch = (2048, 16) if not context["dry_run"] else (256, 2)
    generator = torch.Generator().manual_seed(4)
    image = torch.rand(batch, 1, size, size, generator=generator).to(device)
    label = torch.randint(0, 2, (batch, size, size), generator=generator).to(device)
    coarse = (torch.randn(batch, 2, 3, 3, generator=generator) * 10).to(device)
    timings = _timed(context, {"warp": lambda: elastic_warp(image, coarse, label=label)})
    moved = 2 * (image.numel() * image.element_size() + label.numel() * label.element_size())
    gbps = moved / timings["warp"]["ms"] / 1e6
    copy = copy_bandwidth(device, 1 << 30 if device.type == "cuda" else 1 << 24, rounds=5)
    fraction = gbps / copy["gbps"]
    return {"size": size, "batch": batch, "ms": timings["warp"]["ms"], "gbps": gbps, "copy_gbps": copy["gbps"],
            "copy_fraction": fraction, "headline": f"{fraction:.0%} of copy bandwidth"}


def tiled_inference(context: dict) -> dict:
    """Overlap-tile inference of one 2048x2048 image (bf16 autocast; fp32 at 48x48 in the dry run)."""
    from unet_fast.benchmark.providers import build_model, make_runnable, reference_model

    device = _device(context)
    shape = _shape(context, 4 if not context["dry_run"] else 1)
    dtype = "fp32" if context["dry_run"] else "bf16"
    reference = reference_model(shape, device)
    runnables = {name: make_runnable("inference-tiled", name, build_model(name, reference, None, False), shape, dtype, device)
                 for name in ("unet_fast", "reference-cl")}
    timings = _timed(context, {name: r.run for name, r in runnables.items()})
    pixels = shape.tiled_size**2
    ms = timings["unet_fast"]["ms"]
    return {"image": shape.tiled_size, "ms": {name: t["ms"] for name, t in timings.items()},
            "mpixels_per_s": pixels / ms / 1e3, "speedup": timings["reference-cl"]["ms"] / ms,
            "headline": f"{pixels / ms / 1e3:.1f} Mpx/s, x{timings['reference-cl']['ms'] / ms:.2f} vs reference-cl"}


# (name, deadline in seconds, step), most important first
STEPS = (
    ("train_step_b1", 90.0, train_step(1, "reference-cl")),
    ("train_step_b8", 60.0, train_step(8, "reference-cl")),
    ("train_step_compile", 90.0, train_step(1, "reference-compile")),
    ("fused_conv", 60.0, fused_conv),
    ("elastic_warp_bandwidth", 30.0, elastic_warp_bandwidth),
    ("tiled_inference", 45.0, tiled_inference),
)

"""Elastic deformation of image + label pairs: unet_fast.ops.elastic_warp against the alternatives.

    python benchmarks/bench_elastic_warp.py [--device cpu|cuda] [--sizes 512 2048] [--batches 1 16]
                                            [--rounds 5] [--json PATH]

(or ``python -m unet_fast.benchmark.ops.elastic_warp`` where the package is installed).

Every case warps a float32 image (N, 1, S, S) bilinearly and its label map (N, S, S) with nearest
(uint8, as masks are stored; --label-dtype int64 for cross-entropy targets), reflection (mirror)
padding, one random 3x3 coarse displacement field per sample (sigma 10 px, the paper's), and is
timed, interleaved in the same run, for:

  unet_fast           elastic_warp(image, coarse_field, label=label): one fused launch
  unet_fast_augment   ElasticAugment() (also rotation, flips, gray values; parameters drawn on the CPU)
  torch_composite     F.interpolate(bicubic, align_corners=True) of the field + F.grid_sample
                      (bilinear) of the image + F.grid_sample (nearest) of the label as float
  torchvision         torchvision.transforms.v2.ElasticTransform on (Image, Mask) (its own field:
                      a per-pixel random field smoothed by a Gaussian, one field per call)
  elasticdeform       elasticdeform.deform_grid([image, label], field, order=[1, 0], mode="mirror"),
                      one sample at a time (NumPy, CPU, single-threaded)

and, in "speedups" (a row's peer's time over the row's): unet_fast and unet_fast_two_calls
(elastic_warp(image, field) then elastic_warp(label, field)) over torch_composite; the label map
alone (nearest) and a float32 weight map alone (N, 1, S, S) over the image alone (bilinear).

Throughput is output pixels (image + label pairs) per second; ratios are unet_fast's throughput
over each provider's. Optional providers that cannot be imported are reported as
"skipped: <reason>" (pip packages: torchvision, elasticdeform). On CUDA the fused op's achieved
bandwidth (bytes read + written over time) is also given as a fraction of the device's measured
copy bandwidth. Targets (issue 4): on a 2-core CPU at 512x512, >= 3x torch_composite and >= 20x
elasticdeform; on a GPU, >= 70% of the memory bandwidth at 2048x2048, batch 16. Issue 16, 2-core CPU,
512x512 batch 1, int64 labels: label and weight alone >= 1x the image alone, two calls >= 3x and
one call >= 5x torch_composite.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SIGMA_PX = 10.0
GRID = 3


def _composite(image, label, coarse):
    """The PyTorch composite: dense field by bicubic interpolation, then two grid_samples."""
    n, _, height, width = image.shape
    dense = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    ys = torch.linspace(-1, 1, height, device=image.device).view(1, height, 1)
    xs = torch.linspace(-1, 1, width, device=image.device).view(1, 1, width)
    grid = torch.stack([xs + dense[:, 1] * (2 / (width - 1)), ys + dense[:, 0] * (2 / (height - 1))], dim=-1)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    labels = F.grid_sample(label.unsqueeze(1).float(), grid, mode="nearest", padding_mode="reflection",
                           align_corners=True)
    return warped, labels.squeeze(1).to(label.dtype)


def _torchvision_provider():
    try:
        from torchvision import tv_tensors
        from torchvision.transforms import v2
    except Exception as error:  # ImportError, or a torchvision built for another torch
        return None, f"skipped: torchvision unavailable ({type(error).__name__}: {error})"
    transform = v2.ElasticTransform(alpha=50.0, sigma=5.0)

    def run(image, label, coarse):
        return transform(tv_tensors.Image(image), tv_tensors.Mask(label))

    return run, None


def _elasticdeform_provider():
    try:
        import elasticdeform
    except Exception as error:  # ImportError, or a wheel built against NumPy 1 under NumPy 2
        return None, f"skipped: elasticdeform unavailable ({type(error).__name__}: {error})"

    def run(image_np, label_np, coarse_np):
        return [elasticdeform.deform_grid([image_np[i, 0], label_np[i]], coarse_np[i], order=[1, 0], mode="mirror")
                for i in range(image_np.shape[0])]

    return run, None


def bench_case(size: int, batch: int, device: torch.device, rounds: int, min_sample_ms: float,
               label_dtype: torch.dtype) -> dict:
    from unet_fast.augment import ElasticAugment
    from unet_fast.benchmark.measure import time_interleaved
    from unet_fast.ops import elastic_warp

    g = torch.Generator().manual_seed(size * 100 + batch)
    image = torch.rand(batch, 1, size, size, generator=g)
    label = (torch.rand(batch, size, size, generator=g) < 0.5).to(label_dtype)
    coarse = torch.randn(batch, 2, GRID, GRID, generator=g) * SIGMA_PX
    image_np, label_np, coarse_np = image.numpy(), label.numpy(), coarse.double().numpy()
    image, label, coarse = image.to(device), label.to(device), coarse.to(device)
    augment = ElasticAugment(grid=GRID, sigma=SIGMA_PX)
    augment_generator = torch.Generator().manual_seed(0)

    weight = torch.rand(batch, 1, size, size, generator=g).to(device)  # a weight map alone: one float plane
    candidates = {
        "unet_fast": lambda: elastic_warp(image, coarse, label=label),
        "unet_fast_augment": lambda: augment(image, label, generator=augment_generator),
        "torch_composite": lambda: _composite(image, label, coarse),
        # Standalone warps and the two-call pattern (image and label each in a call of its own).
        "unet_fast_image_alone": lambda: elastic_warp(image, coarse),
        "unet_fast_label_alone": lambda: elastic_warp(label, coarse),
        "unet_fast_weight_alone": lambda: elastic_warp(weight, coarse),
        "unet_fast_two_calls": lambda: (elastic_warp(image, coarse), elastic_warp(label, coarse)),
    }
    peers_of = {  # row: the row it is compared with (ratio: the peer's time over the row's)
        "unet_fast": "torch_composite", "unet_fast_two_calls": "torch_composite",
        "unet_fast_label_alone": "unet_fast_image_alone", "unet_fast_weight_alone": "unet_fast_image_alone",
    }
    skipped = {}
    torchvision_run, reason = _torchvision_provider()
    if torchvision_run is None:
        skipped["torchvision"] = reason
    else:
        candidates["torchvision"] = lambda: torchvision_run(image, label, coarse)
    elasticdeform_run, reason = _elasticdeform_provider()
    if elasticdeform_run is None:
        skipped["elasticdeform"] = reason
    else:
        candidates["elasticdeform"] = lambda: elasticdeform_run(image_np, label_np, coarse_np)

    ours, ours_label, _ = elastic_warp(image, coarse, label=label)
    theirs, theirs_label = _composite(image, label, coarse)
    agreement = {
        "max_abs_image_difference_vs_composite": float((ours - theirs).abs().max()),
        "label_mismatch_fraction_vs_composite": float((ours_label != theirs_label).float().mean()),
    }

    timings, errors = time_interleaved(candidates, device, warmup=1, rounds=rounds, min_sample_ms=min_sample_ms)
    pixels = batch * size * size
    providers = {}
    for name in candidates:
        if name in errors:
            providers[name] = {"status": f"error: {errors[name]}"}
            continue
        ms = timings[name]["ms"]
        providers[name] = dict(timings[name], status="ok", mpixels_per_s=pixels / ms / 1e3)
    for name, reason in skipped.items():
        providers[name] = {"status": reason}
    ratios = {}
    if "ms" in providers["unet_fast"]:
        for name, result in providers.items():
            if name != "unet_fast" and name not in peers_of and name != "unet_fast_image_alone" and "ms" in result:
                ratios[name] = result["ms"] / providers["unet_fast"]["ms"]
    speedups = {f"{row}_vs_{peer}": providers[peer]["ms"] / providers[row]["ms"]
                for row, peer in peers_of.items() if "ms" in providers[row] and "ms" in providers[peer]}
    case = {"size": [size, size], "batch": batch, "pixels": pixels, "providers": providers,
            "speedup_of_unet_fast": ratios, "speedups": speedups, "agreement": agreement}
    if device.type == "cuda" and "ms" in providers["unet_fast"]:
        moved = image.numel() * image.element_size() * 2 + label.numel() * label.element_size() * 2
        moved += coarse.numel() * coarse.element_size()
        case["unet_fast_bytes_moved"] = moved
        case["unet_fast_gbps"] = moved / providers["unet_fast"]["ms"] / 1e6
    return case


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=5, help="timed samples per provider (default 5)")
    parser.add_argument("--min-sample-ms", type=float, default=None,
                        help="calls per sample make a sample last this long (default 50 on CPU, 20 on CUDA)")
    parser.add_argument("--label-dtype", default="uint8", choices=["uint8", "int64"])
    parser.add_argument("--machine", default=None, help="a name for the machine, stored in the JSON")
    parser.add_argument("--json", type=Path, help="write the results to this JSON file")
    args = parser.parse_args(argv)

    from unet_fast.benchmark.environment import describe
    from unet_fast.benchmark.measure import copy_bandwidth

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device")
    min_sample_ms = args.min_sample_ms or (20.0 if device.type == "cuda" else 50.0)
    result = {
        "benchmark": "augment",
        "machine": args.machine,
        "environment": describe(device),
        "settings": {"grid": GRID, "sigma_px": SIGMA_PX, "image": "float32 (N, 1, S, S)",
                     "label": f"{args.label_dtype} (N, S, S)", "padding": "reflection", "rounds": args.rounds,
                     "min_sample_ms": min_sample_ms, "torch_threads": torch.get_num_threads()},
        "cases": [],
    }
    for size in args.sizes:
        for batch in args.batches:
            case = bench_case(size, batch, device, args.rounds, min_sample_ms, getattr(torch, args.label_dtype))
            result["cases"].append(case)
            line = ", ".join(f"{name} {r.get('mpixels_per_s', 0):.1f}" if "ms" in r else f"{name} {r['status']}"
                             for name, r in case["providers"].items())
            print(f"{size}x{size} batch {batch} (Mpixel/s): {line}", file=sys.stderr)
            print("  unet_fast speedup: " + ", ".join(f"{k} {v:.2f}x" for k, v in case["speedup_of_unet_fast"].items()),
                  file=sys.stderr)
            print("  " + ", ".join(f"{k} {v:.2f}x" for k, v in case["speedups"].items()), file=sys.stderr)
    if device.type == "cuda":
        copy = copy_bandwidth(device, 1 << 30)
        result["copy_bandwidth_gbps"] = copy["gbps"]
        for case in result["cases"]:
            if "unet_fast_gbps" in case:
                case["fraction_of_copy_bandwidth"] = case["unet_fast_gbps"] / copy["gbps"]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({f"{c['size'][0]}x{c['batch']}": c["speedup_of_unet_fast"] for c in result["cases"]}, indent=1))
    return result


if __name__ == "__main__":
    main()

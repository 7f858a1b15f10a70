"""Large-image inference: throughput and peak host memory against image size, streamed vs in memory.

    python benchmarks/bench_large_inference.py [--sizes 1024,4096,8192,16384] [--in-memory-max 4096]
        [--json benchmarks/results/cpu/large_inference.json] [--plot benchmarks/results/cpu/large_inference.png]

For every square size a synthetic EM mosaic (uint8, tiled TIFF) is written, then segmented in a
fresh subprocess by ``predict_large`` (streamed into Zarr, labels and float16 probabilities) and, up
to ``--in-memory-max``, by its peer in the same run: the whole image read with tifffile, normalised
and passed to ``predict_tiled``, its float32 probabilities kept, as the in-memory path does. Each
child reports its wall time (megapixels/s of output) and ``ru_maxrss`` growth over its baseline taken
after the imports and the model's creation. Model: ``UNet(base_channels=2, depth=2)`` on the plain
torch backend, one torch thread (tiny convolutions collapse with contended OpenMP threads on a shared
CPU), default tile size and batch size. The JSON holds every measurement and the in-memory/streamed
ratios at the sizes both ran.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from unet_fast.benchmark.environment import describe

CHILD = """
import json, resource, sys, time
import numpy, tifffile, torch, tqdm, zarr
import unet_fast
from unet_fast.inference import predict_large, predict_tiled

torch.set_num_threads(1)
method, source, out = sys.argv[1:4]
torch.manual_seed(0)
model = unet_fast.UNet(base_channels=2, depth=2, backend="torch").eval()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if method == "streamed":
    predict_large(model, source, out, probs=True, progress=False)
else:
    image = torch.from_numpy(tifffile.imread(source)).float().div_(255)[None]
    probs, labels = predict_tiled(model, image, batch_size=2)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "baseline_rss_mb": before / 1024, "peak_rss_growth_mb": (after - before) / 1024}))
"""


def measure(method: str, source: Path, out: Path, size: int) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, method, str(source), str(out)], capture_output=True,
                            text=True, env=_child_env())
    if result.returncode != 0:
        raise RuntimeError(f"{method} at {size}: {result.stderr[-2000:]}")
    row = {"method": method, "size": size, **json.loads(result.stdout.strip().splitlines()[-1])}
    row["megapixels_per_s"] = size * size / 1e6 / row["seconds"]
    return row


def _child_env() -> dict:
    import os

    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, speed) = plt.subplots(1, 2, figsize=(10, 4))
    for method, marker in (("streamed", "o"), ("in_memory", "s")):
        mine = [r for r in rows if r["method"] == method]
        label = "predict_large (streamed)" if method == "streamed" else "predict_tiled (in memory)"
        memory.plot([r["size"] for r in mine], [r["peak_rss_growth_mb"] for r in mine], marker=marker, label=label)
        speed.plot([r["size"] for r in mine], [r["megapixels_per_s"] for r in mine], marker=marker, label=label)
    for axis, title in ((memory, "peak RSS growth (MB)"), (speed, "throughput (megapixels/s)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("image edge (px, square)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle("UNet(base_channels=2, depth=2), CPU, one thread")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1024,4096,8192,16384", help="comma-separated square image edges")
    parser.add_argument("--in-memory-max", type=int, default=4096, help="largest size for the in-memory peer")
    parser.add_argument("--json", default="benchmarks/results/cpu/large_inference.json")
    parser.add_argument("--plot", default="benchmarks/results/cpu/large_inference.png")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    from unet_fast.data import write_synthetic_mosaic

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in sizes:
            source = Path(scratch) / f"mosaic_{size}.tif"
            write_synthetic_mosaic(source, size, size, tile=512, distinct=4)
            methods = ["streamed"] + (["in_memory"] if size <= args.in_memory_max else [])
            for method in methods:
                row = measure(method, source, Path(scratch) / f"out_{size}_{method}.zarr", size)
                rows.append(row)
                print(f"{method:10s} {size:6d}^2  {row['megapixels_per_s']:6.3f} MP/s  "
                      f"peak RSS +{row['peak_rss_growth_mb']:7.1f} MB  ({row['seconds']:.1f} s)", flush=True)
            source.unlink()
    ratios = []
    for size in sizes:
        pair = {r["method"]: r for r in rows if r["size"] == size}
        if len(pair) == 2:
            ratios.append({"size": size,
                           "rss_in_memory_over_streamed": pair["in_memory"]["peak_rss_growth_mb"]
                           / pair["streamed"]["peak_rss_growth_mb"],
                           "speed_streamed_over_in_memory": pair["streamed"]["megapixels_per_s"]
                           / pair["in_memory"]["megapixels_per_s"]})
            print(f"{size}^2: in-memory/streamed peak RSS {ratios[-1]['rss_in_memory_over_streamed']:.2f}x, "
                  f"streamed/in-memory speed {ratios[-1]['speed_streamed_over_in_memory']:.2f}x")
    report = {"benchmark": "large_inference", "environment": describe(torch.device("cpu")), "torch_threads": 1,
              "model": "UNet(base_channels=2, depth=2, backend='torch')", "probs": True, "rows": rows,
              "ratios": ratios}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, Path(args.plot))
    print(f"wrote {args.json} and {args.plot}")
    return 0

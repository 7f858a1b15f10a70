"""Border weight map (the border_distances op and the paper's formula around it):
unet_fast.weight_map.weight_map against a scipy loop of one Euclidean distance transform per cell
(the straightforward implementation of the paper's formula).

    python benchmarks/bench_border_distances.py [--size 512] [--cell-size 48] [--repeats 5] [--json PATH]

(or ``python -m unet_fast.benchmark.ops.border_distances`` where the package is installed).

The label map is a synthetic EM image (98 cells at 512x512 with the default seed and cell size).
Times are the median over repeats of single-threaded runs (torch and the C++ op use one thread;
scipy is single-threaded anyway); the speedup is scipy / unet_fast. It also reports the largest
difference between the two maps, which the distance cutoff bounds by 1e-6 (plus float32 rounding).
"""
from __future__ import annotations

import argparse
import os
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage


def scipy_weight_map(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The paper's w(x) with w_c balancing the two classes, one distance transform per cell."""
    cells, count = ndimage.label(labels == 1)
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for cell in range(1, count + 1):
        distance = ndimage.distance_transform_edt(cells != cell)
        d2 = np.minimum(d2, np.maximum(d1, distance))
        d1 = np.minimum(d1, distance)
    counts = np.bincount(labels.ravel(), minlength=2)
    w_c = labels.size / (np.count_nonzero(counts) * np.maximum(counts, 1))
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    return w_c[labels] + np.where(cells == 0, border, 0.0)


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="label map height and width (default 512)")
    parser.add_argument("--cell-size", type=float, default=60.0, help="mean cell diameter in px (default 60: 98 cells)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per implementation (default 5)")
    parser.add_argument("--json", type=Path, help="write the results to this JSON file")
    args = parser.parse_args(argv)

    # One thread, like the scipy loop; the caller's setting is restored (tests run this in-process).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args) -> dict:
    from unet_fast.data import synthetic_em_sample
    from unet_fast.weight_map import weight_map

    _, labels, _ = synthetic_em_sample(args.size, args.seed, 0, args.cell_size)
    cells = int(ndimage.label(labels == 1)[1])
    label_tensor = torch.from_numpy(labels)

    ours = weight_map(label_tensor).numpy()  # warm-up, and the map to compare
    reference = scipy_weight_map(labels)
    fast = _median_seconds(lambda: weight_map(label_tensor), args.repeats)
    slow = _median_seconds(lambda: scipy_weight_map(labels), max(1, min(args.repeats, 3)))
    result = {
        "benchmark": "weight_map",
        "size": [args.size, args.size],
        "cells": cells,
        "scipy_loop_s": slow,
        "unet_fast_s": fast,
        "speedup": slow / fast,
        "max_abs_difference": float(np.abs(ours - reference).max()),
        "threads": 1,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
    }
    print(
        f"weight map {args.size}x{args.size}, {cells} cells: scipy per-cell loop {slow * 1e3:.1f} ms, "
        f"unet_fast {fast * 1e3:.1f} ms, speedup {result['speedup']:.1f}x, "
        f"max |difference| {result['max_abs_difference']:.2e}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

"""The ISBI 2012 report: train a stated configuration (or load a checkpoint), predict held-out
slices, and score them with the paper's three metrics next to its Table 1; and the metrics' speed
on a 512x512 slice against scikit-image.

    python benchmarks/bench_em_report.py [--data ../shared/data/isbi2012] [--steps 120] [--checkpoint DIR]
                                    [--json benchmarks/results/cpu/em_report.json]
    python benchmarks/bench_em_report.py --speed [--json benchmarks/results/cpu/metrics_speed.json]

The default training (120 steps of a depth-4, 8-channel network on 188 px tiles, the recipe of
``unet-fast train`` otherwise) takes minutes on 2 CPU cores; the paper's is far larger and longer.
The split is the training recipe's: the last ``--held-out`` slices by file name are held out, the
others train. The paper's figures are on the challenge's test set (labels hidden, scored by the
organisers); ours are on held-out training slices, so they are a sanity check, not a ranking.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from unet_fast.benchmark.environment import describe
from unet_fast.benchmark.measure import time_interleaved

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "isbi2012"
# Ronneberger et al. 2015, Table 1 (ISBI 2012 challenge test set, the organisers' evaluation).
PAPER_TABLE_1 = {"warping_error": 0.000353, "rand_error": 0.0382, "pixel_error": 0.0611}
THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(1, 10))
NOTE = ("The paper's figures are on the ISBI 2012 challenge's test set, scored by the organisers; ours are on "
        "held-out training slices of the same data set with a small CPU model and short training, so they are "
        "not comparable as a ranking.")


def _load(data: Path):
    from unet_fast.data import ImageFolderDataset

    if not data.is_dir():
        raise SystemExit(f"--data {data} is not a directory with images/ and labels/ (the ISBI 2012 slices)")
    return ImageFolderDataset(data, 2)


def _scores(probs: np.ndarray, truths: np.ndarray) -> dict:
    """The paper's three metrics at the argmax (threshold 0.5) and at their best threshold."""
    from unet_fast.metrics import best_over_thresholds, pixel_error, rand_error, warping_error

    pred = (probs >= 0.5).astype(np.int64)
    warp = warping_error(pred, truths)
    at_argmax = {"warping_error": warp["error"], "splits": warp["splits"], "mergers": warp["mergers"],
                 "rand_error": rand_error(pred, truths), "pixel_error": pixel_error(pred, truths)}
    best = {}
    for name, key in (("warping", "warping_error"), ("rand", "rand_error"), ("pixel", "pixel_error")):
        found = best_over_thresholds(name, probs, truths, THRESHOLDS)
        best[key] = {"threshold": found["threshold"], "value": found["value"]}
    return {"at_argmax": at_argmax, "best_threshold": best}


def run_report(data: Path, *, steps: int, base_channels: int, depth: int, tile_size: int, held_out: int, seed: int,
               checkpoint: str | None) -> dict:
    from unet_fast.inference import predict_tiled
    from unet_fast.train import TrainConfig, load_model, train

    dataset = _load(data)
    count = len(dataset.labels)
    if not 0 < held_out < count:
        raise SystemExit(f"--held-out must lie in [1, {count - 1}] for {count} slices, got {held_out}")
    config = TrainConfig(data=str(data), out="", base_channels=base_channels, depth=depth, tile_size=tile_size,
                         steps=steps, val_images=held_out, val_interval=steps, seed=seed, device="cpu", progress=False)
    training_seconds = None
    with tempfile.TemporaryDirectory() as run_dir:
        if checkpoint is None:
            config.out = run_dir
            start = time.perf_counter()
            train(config)
            training_seconds = time.perf_counter() - start
            checkpoint = run_dir
        model = load_model(checkpoint, "cpu")
        start = time.perf_counter()
        probs = [predict_tiled(model, image.float(), batch_size=2)[0][1].numpy()
                 for image in dataset.images[count - held_out:]]
        prediction_seconds = time.perf_counter() - start
    truths = np.stack([label.numpy() for label in dataset.labels[count - held_out:]])
    names = list(dataset.names)
    return {
        "benchmark": "isbi2012",
        "environment": describe(torch.device("cpu")),
        "config": {"steps": steps, "base_channels": base_channels, "depth": depth, "tile_size": tile_size, "seed": seed,
                   "recipe": "unet-fast train defaults (AdamW, elastic augmentation, border weights)",
                   "checkpoint": None if training_seconds is not None else str(checkpoint)},
        "split": {"train": names[: count - held_out], "held_out": names[count - held_out:]},
        "training_seconds": training_seconds,
        "prediction_seconds": prediction_seconds,
        "ours": _scores(np.stack(probs), truths),
        "paper_table_1": PAPER_TABLE_1,
        "note": NOTE,
    }


def _perturbed(truth: np.ndarray, seed: int) -> np.ndarray:
    """A stand-in prediction: the label shifted by one pixel with 2% of its pixels flipped."""
    rng = np.random.default_rng(seed)
    shifted = np.roll(truth, 1, axis=1)
    return np.where(rng.random(truth.shape) < 0.02, 1 - shifted, shifted)


def run_speed(data: Path, *, rounds: int) -> dict:
    from skimage.measure import label
    from skimage.metrics import adapted_rand_error, variation_of_information as skimage_voi

    from unet_fast.metrics import pixel_error, rand_scores, variation_of_information, warping_error

    truth = _load(data).labels[0].numpy()
    pred = _perturbed(truth, 0)

    def skimage_segments():
        true_segments, pred_segments = label(truth, connectivity=1), label(pred, connectivity=1)
        singles = (pred_segments == 0) & (true_segments > 0)
        pred_segments[singles] = pred_segments.max() + 1 + np.arange(np.count_nonzero(singles))
        return true_segments, pred_segments

    candidates = {
        "pixel_error": lambda: pixel_error(pred, truth),
        "rand_scores": lambda: rand_scores(pred, truth),
        "variation_of_information": lambda: variation_of_information(pred, truth),
        "warping_error": lambda: warping_error(pred, truth),
        "skimage_adapted_rand_error": lambda: adapted_rand_error(*skimage_segments(), ignore_labels=(0,)),
        "skimage_variation_of_information": lambda: skimage_voi(*skimage_segments(), ignore_labels=(0,)),
    }
    timings, errors = time_interleaved(candidates, torch.device("cpu"), warmup=1, rounds=rounds, min_sample_ms=50)
    ratios = {}
    for ours, peer in (("rand_scores", "skimage_adapted_rand_error"),
                       ("variation_of_information", "skimage_variation_of_information")):
        if ours in timings and peer in timings:
            ratios[f"{peer} / {ours}"] = timings[peer]["ms"] / timings[ours]["ms"]
    return {
        "benchmark": "metrics_speed",
        "environment": describe(torch.device("cpu")),
        "input": {"shape": list(truth.shape), "target": "ISBI 2012 label of the first slice",
                  "prediction": "the label shifted by one pixel, 2% of pixels flipped (seed 0)",
                  "disagreeing_pixels": int(np.count_nonzero(pred != truth))},
        "timings": timings,
        "errors": errors,
        "ratios": ratios,
        "note": "skimage peers include the same 4-connected labelling and singleton convention as ours "
                "(their inputs are prepared inside the timed call, as ours are).",
    }


def _print_report(result: dict) -> None:
    ours = result["ours"]
    print(f"ISBI 2012, held out {', '.join(result['split']['held_out'])} ({len(result['split']['train'])} train); "
          f"device {result['environment']['device_name']}; training "
          f"{result['training_seconds'] and round(result['training_seconds'], 1)} s")
    print(f"{'metric':16s} {'paper (test set)':>17s} {'ours @0.5':>10s} {'ours best':>10s} {'threshold':>9s}")
    for key, paper in result["paper_table_1"].items():
        best = ours["best_threshold"][key]
        print(f"{key:16s} {paper:17.6f} {ours['at_argmax'][key]:10.6f} {best['value']:10.6f} {best['threshold']:9.1f}")
    print(f"splits {ours['at_argmax']['splits']}, mergers {ours['at_argmax']['mergers']} (at 0.5)")
    print(result["note"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_em_report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory with images/ and labels/")
    parser.add_argument("--speed", action="store_true", help="time the metrics on a 512x512 slice instead")
    # Small enough for a few minutes on 2 shared CPU cores; the paper's network is depth 5, 64 channels, 572 px.
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--tile-size", type=int, default=188, help="largest training tile edge")
    parser.add_argument("--held-out", type=int, default=5, help="the last slices by name, not trained on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None, help="a run or checkpoint directory instead of training")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds of --speed")
    parser.add_argument("--json", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.speed:
        result = run_speed(args.data, rounds=args.rounds)
        for name, timing in result["timings"].items():
            print(f"{name:34s} {timing['ms']:9.2f} ms")
        for name, ratio in result["ratios"].items():
            print(f"{name:60s} {ratio:6.2f}x")
    else:
        result = run_report(args.data, steps=args.steps, base_channels=args.base_channels, depth=args.depth,
                            tile_size=args.tile_size, held_out=args.held_out, seed=args.seed, checkpoint=args.checkpoint)
        _print_report(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0

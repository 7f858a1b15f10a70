"""``unet-fast evaluate``: score predicted class maps, or probability maps over thresholds, against
ground-truth label images matched by file stem; a per-image and mean table, JSON, CSV, a plot.

Predictions are ``<stem>.png``/``.tif`` class maps (what ``unet-fast predict`` writes) or, with
``probs=True``, ``<stem>_probs.tif`` (K pages of class probabilities, ``predict --probs``). With
probabilities every metric is computed at each threshold of the foreground probability; its best
threshold is the one with the best mean over the images (one threshold for the whole set, as the
ISBI 2012 challenge reported), and the per-image rows show the values at it.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from unet_fast.data import read_label
from unet_fast.metrics import METRICS, Metric, get_metric
from unet_fast.metrics.thresholds import pick_best

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
OUTPUT_SUFFIXES = ("_probs", "_segments")  # other files `unet-fast predict` writes next to the class maps
DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def parse_metrics(text: str) -> list[Metric]:
    """``"pixel,rand"`` (or ``"all"``) -> the metrics; ValueError naming an unknown name and the choices."""
    names = list(METRICS) if text.strip() == "all" else [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--metrics is empty: expected a comma-separated list of {', '.join(METRICS)}")
    try:
        return [get_metric(name) for name in dict.fromkeys(names)]
    except ValueError as error:
        raise ValueError(f"--metrics: {error}") from None


def parse_thresholds(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--thresholds must be comma-separated numbers in [0, 1], got {text!r}") from None
    if not values or not all(0.0 <= t <= 1.0 for t in values):
        raise ValueError(f"--thresholds must be comma-separated numbers in [0, 1], got {text!r}")
    return values


def _files(directory: Path, option: str) -> dict[str, Path]:
    if not directory.is_dir():
        raise ValueError(f"{option} {directory} is not a directory")
    return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def match_files(pred_dir, label_dir, probs: bool = False) -> list[tuple[str, Path, Path]]:
    """(stem, prediction, label) for every label; ValueError when the stems do not match one to one."""
    preds = _files(Path(pred_dir), "--pred")
    if probs:
        preds = {stem[: -len("_probs")]: p for stem, p in preds.items() if stem.endswith("_probs")}
    else:
        preds = {stem: p for stem, p in preds.items() if not stem.endswith(OUTPUT_SUFFIXES)}
    labels = _files(Path(label_dir), "--labels")
    kind = "<stem>_probs.tif probability maps" if probs else "class-map images"
    if not labels:
        raise ValueError(f"--labels {label_dir} holds no PNG or TIFF label images")
    if not preds:
        raise ValueError(f"--pred {pred_dir} holds no {kind}")
    for missing, side, other in ((sorted(labels.keys() - preds.keys()), "--pred", "label"),
                                 (sorted(preds.keys() - labels.keys()), "--labels", "prediction")):
        if missing:
            raise ValueError(f"{side} has no file for the {other} stem(s) {', '.join(missing[:3])}"
                             f"{' ...' if len(missing) > 3 else ''} ({len(missing)} unmatched)")
    return [(stem, preds[stem], labels[stem]) for stem in sorted(labels)]


def _read_probability(path: Path, foreground: int) -> np.ndarray:
    import tifffile

    probs = np.asarray(tifffile.imread(path))
    if probs.ndim != 3 or probs.shape[0] <= foreground:
        raise ValueError(f"{path} must hold (K, H, W) class probabilities with K > {foreground} (--foreground), "
                         f"got shape {probs.shape}")
    page = probs[foreground].astype(np.float32)
    if not np.all(np.isfinite(page)) or page.min() < 0 or page.max() > 1:
        raise ValueError(f"{path} holds probabilities outside [0, 1]")
    return page


def evaluate_directories(pred_dir, label_dir, metrics: list[Metric], *, probs: bool = False,
                         thresholds=DEFAULT_THRESHOLDS, num_classes: int = 2, foreground: int = 1) -> dict:
    """Score every matched image. Returns a JSON-ready dict: ``metrics`` (names), ``images`` (rows
    with ``image`` and one value per metric), ``mean``, and with probabilities ``thresholds`` (the
    list), ``best_threshold`` and ``mean_by_threshold`` per metric."""
    if num_classes < 2:
        raise ValueError(f"--num-classes must be >= 2, got {num_classes}")
    if not 0 <= foreground < num_classes:
        raise ValueError(f"--foreground must be a class id in [0, {num_classes}) (--num-classes {num_classes}), "
                         f"got {foreground}")
    pairs = match_files(pred_dir, label_dir, probs)
    cuts = list(thresholds) if probs else [None]
    values = {m.name: np.zeros((len(cuts), len(pairs))) for m in metrics}
    for j, (stem, pred_path, label_path) in enumerate(pairs):
        truth = read_label(label_path, num_classes)[0]
        pred = _read_probability(pred_path, foreground) if probs else read_label(pred_path, num_classes)[0]
        if pred.shape != truth.shape:
            raise ValueError(f"{pred_path} is {pred.shape[0]}x{pred.shape[1]} but {label_path} is "
                             f"{truth.shape[0]}x{truth.shape[1]} (height x width)")
        for m in metrics:
            for i, cut in enumerate(cuts):
                values[m.name][i, j] = m.function(pred, truth, foreground=foreground, threshold=cut)
    best = {m.name: pick_best(m, values[m.name].mean(axis=1)) for m in metrics}
    rows = [{"image": stem, **{m.name: float(values[m.name][best[m.name], j]) for m in metrics}}
            for j, (stem, _, _) in enumerate(pairs)]
    result = {"metrics": [m.name for m in metrics], "images": rows,
              "mean": {m.name: float(values[m.name][best[m.name]].mean()) for m in metrics}}
    if probs:
        result.update(thresholds=[float(t) for t in cuts],
                      best_threshold={m.name: float(cuts[best[m.name]]) for m in metrics},
                      mean_by_threshold={m.name: values[m.name].mean(axis=1).tolist() for m in metrics})
    return result


def format_table(result: dict) -> str:
    """The per-image rows, the mean and (probabilities) the best thresholds, one column per metric."""
    names = result["metrics"]
    heads = [METRICS[name].column for name in names]
    width = max([16] + [len(row["image"]) + 1 for row in result["images"]])
    lines = [f"{'image':{width}s}" + "".join(f" {head:>15s}" for head in heads)]
    for row in result["images"] + [{"image": "mean", **result["mean"]}]:
        lines.append(f"{row['image']:{width}s}" + "".join(f" {row[name]:15.6f}" for name in names))
    if "best_threshold" in result:
        lines.append(f"{'best threshold':{width}s}" + "".join(f" {result['best_threshold'][n]:15.2f}" for n in names))
    return "\n".join(lines)


def write_json(result: dict, path) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


def write_csv(result: dict, path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", *result["metrics"]])
        writer.writeheader()
        writer.writerows(result["images"] + [{"image": "mean", **result["mean"]}])


def plot_thresholds(result: dict, path) -> None:
    """The mean of every metric against the threshold, one panel per metric, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result["metrics"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(result["thresholds"], result["mean_by_threshold"][name], marker=".")
        ax.axvline(result["best_threshold"][name], color="grey", linestyle="--", linewidth=1)
        ax.set(title=METRICS[name].description, xlabel="threshold")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

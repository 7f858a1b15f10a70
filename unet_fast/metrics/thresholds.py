"""Metrics by name, and the best value over thresholds of a probability map (as the ISBI 2012
challenge reported its scores)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from unet_fast.metrics.pixel import foreground_dice, foreground_iou, pixel_error
from unet_fast.metrics.segments import info_error, rand_error, voi_total
from unet_fast.metrics.warping import warping_error


@dataclass(frozen=True)
class Metric:
    """A scalar metric ``function(pred, target, foreground=, threshold=) -> float``; ``column`` is
    its heading in tables."""

    name: str
    function: Callable[..., float]
    higher_is_better: bool
    description: str
    column: str


def _warping(pred, target, foreground: int = 1, threshold: float | None = None) -> float:
    return warping_error(pred, target, foreground, threshold)["error"]


METRICS = {
    m.name: m
    for m in (
        Metric("pixel", pixel_error, False, "pixel error", "pixel_error"),
        Metric("rand", rand_error, False, "adapted Rand error 1 - V_Rand", "rand_error"),
        Metric("info", info_error, False, "information error 1 - V_info", "info_error"),
        Metric("warping", _warping, False, "warping error", "warping_error"),
        Metric("voi", voi_total, False, "variation of information (bits)", "voi_bits"),
        Metric("iou", foreground_iou, True, "foreground IoU", "foreground_iou"),
        Metric("dice", foreground_dice, True, "foreground Dice", "foreground_dice"),
    )
}


def get_metric(name: str) -> Metric:
    """The metric called ``name`` (a key of ``METRICS``); ValueError naming the choices otherwise."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}: expected one of {', '.join(METRICS)}")
    return METRICS[name]


def pick_best(metric: Metric, values) -> int:
    """The index of the best of values (the first on ties)."""
    return int(np.argmax(values) if metric.higher_is_better else np.argmin(values))


def best_over_thresholds(metric, probs, target, thresholds, foreground: int = 1) -> dict:
    """Score a foreground probability map at each threshold and report the best.

    Args:
        metric: a name of ``METRICS`` or a :class:`Metric`.
        probs: (H, W) or (N, H, W) float foreground probabilities in [0, 1].
        target: class map of the same shape.
        thresholds: a non-empty sequence of thresholds in [0, 1].
    Returns:
        ``{"threshold": best threshold, "value": its value, "thresholds": [...], "values": [...]}``;
        the first best threshold on ties.
    """
    metric = get_metric(metric) if isinstance(metric, str) else metric
    try:
        thresholds = [float(t) for t in np.atleast_1d(np.asarray(thresholds, dtype=np.float64))]
    except (TypeError, ValueError):
        raise TypeError(f"thresholds must be a sequence of numbers in [0, 1], got {thresholds!r}") from None
    if not thresholds:
        raise ValueError("thresholds must not be empty")
    values = [metric.function(probs, target, foreground=foreground, threshold=t) for t in thresholds]
    pick = pick_best(metric, values)
    return {"threshold": thresholds[pick], "value": values[pick], "thresholds": thresholds, "values": values}


def segmentation_metrics(pred, target, foreground: int = 1) -> dict[str, float]:
    """The fast metrics at once: ``pixel_error``, ``foreground_iou``, ``foreground_dice``, ``rand_error``."""
    return {
        "pixel_error": pixel_error(pred, target),
        "foreground_iou": foreground_iou(pred, target, foreground),
        "foreground_dice": foreground_dice(pred, target, foreground),
        "rand_error": rand_error(pred, target, foreground),
    }

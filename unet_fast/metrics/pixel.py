"""Pixel-wise metrics: pixel error, foreground IoU and Dice (pixel counts pooled over a batch)."""
from __future__ import annotations

import numpy as np

from unet_fast.metrics.inputs import foreground_pair, label_pair


def pixel_error(pred, target, foreground: int = 1, threshold: float | None = None) -> float:
    """Fraction of pixels whose predicted class differs from the true class.

    With ``threshold``, pred is the foreground probability and the foreground masks are compared.
    """
    if threshold is None:
        pred, target = label_pair(pred, target)
        return float(np.mean(pred != target)) if pred.size else 0.0
    p, t = foreground_pair(pred, target, foreground, threshold)
    return float(np.mean(p != t)) if p.size else 0.0


def foreground_iou(pred, target, foreground: int = 1, threshold: float | None = None) -> float:
    """|P & T| / |P | T| for the foreground class; 1.0 when both are empty."""
    p, t = foreground_pair(pred, target, foreground, threshold)
    union = np.count_nonzero(p | t)
    return float(np.count_nonzero(p & t) / union) if union else 1.0


def foreground_dice(pred, target, foreground: int = 1, threshold: float | None = None) -> float:
    """2 |P & T| / (|P| + |T|) for the foreground class; 1.0 when both are empty."""
    p, t = foreground_pair(pred, target, foreground, threshold)
    total = np.count_nonzero(p) + np.count_nonzero(t)
    return float(2 * np.count_nonzero(p & t) / total) if total else 1.0

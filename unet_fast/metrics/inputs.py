"""The metrics' input conversion: class maps or probability maps to (N, H, W) arrays.

A class map holds integer class ids (1 = cell, 0 = boundary in the ISBI labels); a probability map
holds the foreground class's probability in [0, 1] and needs a ``threshold`` (foreground where
probability >= threshold). Tensors and arrays are accepted, (H, W) or (N, H, W).
"""
from __future__ import annotations

import numpy as np
import torch

from unet_fast.ops._validation import check_has_values


def as_array(name: str, value) -> np.ndarray:
    """A tensor or array as a numpy array of shape (H, W) or (N, H, W)."""
    if isinstance(value, torch.Tensor):
        check_has_values(name, value)
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    if value.ndim not in (2, 3):
        raise ValueError(f"{name} must be (H, W) or (N, H, W), got shape {value.shape}")
    return value


def as_label_array(name: str, value) -> np.ndarray:
    """Integer class ids (or segment ids) as int64."""
    value = as_array(name, value)
    if value.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integer class ids (or pass threshold= for a probability map), "
                        f"got dtype {value.dtype}")
    return value.astype(np.int64)


def _check_shapes(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} differs from target shape {target.shape}")


def label_pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    """Two integer maps of one shape."""
    pred, target = as_label_array("pred", pred), as_label_array("target", target)
    _check_shapes(pred, target)
    return pred, target


def foreground_pair(pred, target, foreground: int = 1, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boolean foreground masks (N, H, W) of pred and target.

    pred is a class map (``threshold=None``: foreground where pred == foreground) or the
    foreground probability (foreground where pred >= threshold); target is always a class map.
    """
    if isinstance(foreground, bool) or not isinstance(foreground, (int, np.integer)):
        raise TypeError(f"foreground must be an integer class id, got {type(foreground).__name__} {foreground!r}")
    target = as_label_array("target", target)
    if threshold is None:
        pred_mask = as_label_array("pred", pred) == foreground
    else:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)):
            raise TypeError(f"threshold must be a number in [0, 1] or None, got {type(threshold).__name__}")
        threshold = float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        probs = as_array("pred", pred)
        if probs.dtype.kind != "f":
            raise TypeError(f"pred must be a float probability map when threshold is given, got dtype {probs.dtype}")
        if not np.all(np.isfinite(probs)):
            raise ValueError("pred probability map holds NaN or infinite values")
        pred_mask = probs >= threshold
    _check_shapes(pred_mask, target)
    target_mask = target == foreground
    if pred_mask.ndim == 2:
        pred_mask, target_mask = pred_mask[None], target_mask[None]
    return pred_mask, target_mask

"""Segmentation metrics of the U-Net paper's EM experiments: pixel error, foreground IoU / Dice, and
the ISBI 2012 adapted Rand error.

All functions take label maps (predicted and true class ids), (H, W) or (N, H, W), as tensors or
arrays; batches are pooled (pixel counts summed over the batch, the Rand error computed per image
and averaged).

Adapted Rand error (Arganda-Carreras et al. 2015, "Crowdsourcing the creation of image
segmentation algorithms for connectomics", the ISBI 2012 challenge metric): segments are the
4-connected components of the foreground class (cells) in each label map. Only pixels that are
foreground in the ground truth count (foreground-restricted). Predicted background pixels among
them are each a segment of their own (singletons), so predicted membrane inside a true cell counts
as splits, never merges. With n_ij the number of counted pixels in predicted segment i and true
segment j, s_i = sum_j n_ij and t_j = sum_i n_ij (singletons contribute n, not n^2, to the sums of
squares):

    precision = sum n_ij^2 / sum s_i^2,   recall = sum n_ij^2 / sum t_j^2,
    rand_error = 1 - 2 precision recall / (precision + recall).

These are the N^2-normalised sums of the challenge's evaluation (Fiji's Trainable Segmentation,
``RandError``, foreground-restricted statistics), whose F-score is the challenge's V_Rand.
It is 0 for a perfect segmentation and near 1 when everything is merged or split. The challenge
reported the best value over thresholds of a probability map; these functions score one label map.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def _as_label_array(name: str, value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    if value.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integer class ids, got dtype {value.dtype}")
    if value.ndim not in (2, 3):
        raise ValueError(f"{name} must be (H, W) or (N, H, W), got shape {value.shape}")
    return value.astype(np.int64)


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    pred, target = _as_label_array("pred", pred), _as_label_array("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} differs from target shape {target.shape}")
    return pred, target


def pixel_error(pred, target) -> float:
    """Fraction of pixels whose predicted class differs from the true class."""
    pred, target = _pair(pred, target)
    return float(np.mean(pred != target)) if pred.size else 0.0


def foreground_iou(pred, target, foreground: int = 1) -> float:
    """|P & T| / |P | T| for the foreground class; 1.0 when both are empty."""
    pred, target = _pair(pred, target)
    p, t = pred == foreground, target == foreground
    union = np.count_nonzero(p | t)
    return float(np.count_nonzero(p & t) / union) if union else 1.0


def foreground_dice(pred, target, foreground: int = 1) -> float:
    """2 |P & T| / (|P| + |T|) for the foreground class; 1.0 when both are empty."""
    pred, target = _pair(pred, target)
    p, t = pred == foreground, target == foreground
    total = np.count_nonzero(p) + np.count_nonzero(t)
    return float(2 * np.count_nonzero(p & t) / total) if total else 1.0


def adapted_rand_error_segments(pred_segments, true_segments) -> float:
    """The adapted Rand error of two segmentations given as segment-id maps (0 = background).

    Args:
        pred_segments, true_segments: (H, W) integer maps; true background pixels are ignored,
            predicted background pixels are singletons (see the module docstring).
    Returns:
        the error in [0, 1]; 0.0 when the ground truth has no foreground.
    """
    pred, true = _pair(pred_segments, true_segments)
    counted = true.ravel() > 0
    pred_ids, true_ids = pred.ravel()[counted], true.ravel()[counted]
    if true_ids.size == 0:
        return 0.0
    singleton = pred_ids == 0
    n_singletons = int(np.count_nonzero(singleton))
    # Contingency counts of the non-singleton pixels; a singleton pixel's n_ij = s_i = 1.
    _, pair_counts = np.unique(np.stack([pred_ids[~singleton], true_ids[~singleton]]), axis=1, return_counts=True)
    _, pred_counts = np.unique(pred_ids[~singleton], return_counts=True)
    _, true_counts = np.unique(true_ids, return_counts=True)
    sum_pairs = float(np.sum(pair_counts.astype(np.float64) ** 2)) + n_singletons
    sum_pred = float(np.sum(pred_counts.astype(np.float64) ** 2)) + n_singletons
    sum_true = float(np.sum(true_counts.astype(np.float64) ** 2))
    precision, recall = sum_pairs / sum_pred, sum_pairs / sum_true
    return float(1.0 - 2.0 * precision * recall / (precision + recall))


def rand_error(pred, target, foreground: int = 1) -> float:
    """The ISBI 2012 adapted Rand error of class maps, averaged over a batch.

    Segments are the 4-connected components of ``foreground`` in pred and in target.
    """
    pred, target = _pair(pred, target)
    if pred.ndim == 2:
        pred, target = pred[None], target[None]
    errors = []
    for p, t in zip(pred, target):
        errors.append(adapted_rand_error_segments(ndimage.label(p == foreground)[0], ndimage.label(t == foreground)[0]))
    return float(np.mean(errors))


def segmentation_metrics(pred, target, foreground: int = 1) -> dict[str, float]:
    """All metrics at once: ``pixel_error``, ``foreground_iou``, ``foreground_dice``, ``rand_error``."""
    return {
        "pixel_error": pixel_error(pred, target),
        "foreground_iou": foreground_iou(pred, target, foreground),
        "foreground_dice": foreground_dice(pred, target, foreground),
        "rand_error": rand_error(pred, target, foreground),
    }

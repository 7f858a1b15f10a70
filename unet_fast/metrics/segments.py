"""Segment-based scores of the ISBI 2012 challenge (Arganda-Carreras et al. 2015): Rand and
information-theoretic F-scores, the adapted Rand error and the variation of information.

Segments are the 4-connected components of the foreground class (cells) of each map. Only pixels
that are foreground in the ground truth count (ground-truth boundary pixels are left out).
Predicted boundary pixels among them are each a segment of their own (singletons): predicted
membrane inside a true cell counts as splitting it, never as merging cells. Every score here uses
this one convention.

With n_ij the number of counted pixels in predicted segment i and true segment j, p_ij = n_ij / n,
s_i = sum_j p_ij (prediction) and t_j = sum_i p_ij (ground truth):

    rand_split = sum p_ij^2 / sum t_j^2,   rand_merge = sum p_ij^2 / sum s_i^2,
    info_split = I(S; T) / H(S),           info_merge = I(S; T) / H(T),

and v_rand, v_info are the harmonic means of each pair (1 is perfect; the errors are 1 - V). The
sums of squares count ordered pixel pairs including a pixel with itself, as the challenge's Fiji
evaluation does. A single segment has zero entropy: its info score is then 1 (nothing to split or
merge). An image without ground-truth foreground scores perfectly.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from unet_fast.metrics.inputs import foreground_pair, label_pair

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def _contingency(pred_segments: np.ndarray, true_segments: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_ij, s_i, t_j) pixel counts over the counted pixels, predicted background as singletons."""
    counted = true_segments.ravel() > 0
    pred_ids, true_ids = pred_segments.ravel()[counted], true_segments.ravel()[counted]
    singletons = pred_ids == 0
    pred_ids = pred_ids.copy()
    pred_ids[singletons] = pred_ids.max(initial=0) + 1 + np.arange(np.count_nonzero(singletons))
    _, pair_counts = np.unique(pred_ids * (true_ids.max(initial=0) + 1) + true_ids, return_counts=True)
    _, pred_counts = np.unique(pred_ids, return_counts=True)
    _, true_counts = np.unique(true_ids, return_counts=True)
    return pair_counts.astype(np.float64), pred_counts.astype(np.float64), true_counts.astype(np.float64)


def _entropy(counts: np.ndarray, total: float) -> float:
    """Shannon entropy in bits of a distribution given by counts."""
    p = counts / total
    return float(-np.sum(p * np.log2(p)))


def _harmonic(a: float, b: float) -> float:
    return 2.0 * a * b / (a + b) if a + b > 0 else 0.0


def segment_scores(pred_segments, true_segments) -> dict[str, float]:
    """The scores of two segment-id maps (H, W), 0 = background; see the module docstring.

    Returns:
        dict with ``v_rand``, ``rand_split``, ``rand_merge``, ``v_info``, ``info_split``,
        ``info_merge``, ``voi_split`` = H(S | T) and ``voi_merge`` = H(T | S) in bits.
    """
    pred, true = label_pair(pred_segments, true_segments)
    pairs, pred_sizes, true_sizes = _contingency(pred, true)
    total = float(true_sizes.sum())
    if total == 0:
        return dict(v_rand=1.0, rand_split=1.0, rand_merge=1.0, v_info=1.0, info_split=1.0, info_merge=1.0,
                    voi_split=0.0, voi_merge=0.0)
    sum_pairs, sum_pred, sum_true = (float(np.sum(c**2)) for c in (pairs, pred_sizes, true_sizes))
    rand_split, rand_merge = sum_pairs / sum_true, sum_pairs / sum_pred
    h_joint, h_pred, h_true = (_entropy(c, total) for c in (pairs, pred_sizes, true_sizes))
    mutual = max(h_pred + h_true - h_joint, 0.0)
    info_split = mutual / h_pred if h_pred > 0 else 1.0
    info_merge = mutual / h_true if h_true > 0 else 1.0
    return dict(v_rand=_harmonic(rand_split, rand_merge), rand_split=rand_split, rand_merge=rand_merge,
                v_info=_harmonic(info_split, info_merge), info_split=info_split, info_merge=info_merge,
                voi_split=max(h_joint - h_true, 0.0), voi_merge=max(h_joint - h_pred, 0.0))


def adapted_rand_error_segments(pred_segments, true_segments) -> float:
    """1 - V_Rand of two segment-id maps (H, W), 0 = background (see the module docstring)."""
    return 1.0 - segment_scores(pred_segments, true_segments)["v_rand"]


def _per_image_scores(pred, target, foreground: int, threshold: float | None) -> list[dict[str, float]]:
    pred_mask, target_mask = foreground_pair(pred, target, foreground, threshold)
    return [segment_scores(ndimage.label(p, _FOUR_CONNECTED)[0], ndimage.label(t, _FOUR_CONNECTED)[0])
            for p, t in zip(pred_mask, target_mask)]


def _mean(rows: list[dict[str, float]], keys) -> dict[str, float]:
    return {key: float(np.mean([row[key] for row in rows])) for key in keys}


def rand_scores(pred, target, foreground: int = 1, threshold: float | None = None) -> dict[str, float]:
    """The ISBI 2012 foreground-restricted Rand and information scores of class maps.

    Args:
        pred: (H, W) or (N, H, W) class map, or foreground probability with ``threshold``.
        target: class map of the same shape; ``foreground`` is the cell class.
    Returns:
        ``v_rand``, ``rand_split``, ``rand_merge``, ``v_info``, ``info_split``, ``info_merge``
        (each in [0, 1], 1 is perfect; averaged over a batch). Predicted boundary pixels inside true
        cells are singleton segments (module docstring).
    """
    keys = ("v_rand", "rand_split", "rand_merge", "v_info", "info_split", "info_merge")
    return _mean(_per_image_scores(pred, target, foreground, threshold), keys)


def rand_error(pred, target, foreground: int = 1, threshold: float | None = None) -> float:
    """The adapted Rand error 1 - V_Rand of class maps (as :func:`rand_scores`), averaged over a batch."""
    return 1.0 - rand_scores(pred, target, foreground, threshold)["v_rand"]


def info_error(pred, target, foreground: int = 1, threshold: float | None = None) -> float:
    """1 - V_info of class maps (as :func:`rand_scores`), averaged over a batch."""
    return 1.0 - rand_scores(pred, target, foreground, threshold)["v_info"]


def variation_of_information(pred, target, foreground: int = 1, threshold: float | None = None) -> tuple[float, float]:
    """(split, merge) = (H(pred | target), H(target | pred)) in bits, averaged over a batch.

    Over the 4-connected foreground segments, ground-truth boundary pixels left out (the CREMI
    convention ``ignore_groundtruth=[0]``); predicted boundary pixels inside true cells are
    singletons, as in :func:`rand_scores`. 0 is perfect; the sum is the variation of information.
    """
    mean = _mean(_per_image_scores(pred, target, foreground, threshold), ("voi_split", "voi_merge"))
    return mean["voi_split"], mean["voi_merge"]


def voi_total(pred, target, foreground: int = 1, threshold: float | None = None) -> float:
    """The variation of information split + merge in bits (:func:`variation_of_information`)."""
    return math.fsum(variation_of_information(pred, target, foreground, threshold))

"""The U-Net paper's loss weight map (Ronneberger et al. 2015, eq. 2):

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

- ``w_c`` balances class frequencies: by default ``w_c(x) = P / (K' * P_k)`` for a pixel of class
  k, with P pixels in the label map, P_k of them of class k and K' classes present, so every
  present class carries the same total weight and the mean of w_c is 1. Explicit per-class weights
  can be given instead.
- The border term is evaluated on background pixels only (pixels in no cell: membrane / the gaps
  between cells), where d1 and d2 are the Euclidean distances to the nearest pixel of the nearest
  cell and of the second-nearest (distinct) cell. It is 0 inside cells, as in the paper's Fig. 3d:
  it is there to make the network learn the thin background separating touching cells.
- Cells are the instances of an instance map when one is given, else the 4-connected components
  of the foreground class of the label map.
- Cutoff: distances are searched only up to ``R = sigma * sqrt(2 ln(w0 / tolerance))`` (28.4 px
  for the defaults, tolerance 1e-6); when d2 > R the term is below ``w0 exp(-R^2 / 2 sigma^2)`` =
  tolerance and is set to 0. So the result differs from the unbounded formula by at most
  ``tolerance`` per pixel.

The distances come from the C++ op ``unet_fast.ops.border_distances`` (per-cell distance
transforms on windows around each cell), far faster than one full-image scipy distance transform
per cell; see benchmarks/bench_border_distances.py.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from unet_fast.ops.border_distances import as_long_tensor, border_distances

DEFAULT_W0 = 10.0
DEFAULT_SIGMA = 5.0
DEFAULT_TOLERANCE = 1e-6


def cutoff_distance(w0: float = DEFAULT_W0, sigma: float = DEFAULT_SIGMA, tolerance: float = DEFAULT_TOLERANCE) -> float:
    """The search radius R beyond which the border term is below ``tolerance``: sigma * sqrt(2 ln(w0 / tolerance))."""
    if w0 <= tolerance:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / tolerance))


def label_cells(labels, foreground: int = 1) -> torch.Tensor:
    """Cell instances of a label map: the 4-connected components of ``labels == foreground``.

    Args:
        labels: (H, W) or (N, H, W) integer class map. Returns int64 of the same shape, 0 off cells.
    """
    labels = as_long_tensor("labels", labels)
    mask = (labels == foreground).cpu().numpy()
    cells = np.zeros(mask.shape, dtype=np.int64)
    for index in np.ndindex(mask.shape[:-2]):
        ndimage.label(mask[index], output=cells[index])
    return torch.from_numpy(cells).to(labels.device)


def class_balance_weights(labels, num_classes: int) -> torch.Tensor:
    """Per-pixel w_c for one label map or, per item, for a batch: P / (K' * P_k) for a pixel of class k.

    Args:
        labels: (H, W) or (N, H, W) integer class map with values in [0, num_classes).
    Returns:
        float32 of the same shape; its mean over each label map is 1.
    """
    labels = as_long_tensor("labels", labels)
    labels_np = labels.cpu().numpy()
    _check_labels_range(labels_np, num_classes)
    return torch.from_numpy(_class_balance(labels_np, num_classes)).to(labels.device)


def _class_balance(labels: np.ndarray, num_classes: int) -> np.ndarray:
    # numpy, not torch: small single-threaded passes beat torch's thread pool on busy CPUs.
    flat = labels.reshape(-1, labels.shape[-2] * labels.shape[-1])
    out = np.empty(flat.shape, dtype=np.float32)
    for item, row in enumerate(flat):
        counts = np.bincount(row, minlength=num_classes)
        per_class = row.size / (np.count_nonzero(counts) * np.maximum(counts, 1))
        out[item] = per_class.astype(np.float32)[row]
    return out.reshape(labels.shape)


def _check_labels_range(labels: np.ndarray, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = sorted({int(v) for v in np.unique(labels) if v < 0 or v >= num_classes})
        raise ValueError(f"labels has values {bad[:10]} outside the classes [0, {num_classes - 1}] (num_classes={num_classes})")


def weight_map(
    labels,
    *,
    num_classes: int = 2,
    foreground: int = 1,
    instances=None,
    w0: float = DEFAULT_W0,
    sigma: float = DEFAULT_SIGMA,
    class_weights: str | Sequence[float] | torch.Tensor | None = "balanced",
    tolerance: float = DEFAULT_TOLERANCE,
) -> torch.Tensor:
    """The paper's weight map for a label map, in one call (see the module docstring for the definitions).

    Args:
        labels: (H, W) or (N, H, W) integer class map, values in [0, num_classes); tensor or array.
        num_classes: number of classes K (>= 2).
        foreground: the class whose 4-connected components are the cells (ignored with ``instances``).
        instances: optional (same shape) integer instance map, 0 = no cell: the cells to separate.
        w0, sigma: the border term's amplitude and width in pixels (paper: 10 and 5).
        class_weights: ``"balanced"`` (w_c from this label map's class frequencies, per item of a
            batch), a sequence/tensor of K per-class weights, or None (w_c = 1).
        tolerance: the largest error the distance cutoff may cause (see module docstring).
    Returns:
        float32 weights of the labels' shape, on the labels' device.
    """
    labels = as_long_tensor("labels", labels)
    device = labels.device
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    labels_np = labels.cpu().numpy()
    _check_labels_range(labels_np, num_classes)
    for name, value in (("w0", w0), ("sigma", sigma), ("tolerance", tolerance)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if sigma == 0 or tolerance == 0:
        raise ValueError(f"sigma and tolerance must be > 0, got sigma={sigma}, tolerance={tolerance}")

    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(
                f'class_weights must be "balanced", a sequence of {num_classes} weights or None, got {class_weights!r}'
            )
        weights = _class_balance(labels_np, num_classes)
    elif class_weights is None:
        weights = np.ones(labels_np.shape, dtype=np.float32)
    else:
        per_class = np.asarray(
            class_weights.detach().cpu() if isinstance(class_weights, torch.Tensor) else class_weights, dtype=np.float32
        )
        if per_class.shape != (num_classes,):
            raise ValueError(
                f"class_weights must have {num_classes} entries (num_classes), got shape {per_class.shape}"
            )
        if not (np.isfinite(per_class).all() and (per_class >= 0).all()):
            raise ValueError(f"class_weights must be finite and >= 0, got {per_class.tolist()}")
        weights = per_class[labels_np]

    if instances is None:
        if isinstance(foreground, bool) or not isinstance(foreground, int) or not 0 <= foreground < num_classes:
            raise ValueError(f"foreground must be a class in [0, {num_classes - 1}], got {foreground!r}")
        cells = label_cells(labels_np, foreground).numpy()
    else:
        cells = as_long_tensor("instances", instances).cpu().numpy()
        if cells.shape != labels_np.shape:
            raise ValueError(f"instances shape {cells.shape} differs from labels shape {labels_np.shape}")
    if w0 > 0:
        d1, d2 = (d.numpy() for d in border_distances(cells, cutoff_distance(w0, sigma, tolerance)))
        gap = (cells == 0) & np.isfinite(d2)  # background pixels with two cells within the cutoff
        weights[gap] += w0 * np.exp(-((d1[gap] + d2[gap]) ** 2) / (2.0 * sigma**2))
    return torch.from_numpy(weights).to(device)

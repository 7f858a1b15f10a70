"""The warping error (Jain et al. 2010, "Boundary learning by optimization with topological
constraints"), as the ISBI 2012 challenge scored boundary maps.

The target cell map is warped toward the prediction by flipping only simple pixels, whose flip
changes no topology (no split, merge, hole or deletion of a cell). The pixels still in disagreement
are topological errors; their fraction of all pixels is the warping error. Connectivity: cells
(foreground) 4-connected, boundary 8-connected, the complementary (4, 8) pair for which the local
3x3 simple-point test is exact; pixels outside the image count as boundary. Flips are tried in a
fixed order (a raster-order queue, csrc/ops/cpu/simple_point_warp_kernel.cpp), so the result is
deterministic; Fiji's implementation may differ from it by the order of equal flips.

Each remaining pixel is classified by what flipping it would do in the warped target: cell ->
boundary that separates a cell is a split, boundary -> cell that joins cells a merger (the others
add or delete a one-pixel cell or a hole). One topological event can leave a few adjacent pixels
(a two-pixel-thick line leaves two), so splits and mergers count the 8-connected groups of
remaining pixels of that class.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from unet_fast.metrics.inputs import foreground_pair
from unet_fast.ops.simple_point_warp import simple_point_warp

_SPLIT, _MERGE = 1, 2
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def warping_error(pred, target, foreground: int = 1, threshold: float | None = None) -> dict:
    """The warping error of a predicted class map against the ground truth.

    Args:
        pred: (H, W) or (N, H, W) class map, or foreground probability with ``threshold``.
        target: class map of the same shape; ``foreground`` is the cell class (1 in ISBI labels).
    Returns:
        ``{"error": float, "splits": int, "mergers": int}``: the fraction of pixels left in
        disagreement after the warp (pooled over a batch), and the splits and mergers among them
        (summed over a batch).
    """
    pred_mask, target_mask = foreground_pair(pred, target, foreground, threshold)
    _, classes = simple_point_warp(torch.from_numpy(target_mask.astype(np.uint8)),
                                   torch.from_numpy(pred_mask.astype(np.uint8)))
    classes = classes.numpy()
    splits = sum(ndimage.label(c == _SPLIT, _EIGHT_CONNECTED)[1] for c in classes)
    mergers = sum(ndimage.label(c == _MERGE, _EIGHT_CONNECTED)[1] for c in classes)
    error = float(np.count_nonzero(classes)) / classes.size if classes.size else 0.0
    return {"error": error, "splits": int(splits), "mergers": int(mergers)}

"""Segmentation metrics of the U-Net paper's EM experiments (ISBI 2012): pixel error, warping
error, Rand and information scores, variation of information, foreground IoU / Dice.

Every metric takes ``(pred, target)``, (H, W) or (N, H, W), as tensors or arrays. target is a class
map (1 = cell, 0 = boundary in the ISBI labels; ``foreground=`` picks the cell class of a
multi-class map). pred is a class map, or the foreground probability with ``threshold=``;
:func:`best_over_thresholds` scans thresholds as the challenge did. Segments are the 4-connected
components of the foreground; see :mod:`unet_fast.metrics.segments` for how predicted boundary
pixels count and :mod:`unet_fast.metrics.warping` for the warping error.
"""
from unet_fast.metrics.pixel import foreground_dice, foreground_iou, pixel_error
from unet_fast.metrics.segments import (
    adapted_rand_error_segments,
    info_error,
    rand_error,
    rand_scores,
    segment_scores,
    variation_of_information,
    voi_total,
)
from unet_fast.metrics.thresholds import METRICS, Metric, best_over_thresholds, get_metric, segmentation_metrics
from unet_fast.metrics.warping import warping_error

__all__ = [
    "METRICS", "Metric", "adapted_rand_error_segments", "best_over_thresholds", "foreground_dice", "foreground_iou",
    "get_metric", "info_error", "pixel_error", "rand_error", "rand_scores", "segment_scores", "segmentation_metrics",
    "variation_of_information", "voi_total", "warping_error",
]

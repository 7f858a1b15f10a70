"""Validation during training: overlap-tile predictions of the held-out images, scored."""
from __future__ import annotations

import torch
from torch import nn

from unet_fast.inference import predict_tiled
from unet_fast.train.config import TrainConfig


def validate(model: nn.Module, val, config: TrainConfig, device: torch.device) -> dict[str, float]:
    """Mean metrics of overlap-tile predictions of the held-out images.

    Predictions use ``predict_tiled``'s default tile (572 px or what fits the GPU), not the training
    tile: the stitched result is the same, and a small training tile would spend most of the compute
    on context margins (on CPU a 512 px image takes 64 tiles of 252 px but 4 of 572)."""
    from unet_fast.metrics import segmentation_metrics

    totals: dict[str, float] = {}
    for image, truth in zip(val.images, val.labels):
        _, labels = predict_tiled(model, image.float().to(device), batch_size=2)
        for key, value in segmentation_metrics(labels.cpu(), truth).items():
            totals[key] = totals.get(key, 0.0) + value / len(val.labels)
    return totals


def validation_line(step: int, metrics: dict[str, float]) -> str:
    return (f"step {step}: validation pixel error {metrics['pixel_error']:.4f}  IoU {metrics['foreground_iou']:.4f}  "
            f"Dice {metrics['foreground_dice']:.4f}  Rand error {metrics['rand_error']:.4f}")

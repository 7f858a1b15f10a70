"""Segmentation losses: the paper's pixel-wise weighted softmax cross-entropy, and a soft Dice loss.

Weighted cross-entropy (Ronneberger et al. 2015, eq. 1): with p_k(x) the softmax of the logits and
l(x) the true class, the per-pixel loss is ``-w(x) * c[l(x)] * log p_{l(x)}(x)``, where w is the
weight map (e.g. :func:`unet_fast.weight_map.weight_map`) and c optional per-class weights.
Reduction ``"mean"`` (default) is the weighted mean ``sum(w c ce) / sum(w c)``: its scale does not
depend on the weights' overall magnitude or the tile size, so one learning rate fits all weightings.
``"sum"`` gives the paper's energy as written, ``"none"`` the (N, H, W) per-pixel terms.

Soft Dice: per class k, ``D_k = (2 sum p_k t_k + s) / (sum p_k + sum t_k + s)`` over all pixels of
the batch, t_k the one-hot target and s a smoothing constant; the loss is ``1 - sum_k c_k D_k /
sum_k c_k`` (c = class weights, default 1; the background class can be left out).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum", "none")


def _check_logits_target(logits, target) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if logits.dim() != 4:
        raise ValueError(f"logits must be (N, K, H, W), got shape {tuple(logits.shape)}")
    if not logits.dtype.is_floating_point:
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if target.dtype != torch.int64:
        raise TypeError(f"target must be int64 class ids, got {target.dtype}")
    n, k, h, w = logits.shape
    if target.shape != (n, h, w):
        hint = ""
        if target.dim() == 3 and target.shape[0] == n and (target.shape[1] > h or target.shape[2] > w):
            hint = " (a valid-padding U-Net's output is smaller than its input: center-crop the target to it)"
        raise ValueError(f"target must be (N, H, W) = {(n, h, w)} to match logits {tuple(logits.shape)}, got {tuple(target.shape)}{hint}")
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits is on {logits.device}")
    if k < 2:
        raise ValueError(f"logits must have at least 2 classes (dim 1), got {k}")


def _class_weight_tensor(class_weights, num_classes: int, device) -> torch.Tensor | None:
    if class_weights is None:
        return None
    weights = torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    if weights.shape != (num_classes,):
        raise ValueError(f"class_weights must have one weight per class ({num_classes}), got shape {tuple(weights.shape)}")
    if (weights < 0).any() or not torch.isfinite(weights).all():
        raise ValueError("class_weights must be finite and >= 0")
    return weights


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight_map: torch.Tensor | None = None,
    *,
    class_weights: Sequence[float] | torch.Tensor | None = None,
    reduction: str = "mean",
    check_target_range: bool = True,
) -> torch.Tensor:
    """Pixel-wise weighted softmax cross-entropy.

    Args:
        logits: (N, K, H, W) float (any float dtype; computed in float32 at least).
        target: (N, H, W) int64 class ids in [0, K).
        weight_map: optional (N, H, W) per-pixel weights w(x) >= 0.
        class_weights: optional K per-class weights c.
        reduction: "mean" (weighted mean, sum(w c ce) / sum(w c)), "sum" or "none".
        check_target_range: raise a ValueError for target values outside [0, K) and for a
            weight_map with negative or non-finite values; costs a device synchronisation on a GPU
            (without it, CUDA reports bad targets as a device-side assert, bad weights go unnoticed).
    Returns:
        a scalar float32 (or float64 for float64 logits), or (N, H, W) with "none".
    """
    _check_logits_target(logits, target)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if check_target_range and target.numel() and (target.min() < 0 or target.max() >= logits.shape[1]):
        raise ValueError(f"target values must be class ids in [0, {logits.shape[1] - 1}]")
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    per_pixel = F.cross_entropy(logits.to(compute_dtype), target, reduction="none")
    weights = None
    if weight_map is not None:
        if not isinstance(weight_map, torch.Tensor):
            raise TypeError(f"weight_map must be a torch.Tensor, got {type(weight_map).__name__}")
        if weight_map.shape != target.shape:
            raise ValueError(f"weight_map must have the target's shape {tuple(target.shape)}, got {tuple(weight_map.shape)}")
        if weight_map.device != logits.device:
            raise ValueError(f"weight_map is on {weight_map.device} but logits is on {logits.device}")
        if not weight_map.is_floating_point():
            raise TypeError(f"weight_map must be floating point, got {weight_map.dtype}")
        if check_target_range and weight_map.numel() and not (torch.isfinite(weight_map).all() and weight_map.min() >= 0):
            raise ValueError("weight_map must be finite and >= 0 everywhere")
        weights = weight_map.to(compute_dtype)
    per_class = _class_weight_tensor(class_weights, logits.shape[1], logits.device)
    if per_class is not None:
        pixel_class_weights = per_class.to(compute_dtype)[target]
        weights = pixel_class_weights if weights is None else weights * pixel_class_weights
    weighted = per_pixel if weights is None else per_pixel * weights
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    if weights is None:
        return per_pixel.mean()
    return weighted.sum() / weights.sum().clamp_min(torch.finfo(compute_dtype).tiny)


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    class_weights: Sequence[float] | torch.Tensor | None = None,
    include_background: bool = True,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Soft multi-class Dice loss ``1 - weighted mean_k D_k`` (see the module docstring).

    Args:
        logits: (N, K, H, W) float; softmax is applied inside.
        target: (N, H, W) int64 class ids in [0, K).
        class_weights: optional K weights of the per-class Dice terms.
        include_background: whether class 0 takes part.
        smooth: s > 0, keeps classes absent from both prediction and target at D_k = 1.
    Returns:
        a scalar in [0, 1].
    """
    _check_logits_target(logits, target)
    if not smooth > 0:
        raise ValueError(f"smooth must be > 0, got {smooth!r}")
    num_classes = logits.shape[1]
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    probs = torch.softmax(logits.to(compute_dtype), dim=1)
    one_hot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).to(compute_dtype)
    intersection = (probs * one_hot).sum(dim=(0, 2, 3))
    denominator = probs.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    dice = (2 * intersection + smooth) / (denominator + smooth)
    weights = _class_weight_tensor(class_weights, num_classes, logits.device)
    weights = torch.ones(num_classes, dtype=compute_dtype, device=logits.device) if weights is None else weights.to(compute_dtype)
    if not include_background:
        weights = weights.clone()
        weights[0] = 0
    if weights.sum() <= 0:
        raise ValueError("the Dice class weights sum to 0 (check class_weights and include_background)")
    return 1 - (weights * dice).sum() / weights.sum()


class SegmentationLoss(torch.nn.Module):
    """``ce_weight * weighted_cross_entropy + dice_weight * dice_loss``, the trainer's loss.

    Args:
        ce_weight, dice_weight: the mix (paper: 1 and 0).
        class_weights: optional K per-class weights, used by both terms.
        dice_class_weights: K weights for the Dice term instead of ``class_weights``, for a weight
            map that already holds the class weights (the paper's w(x) = w_c(x) + border term):
            ``class_weights=None, dice_class_weights=c``.
    ``forward(logits (N, K, H, W), target (N, H, W) int64, weight_map (N, H, W) or None)`` -> scalar.
    """

    def __init__(self, *, ce_weight: float = 1.0, dice_weight: float = 0.0, class_weights=None,
                 dice_class_weights=None):
        super().__init__()
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ValueError(f"ce_weight and dice_weight must be >= 0, not both 0; got {ce_weight}, {dice_weight}")
        self.ce_weight, self.dice_weight = float(ce_weight), float(dice_weight)
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if dice_class_weights is not None:
            dice_class_weights = torch.as_tensor(dice_class_weights, dtype=torch.float32)
        self.dice_class_weights = self.class_weights if dice_class_weights is None else dice_class_weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None) -> torch.Tensor:
        class_weights = None if self.class_weights is None else self.class_weights.to(logits.device)
        dice_class_weights = None if self.dice_class_weights is None else self.dice_class_weights.to(logits.device)
        loss = logits.new_zeros((), dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32)
        if self.ce_weight:
            loss = loss + self.ce_weight * weighted_cross_entropy(logits, target, weight_map, class_weights=class_weights)
        if self.dice_weight:
            loss = loss + self.dice_weight * dice_loss(logits, target, class_weights=dice_class_weights)
        return loss

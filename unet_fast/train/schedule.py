"""The optimizer and its learning-rate schedule."""
from __future__ import annotations

import math

import torch

from unet_fast.train.config import TrainConfig


def build_optimizer(config: TrainConfig, parameters) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's) or AdamW, at ``config.lr``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate for (0-based) ``step``: linear warm-up, then constant, cosine or poly(0.9) decay."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if config.lr_schedule == "poly":
        return config.lr * (1 - progress) ** 0.9
    return config.lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

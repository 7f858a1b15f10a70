"""The configuration of a training run: every option, its default and its checks, and the paper's recipe."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from unet_fast import shapes
from unet_fast.train.models import fast_model_class
from unet_fast.train.nonfinite import ON_NONFINITE

DEFAULT_TILE_SIZE = 572
# Learning rates per optimizer for the loss averaged over output pixels.
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-3}
# The paper's width where steps are cheap; on CPU a 64-wide step costs about 12x a 16-wide one (6.3 s
# against 0.53 s at 572 px on 2 cores), so a 15-minute budget would fit about 130 steps instead of 1500.
DEFAULT_BASE_CHANNELS = {"cuda": 64, "cpu": 16}
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "poly")
AMP_MODES = ("none", "bf16", "fp16")
MODELS = ("auto", "fast", "reference")


@dataclass
class TrainConfig:
    """Every option of a training run; ``None`` means "the documented default for the device"."""

    data: str = "synthetic"
    num_classes: int = 2  # label values in [0, num_classes); the synthetic data set has 2
    out: str = "runs/train"
    steps: int = 400
    model: str = "auto"  # auto: the fast model wherever this build has it (CUDA and CPU), else the reference
    base_channels: int | None = None  # DEFAULT_BASE_CHANNELS[device type]
    depth: int = 5
    padding: str = "valid"
    dropout: float = 0.5
    norm: str | None = None
    tile_size: int = DEFAULT_TILE_SIZE  # the largest valid input size up to this is used
    batch_size: int = 1
    optimizer: str = "adamw"  # the paper's is "sgd" (momentum 0.99)
    lr: float | None = None  # DEFAULT_LR[optimizer]
    momentum: float = 0.99
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    warmup_fraction: float = 0.05  # > 0: warmup_steps = round(fraction * steps) when warmup_steps is 0
    time_budget: float | None = None  # seconds for the whole run; fits steps (unet_fast.train.budget)
    amp: str | None = None  # "bf16" on CUDA devices that support it, else "none"
    on_nonfinite: str = "stop"  # at a NaN/Inf loss or gradient: stop, or skip the step (train/nonfinite.py)
    compile: bool = False
    augment: bool = True
    w0: float = 0.0  # the paper's border term (10, with sigma 5) is --w0 10 or --paper; see unet_fast.train
    sigma: float = 5.0
    class_balance: bool = False  # the paper's w_c; on with --paper
    class_weights: list[float] | None = None
    dice_weight: float = 0.0
    balanced_sampling: bool = False
    val_images: int | None = None  # held out from a folder: 10% (1 to 3 images); synthetic: 2
    val_interval: int = 100
    checkpoint_interval: int | None = None  # val_interval
    log_interval: int = 10
    synthetic_images: int = 12
    synthetic_size: int = 320
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    progress: bool = True

    def resolved(self, device: torch.device) -> "TrainConfig":
        """A copy with the derived defaults filled in: the width and mixed precision for the device, the
        optimizer's learning rate, the checkpoint interval, and for model "auto" the fused model (on any
        device; the reference if this build lacks it)."""
        c = dataclasses.replace(self)
        if c.base_channels is None:
            c.base_channels = DEFAULT_BASE_CHANNELS.get(device.type, 64)
        if c.amp is None:
            c.amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
        if c.lr is None and c.optimizer in DEFAULT_LR:
            c.lr = DEFAULT_LR[c.optimizer]
        if c.warmup_fraction > 0 and c.warmup_steps == 0 and c.time_budget is None and not c.resume:
            # a budget fits it to its own steps; a resumed run keeps its saved one (train.resume)
            c.warmup_steps = round(c.warmup_fraction * c.steps)
        if c.checkpoint_interval is None:
            c.checkpoint_interval = c.val_interval
        if c.model == "auto":
            c.model = "fast" if fast_model_class() is not None else "reference"
        return c

    def check(self) -> None:
        """ValueError naming the option for every inconsistent setting."""
        positive = ("steps", "base_channels", "batch_size", "val_interval", "log_interval", "synthetic_images",
                    "checkpoint_interval")
        for name in positive:
            value = getattr(self, name)
            if value is None and name == "checkpoint_interval":
                continue  # filled in by resolved()
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")
        if self.data == "synthetic" and self.num_classes != 2:
            raise ValueError(f"num_classes must be 2 for the synthetic data set, got {self.num_classes}")
        if self.class_weights is not None and len(self.class_weights) != self.num_classes:
            raise ValueError(f"class_weights needs num_classes={self.num_classes} values, got {len(self.class_weights)}")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 2:
            raise ValueError(f"depth must be an integer >= 2, got {self.depth!r}")
        choices = dict(optimizer=OPTIMIZERS, lr_schedule=SCHEDULES, amp=AMP_MODES, model=MODELS,
                       padding=shapes.PADDINGS, on_nonfinite=ON_NONFINITE)
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if isinstance(self.tile_size, bool) or not isinstance(self.tile_size, int):
            raise ValueError(f"tile_size must be an integer, got {self.tile_size!r}")
        if shapes.largest_valid_input_size(self.tile_size, self.depth, self.padding) is None:
            smallest = shapes.valid_input_size(1, self.depth, self.padding)
            raise ValueError(
                f"tile_size {self.tile_size} is too small for depth {self.depth} with padding "
                f"{self.padding!r}: the smallest valid tile is {smallest}"
            )
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.dice_weight < 0:
            raise ValueError("warmup_steps, weight_decay and dice_weight must be >= 0")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.time_budget is not None and not (isinstance(self.time_budget, (int, float)) and 0 < self.time_budget < math.inf):
            raise ValueError(f"time_budget must be a positive number of seconds, got {self.time_budget!r}")
        if self.val_images is not None and self.val_images < 0:
            raise ValueError(f"val_images must be >= 0, got {self.val_images}")
        if self.synthetic_size < 16:
            raise ValueError(f"synthetic_size must be >= 16, got {self.synthetic_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


PAPER = dict(base_channels=64, depth=5, tile_size=572, batch_size=1, optimizer="sgd", momentum=0.99,
             dropout=0.5, augment=True, w0=10.0, sigma=5.0, class_balance=True, lr_schedule="constant",
             warmup_fraction=0.0)

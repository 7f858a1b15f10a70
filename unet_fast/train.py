"""The trainer: the paper's recipe around the fast model, single device or DDP under torchrun.

Paper recipe (``--paper``): SGD with momentum 0.99, a batch of one large tile (572x572 in, 388x388
out), elastic deformation of every tile on the device, the pixel-wise weighted cross-entropy with
class-balancing weights w_c plus the border weight map (w0 = 10, sigma = 5 px), dropout 0.5, the
depth-5, 64-channel network.

Defaults: the paper's tile, batch, augmentation, border weights and network, with two changes that
make short runs learn: AdamW (lr 1e-3) instead of SGD at momentum 0.99, and no class-balancing term
w_c (the border term already up-weights the thin membranes). Measured on ISBI 2012 (27 training /
3 validation slices) with ``unet-fast train --data DIR --device cpu --base-channels 16 --steps 400``
on 2 cores, 2.5 min: validation pixel error 0.11 and adapted Rand error 0.20 (predicting "cell"
everywhere scores 0.20 and 0.91). With the paper's SGD 0.99 the same run collapses to "cell"
everywhere, and adding w_c over-predicts membrane (pixel error 0.32): both need the paper's far
longer training. The default learning rates are per optimizer (``DEFAULT_LR``), for the loss
averaged over output pixels.

A run directory holds ``config.json``, ``metrics.csv`` / ``metrics.json`` (one row per log interval,
validation rows carry pixel error, foreground IoU / Dice and the adapted Rand error),
``loss.png`` (when matplotlib is installed) and ``checkpoints/`` (see ``unet_fast.checkpoint``);
``--resume`` continues from the latest checkpoint exactly as if never interrupted.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from unet_fast import checkpoint as ckpt
from unet_fast import shapes
from unet_fast.inference import predict_tiled
from unet_fast.losses import SegmentationLoss

DEFAULT_TILE_SIZE = 572
# Learning rates per optimizer for the loss averaged over output pixels.
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-3}
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
    model: str = "auto"  # auto: the fast model on CUDA, the reference on CPU
    base_channels: int = 64
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
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    amp: str = "none"
    compile: bool = False
    augment: bool = True
    w0: float = 10.0
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
        """A copy with the derived defaults filled in: the optimizer's learning rate, the checkpoint
        interval, and for model "auto" the fused model on CUDA, the reference elsewhere."""
        c = dataclasses.replace(self)
        if c.lr is None and c.optimizer in DEFAULT_LR:
            c.lr = DEFAULT_LR[c.optimizer]
        if c.checkpoint_interval is None:
            c.checkpoint_interval = c.val_interval
        if c.model == "auto":
            c.model = "fast" if device.type == "cuda" and _fast_model_class() is not None else "reference"
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
                       padding=shapes.PADDINGS)
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


# Options a resumed run may change: they do not alter the training trajectory.
RESUMABLE_OPTIONS = ("steps", "out", "resume", "device", "progress", "log_interval", "val_interval",
                     "checkpoint_interval", "compile")


def saved_config(run_dir) -> "TrainConfig":
    """The configuration stored in the latest checkpoint of ``run_dir``; ValueError when there is none."""
    found = ckpt.find_checkpoint(run_dir)
    if found is None:
        raise ValueError(f"--resume: no checkpoint in {run_dir}; start without --resume")
    with open(found / "state.json") as f:
        return TrainConfig.from_dict(json.load(f)["config"])


def _check_resume_config(config: "TrainConfig", saved: dict) -> None:
    """ValueError naming every option that differs from the checkpoint's and would change the run."""
    conflicts = [
        f"{name}={getattr(config, name)!r} (the run used {saved[name]!r})"
        for name in saved
        if name not in RESUMABLE_OPTIONS and hasattr(config, name) and getattr(config, name) != saved[name]
    ]
    if conflicts:
        raise ValueError(
            "--resume continues the saved run, whose configuration differs in: " + ", ".join(conflicts)
            + f"; only {', '.join(RESUMABLE_OPTIONS)} may change (or start a new run with another --out)"
        )


PAPER = dict(base_channels=64, depth=5, tile_size=572, batch_size=1, optimizer="sgd", momentum=0.99,
             dropout=0.5, augment=True, w0=10.0, sigma=5.0, class_balance=True, lr_schedule="constant")


# --- devices, models, optimizers ----------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; ValueError for "cuda" without a GPU or an unknown name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, str) or name.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


def _fast_model_class():
    try:
        from unet_fast.model import UNet
    except ImportError:
        return None
    return UNet


def build_model(kind: str, **config) -> nn.Module:
    """A U-Net: ``kind`` "fast" (``unet_fast.UNet``) or "reference"; ``config`` its constructor args."""
    if kind == "fast":
        cls = _fast_model_class()
        if cls is None:
            raise ValueError("model 'fast' is unavailable in this installation (unet_fast.model is missing); use --model reference")
        return cls(**config)
    if kind == "reference":
        from unet_fast.reference import UNet

        return UNet(**config)
    raise ValueError(f"model must be fast or reference, got {kind!r}")


def build_optimizer(config: TrainConfig, parameters) -> torch.optim.Optimizer:
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


# --- progress and run log -------------------------------------------------------------------------


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """A one-line progress bar: step, loss, tiles/s and ETA, redrawn in place on a terminal, printed
    as plain lines every ``log_interval`` steps otherwise."""

    def __init__(self, total: int, start: int, *, enabled: bool = True, stream=None, width: int = 24):
        self.total, self.start, self.enabled, self.width = total, start, enabled, width
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.begin = time.perf_counter()
        self.drawn = False

    def update(self, step: int, loss: float, tiles_per_second: float, force: bool = False) -> None:
        if not self.enabled:
            return
        done = step - self.start
        elapsed = time.perf_counter() - self.begin
        eta = elapsed / done * (self.total - step) if done else float("inf")
        filled = int(self.width * step / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        line = (f"[{bar}] step {step}/{self.total}  loss {loss:.4f}  {tiles_per_second:.1f} tiles/s  "
                f"elapsed {_format_seconds(elapsed)}  ETA {_format_seconds(eta)}")
        if self.interactive:
            self.stream.write("\r" + line + "\033[K")
            self.drawn = True
        elif force:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of text above the bar."""
        if self.drawn:
            self.stream.write("\n")
            self.drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


class RunLog:
    """Rows of metrics for a run directory: metrics.csv, metrics.json and loss.png."""

    COLUMNS = ("step", "loss", "lr", "tiles_per_s", "elapsed_s",
               "val_pixel_error", "val_foreground_iou", "val_foreground_dice",
               "val_rand_error")

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.run_dir = run_dir
        self.rows: list[dict] = []
        existing = run_dir / "metrics.json"
        if resume_step is not None and existing.is_file():
            # Rows logged after the checkpoint are replayed by the resumed run.
            self.rows = [r for r in json.loads(existing.read_text()) if r["step"] <= resume_step]

    def add(self, row: dict) -> None:
        self.rows.append({k: row.get(k) for k in self.COLUMNS})

    def write(self) -> None:
        tmp = self.run_dir / ".metrics.json.tmp"
        tmp.write_text(json.dumps(self.rows, indent=1))
        os.replace(tmp, self.run_dir / "metrics.json")
        tmp = self.run_dir / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.COLUMNS)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
        os.replace(tmp, self.run_dir / "metrics.csv")

    def plot(self) -> Path | None:
        """loss.png: training loss and validation errors over steps; None without matplotlib."""
        try:
            # A figure of its own with the Agg canvas: pyplot's global backend stays the caller's.
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            return None
        train = [(r["step"], r["loss"]) for r in self.rows if r["loss"] is not None]
        val = [(r["step"], r["val_pixel_error"], r["val_rand_error"]) for r in self.rows if r["val_pixel_error"] is not None]
        fig = Figure(figsize=(7, 4))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        if train:
            ax.plot(*zip(*train), label="training loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if val:
            other = ax.twinx()
            steps, pixel, rand = zip(*val)
            other.plot(steps, pixel, "o-", color="tab:red", label="val pixel error")
            other.plot(steps, rand, "s-", color="tab:green", label="val Rand error")
            other.set_ylabel("validation error")
            other.legend(loc="upper center")
        ax.legend(loc="upper right")
        ax.set_title("unet-fast training")
        fig.tight_layout()
        path = self.run_dir / "loss.png"
        fig.savefig(path, dpi=100)
        return path


# --- data ------------------------------------------------------------------------------------------


def load_datasets(config: TrainConfig):
    """(train, validation) datasets with ``images`` (N, C, H, W) float, ``labels`` (N, H, W) int64,
    ``num_classes``, ``in_channels``, ``names``; the validation set may be empty (None)."""
    from unet_fast import data as data_module

    if config.data == "synthetic":
        val_count = 2 if config.val_images is None else config.val_images
        full = data_module.SyntheticEMDataset(config.synthetic_images + val_count, config.synthetic_size, config.seed)
        return _split(full, val_count)
    path = Path(config.data)
    if not path.is_dir():
        raise ValueError(f"--data {config.data!r} is neither 'synthetic' nor a directory with images/ and labels/")
    full = data_module.ImageFolderDataset(path, config.num_classes)
    count = len(full.labels)
    if config.val_images is None:
        val_count = min(3, max(1, round(0.1 * count)))
        if count - val_count < 1:
            val_count = 0  # a single image trains and is not validated on
    elif config.val_images >= count:
        raise ValueError(
            f"val_images={config.val_images} leaves no training image: {config.data} holds {count} image(s)"
        )
    else:
        val_count = config.val_images
    return _split(full, val_count)


class _Subset:
    def __init__(self, source, index: slice):
        self.images, self.labels = source.images[index], source.labels[index]
        instances = getattr(source, "instances", None)
        self.instances = instances[index] if instances is not None else None
        self.names = list(source.names)[index]
        self.num_classes, self.in_channels = source.num_classes, source.in_channels


def _split(full, val_count: int):
    count = len(full.labels)
    train = _Subset(full, slice(0, count - val_count))
    val = _Subset(full, slice(count - val_count, count)) if val_count else None
    return train, val


class TrainingTiles:
    """Draws training batches: image tiles (B, C, T, T) with their labels and loss weights (B, O, O)
    for the model's output window, from images mirror-padded by the network's context margin.

    Output windows come from ``unet_fast.data.TileSampler`` (uniform, or class-balanced with
    ``balanced_sampling``); its generator is seeded per DDP rank, so ranks draw different tiles.
    Weight maps are computed once per image (the paper's w(x), on the full label map, so cells cut
    by a tile edge keep their true distances). With augmentation, ``unet_fast.augment.ElasticAugment``
    warps image, labels and weights together on the device: it warps the tile's window out of a
    larger crop (``context`` px more each side: a rotated square's corners plus three standard
    deviations of the elastic displacement), so rotated tiles see real neighbouring pixels, not
    reflections of the tile. The coarse displacement lattice spans that crop.
    """

    def __init__(self, train, config: TrainConfig, device: torch.device, rank: int = 0):
        from unet_fast.data import TileSampler
        from unet_fast.inference import context_margin, mirror_pad
        from unet_fast.weight_map import weight_map

        self.config, self.device = config, device
        self.tile = shapes.largest_valid_input_size(config.tile_size, config.depth, config.padding)
        self.out = shapes.output_size(self.tile, config.depth, config.padding)
        pad = (self.tile - self.out) // 2
        self.augment, self.context = None, 0
        if config.augment:
            from unet_fast.augment import ElasticAugment

            self.augment = ElasticAugment()
            self.context = math.ceil(self.tile * (math.sqrt(2) - 1) / 2 + 3 * self.augment.settings["sigma"])
        border = pad + self.context
        class_weights = config.class_weights if config.class_weights is not None else ("balanced" if config.class_balance else None)
        instances = train.instances if train.instances is not None else [None] * len(train.labels)
        self.images, self.labels, self.weights = [], [], []
        for name, image, label, cells in zip(train.names, train.images, train.labels, instances):
            if min(label.shape) < self.out:
                raise ValueError(
                    f"training image {name} is {label.shape[0]}x{label.shape[1]}, smaller than the {self.out} px "
                    f"output window of {self.tile} px tiles: choose a smaller --tile-size"
                )
            weights = weight_map(label.long(), num_classes=train.num_classes, instances=cells,
                                 w0=config.w0, sigma=config.sigma, class_weights=class_weights)
            def padded(t):
                return mirror_pad(mirror_pad(t[None].float(), border, border, -2), border, border, -1)[0].to(device)

            # Labels and weights are mirrored like the image, so augmentation can warp the whole tile.
            self.images.append(padded(image))
            self.labels.append(padded(label).long())
            self.weights.append(padded(weights))
        self.pad = pad
        self.sampler = TileSampler(list(train.labels), self.out, num_classes=train.num_classes,
                                   class_balanced=config.balanced_sampling, seed=config.seed * 1000 + rank)

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tiles (B, C, T, T), labels (B, O, O) int64, weights (B, O, O) float32) on the device."""
        tiles, labels, weights = [], [], []
        for _ in range(self.config.batch_size):
            where = self.sampler.sample()
            crop = self.tile + 2 * self.context
            window = (slice(where.top, where.top + crop), slice(where.left, where.left + crop))
            tiles.append(self.images[where.index][(slice(None), *window)])
            labels.append(self.labels[where.index][window])
            weights.append(self.weights[where.index][window])
        tiles, labels, weights = torch.stack(tiles), torch.stack(labels), torch.stack(weights)
        if self.augment is not None:
            # The centred tile-sized window of the warped crop: rotation about the tile's centre.
            tiles, labels, weights = self.augment(tiles, labels, weights, out_size=(self.tile, self.tile),
                                                  generator=generator)
        inner = (slice(None), slice(self.pad, self.pad + self.out), slice(self.pad, self.pad + self.out))
        return tiles, labels[inner].contiguous(), weights[inner].contiguous()

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


# --- the loop ---------------------------------------------------------------------------------------


def init_weights(model: nn.Module) -> None:
    """The paper's initialisation: Gaussian weights with std sqrt(2 / N), N the number of inputs of
    one output neuron, zero biases.

    A convolution's N is in_channels * kh * kw. A transposed convolution of stride s spreads each
    input over k/s taps per axis, so an output pixel sees in_channels * (kh/sh) * (kw/sw) inputs
    (in_channels for the 2x2 stride-2 up-convolution); ``kaiming_normal_`` would take the fan from
    the weight's (in, out, kh, kw) layout as out_channels * kh * kw.
    """
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d):
            taps = math.prod(max(1, k // s) for k, s in zip(module.kernel_size, module.stride))
            fan_in = module.in_channels // module.groups * taps
            nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_in))
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device) — initialises the process group under torchrun (WORLD_SIZE > 1):
    NCCL on CUDA (one GPU per local rank), gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def _rng_state(generator: torch.Generator, device: torch.device, data: TrainingTiles) -> dict:
    state = {"torch": ckpt.encode_rng(torch.get_rng_state()), "data": ckpt.encode_rng(generator.get_state()),
             "tiles": data.state_dict()}
    if device.type == "cuda":
        state["cuda"] = ckpt.encode_rng(torch.cuda.get_rng_state(device))
    return state


def _set_rng_state(state: dict, generator: torch.Generator, device: torch.device, data: TrainingTiles) -> None:
    torch.set_rng_state(ckpt.decode_rng(state["torch"]))
    data.load_state_dict(state["tiles"])
    generator.set_state(ckpt.decode_rng(state["data"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(ckpt.decode_rng(state["cuda"]), device)


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


def _model_config(config: TrainConfig, train) -> dict:
    return dict(in_channels=train.in_channels, num_classes=train.num_classes, base_channels=config.base_channels,
                depth=config.depth, padding=config.padding, dropout=config.dropout, norm=config.norm)


def load_model(path, device: torch.device | str = "cpu", kind: str | None = None) -> nn.Module:
    """The trained model of a run or checkpoint directory, in eval mode on ``device``. ``kind``:
    "fast" or "reference" (default: the fast model on CUDA when available, else the reference)."""
    device = torch.device(device)
    model_state, _, state = ckpt.load_checkpoint(path, map_location="cpu")
    if kind is None:
        kind = "fast" if device.type == "cuda" and _fast_model_class() is not None else "reference"
    model = build_model(kind, **state["model_config"])
    model.load_state_dict(model_state)
    return model.to(device).eval()


def train(config: TrainConfig) -> dict:
    """Run training; returns a summary dict (run_dir, steps, final loss, last validation metrics, seconds)."""
    device = resolve_device(config.device)
    rank, world, device = _distributed(device)
    config = config.resolved(device)
    config.check()
    run_dir = Path(config.out)
    resume_state = None
    if config.resume:
        found = ckpt.find_checkpoint(run_dir)
        if found is None:
            raise ValueError(f"--resume: no checkpoint in {run_dir}; start without --resume")
        resume_state = ckpt.load_checkpoint(found, map_location=device)
        saved_state = resume_state[2]
        _check_resume_config(config, saved_state["config"])
        if len(saved_state["rng"]) != world:
            raise ValueError(
                f"--resume: the checkpoint was written by {len(saved_state['rng'])} process(es) but this run "
                f"has {world}: resume with the same number of processes (torchrun --nproc_per_node)"
            )
    elif ckpt.find_checkpoint(run_dir) is not None:
        raise ValueError(f"{run_dir} already holds a training run: pass --resume to continue it or choose another --out")

    train_set, val_set = load_datasets(config)
    torch.manual_seed(config.seed)
    model = build_model(config.model, **_model_config(config, train_set))
    init_weights(model)
    model.to(device)
    optimizer = build_optimizer(config, model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    data = TrainingTiles(train_set, config, device, rank)
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
    torch.manual_seed(config.seed * 1000 + rank)  # dropout differs per rank
    start = 0
    if resume_state is not None:
        model_state, optimizer_state, state = resume_state
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"][rank], generator, device, data)
        start, elapsed_before = state["step"], state.get("elapsed_s", 0.0)
    else:
        elapsed_before = 0.0

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    log = RunLog(run_dir, start if resume_state is not None else None)
    raw_model = model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(model) if config.compile else model
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    # The weight map holds the class weights (w_c + border term); Dice takes explicit ones directly.
    loss_fn = SegmentationLoss(dice_weight=config.dice_weight, dice_class_weights=config.class_weights)

    progress = Progress(config.steps, start, enabled=config.progress and rank == 0)
    begin = time.perf_counter() - elapsed_before  # elapsed_s counts the whole run across resumes
    window_begin, window_tiles, window_loss, window_steps = time.perf_counter(), 0, 0.0, 0
    loss_value, last_val = float("nan"), {}
    model.train()
    for step in range(start, config.steps):
        lr = learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        tiles, labels, weights = data.batch(generator)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = forward(tiles)
        loss = loss_fn(logits.float(), labels, weights)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"the loss became {loss_value} at step {step + 1}: lower --lr")
        window_tiles += tiles.shape[0] * world
        window_loss += loss_value
        window_steps += 1
        done = step + 1
        tiles_per_second = window_tiles / max(time.perf_counter() - window_begin, 1e-9)
        progress.update(done, loss_value, tiles_per_second)
        row = None
        if done % config.log_interval == 0 or done == config.steps:
            row = dict(step=done, loss=window_loss / window_steps, lr=lr, tiles_per_s=tiles_per_second,
                       elapsed_s=time.perf_counter() - begin)
            progress.update(done, loss_value, tiles_per_second, force=True)
            window_begin, window_tiles, window_loss, window_steps = time.perf_counter(), 0, 0.0, 0
        if val_set is not None and (done % config.val_interval == 0 or done == config.steps):
            if rank == 0:
                last_val = validate(raw_model, val_set, config, device)
                row = row or dict(step=done, lr=lr, elapsed_s=time.perf_counter() - begin)
                row.update({f"val_{k}": v for k, v in last_val.items()})
                progress.message(
                    f"step {done}: validation pixel error {last_val['pixel_error']:.4f}  IoU {last_val['foreground_iou']:.4f}  "
                    f"Dice {last_val['foreground_dice']:.4f}  Rand error {last_val['rand_error']:.4f}"
                )
            model.train()
        if rank == 0 and row is not None:
            log.add(row)
            log.write()
        if done % config.checkpoint_interval == 0 or done == config.steps:
            rng = _rng_state(generator, device, data)
            if world > 1:
                gathered = [None] * world
                dist.all_gather_object(gathered, rng)
                rng = gathered
            else:
                rng = [rng]
            if rank == 0:
                state = dict(config=config.to_dict(), model_config=raw_model.config(), rng=rng,
                             scaler=scaler.state_dict() if scaler.is_enabled() else None,
                             elapsed_s=time.perf_counter() - begin)
                ckpt.save_checkpoint(run_dir, model_state=raw_model.state_dict(),
                                     optimizer_state=optimizer.state_dict(), state=state, step=done)
            if world > 1:
                dist.barrier()
    progress.close()
    if rank == 0:
        log.write()
        log.plot()
    return dict(run_dir=str(run_dir), steps=config.steps, loss=loss_value, validation=last_val,
                seconds=time.perf_counter() - begin, rank=rank, world_size=world)


"""What a run trains on and with: the device, the model (fast or reference) and its initialisation."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from unet_fast import checkpoint as ckpt


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; ValueError for "cuda" without a GPU or an unknown name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, str) or name.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


def fast_model_class():
    """``unet_fast.UNet``, or None where this installation lacks ``unet_fast.model``."""
    try:
        from unet_fast.model import UNet
    except ImportError:
        return None
    return UNet


def build_model(kind: str, **config) -> nn.Module:
    """A U-Net: ``kind`` "fast" (``unet_fast.UNet``) or "reference"; ``config`` its constructor args."""
    if kind == "fast":
        cls = fast_model_class()
        if cls is None:
            raise ValueError("model 'fast' is unavailable in this installation (unet_fast.model is missing); use --model reference")
        return cls(**config)
    if kind == "reference":
        from unet_fast.reference import UNet

        return UNet(**config)
    raise ValueError(f"model must be fast or reference, got {kind!r}")


def model_config(config, train) -> dict:
    """The model's constructor arguments for a ``TrainConfig`` and its training set."""
    return dict(in_channels=train.in_channels, num_classes=train.num_classes, base_channels=config.base_channels,
                depth=config.depth, padding=config.padding, dropout=config.dropout, norm=config.norm)


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


def load_model(path, device: torch.device | str = "cpu", kind: str | None = None) -> nn.Module:
    """The trained model of a run or checkpoint directory, in eval mode on ``device``. ``kind``:
    "fast" or "reference" (default: the fast model when this build has it, else the reference)."""
    device = torch.device(device)
    model_state, _, state = ckpt.load_checkpoint(path, map_location="cpu", required=("model_config",))
    if kind is None:
        kind = "fast" if fast_model_class() is not None else "reference"
    model = build_model(kind, **state["model_config"])
    ckpt.load_model_state(model, model_state, path, state["model_config"])
    return model.to(device).eval()


def choose_checkpoint(path) -> tuple[Path, str]:
    """(checkpoint directory, "best" or "latest") for a run directory: its ``best`` checkpoint
    (lowest validation pixel error) when it has one, else its latest; for a checkpoints/ folder or a
    checkpoint directory, that one ("latest" / "given"). FileNotFoundError naming ``path`` when
    there is none."""
    path = Path(path)
    best = ckpt.find_checkpoint(path / ckpt.BEST)
    if best is not None:
        return best, "best"
    found = ckpt.find_checkpoint(path)
    if found is None:
        ckpt.load_checkpoint(path)  # raises the FileNotFoundError that explains the layout
    return found, "given" if found == path else "latest"


def describe_checkpoint(directory: Path, kind: str) -> str:
    """One line naming the checkpoint, its step and (for ``best``) its validation pixel error."""
    state = ckpt.read_state(directory)
    if kind == "best":
        return (f"using the best checkpoint {directory} (step {state['step']}, validation pixel error "
                f"{state['validation']['pixel_error']:.4f})")
    what = "the latest checkpoint (the run has no best one)" if kind == "latest" else "the checkpoint"
    return f"using {what} {directory} (step {state['step']})"

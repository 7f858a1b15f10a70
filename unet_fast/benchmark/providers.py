"""Builds, for one case, each provider's model and the callable a mode times."""
from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from unet_fast.benchmark.cases import CPU_TILED_SIZE, Shape
from unet_fast.reference import UNet as ReferenceUNet
from unet_fast.shapes import output_size


class Skip(Exception):
    """A provider or mode that cannot run here; the message is the reason recorded in the JSON."""


@dataclass
class Runnable:
    """What a mode times. ``run`` is one timed call; ``graph`` (train-step only) builds the
    autograd graph (forward + loss) and returns the loss, for counting saved-for-backward bytes;
    ``parameters`` are excluded from that count."""

    run: Callable[[], object]
    graph: Callable[[], torch.Tensor] | None
    parameters: list[torch.Tensor]


def fast_unet_class():
    """``unet_fast.UNet``, or Skip with the reason it is missing."""
    try:
        module = importlib.import_module("unet_fast.model")
    except ImportError as error:
        raise Skip(f"unet_fast.UNet is not available in this build (unet_fast.model: {error})") from None
    if not hasattr(module, "UNet"):
        raise Skip("unet_fast.UNet is not available in this build (unet_fast.model has no UNet)")
    return module.UNet


def predict_tiled_function():
    """``unet_fast.inference.predict_tiled``, or Skip with the reason it is missing."""
    try:
        module = importlib.import_module("unet_fast.inference")
    except ImportError as error:
        raise Skip(f"unet_fast.inference.predict_tiled is not available in this build ({error})") from None
    if not hasattr(module, "predict_tiled"):
        raise Skip("unet_fast.inference has no predict_tiled in this build")
    return module.predict_tiled


def reference_model(shape: Shape, device: torch.device, seed: int = 0) -> ReferenceUNet:
    """The shared weights every provider of a case starts from (fixed seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ReferenceUNet(**shape.config).to(device)


def build_model(provider: str, reference: ReferenceUNet, compile_mode: str | None, quick: bool) -> torch.nn.Module:
    """The provider's model with the reference's weights (Skip when it cannot run here)."""
    device = next(reference.parameters()).device
    if provider == "reference":
        return copy.deepcopy(reference)
    if provider == "reference-cl":
        return copy.deepcopy(reference).to(memory_format=torch.channels_last)
    if provider == "reference-compile":
        if device.type == "cpu" and quick:
            raise Skip("torch.compile is skipped on CPU in --quick mode: compiling takes minutes on a small CPU")
        if compile_mode is None:
            raise Skip("torch.compile disabled for this run")
        return torch.compile(copy.deepcopy(reference), mode=compile_mode, dynamic=False)
    if provider in ("unet_fast", "unet_fast-recompute"):
        fast_cls = fast_unet_class()
        kwargs = dict(reference.config(), recompute=provider == "unet_fast-recompute")
        try:
            model = fast_cls(**kwargs).to(device)
        except (TypeError, ValueError) as error:
            raise Skip(f"unet_fast.UNet({kwargs}) failed: {error}") from None
        model.load_state_dict(reference.state_dict())
        return model
    raise ValueError(f"unknown provider {provider!r}")


def autocast_context(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_runnable(
    mode: str, provider: str, model: torch.nn.Module, shape: Shape, dtype: str, device: torch.device, seed: int = 1
) -> Runnable:
    """The timed callable for ``mode``; Skip when the mode does not apply."""
    channels_last = provider == "reference-cl"
    generator = torch.Generator(device="cpu").manual_seed(seed)
    parameters = list(model.parameters())
    in_channels = shape.config.get("in_channels", 1)

    def image(batch: int, size: int) -> torch.Tensor:
        x = torch.randn(batch, in_channels, size, size, generator=generator).to(device)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    if provider == "unet_fast-recompute" and mode != "train-step":
        raise Skip("recompute=True only changes training; see the unet_fast provider")

    if mode == "forward":
        model.eval()
        x = image(shape.batch, shape.size)

        def forward() -> torch.Tensor:
            with torch.no_grad(), autocast_context(device, dtype):
                return model(x)

        return Runnable(forward, None, parameters)

    if mode == "train-step":
        model.train()
        x = image(shape.batch, shape.size)
        out = output_size(shape.size, shape.config.get("depth", 5), shape.config.get("padding", "valid"))
        num_classes = shape.config.get("num_classes", 2)
        target = torch.randint(0, num_classes, (shape.batch, out, out), generator=generator).to(device)
        # The paper's optimizer; a tiny learning rate keeps repeated steps numerically tame.
        optimizer = torch.optim.SGD(parameters, lr=1e-6, momentum=0.99)

        def loss() -> torch.Tensor:
            with autocast_context(device, dtype):
                logits = model(x)
            return F.cross_entropy(logits.float(), target)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss().backward()
            optimizer.step()

        return Runnable(step, loss, parameters)

    if mode == "inference-tiled":
        predict_tiled = predict_tiled_function()
        model.eval()
        x = image(1, tiled_image_size(shape, device))
        accepted = inspect.signature(predict_tiled).parameters
        options = {key: value for key, value in (("tile_size", shape.tile_size), ("batch_size", shape.batch)) if key in accepted}

        def predict() -> object:
            with torch.no_grad(), autocast_context(device, dtype):
                return predict_tiled(model, x, **options)

        return Runnable(predict, None, parameters)

    raise ValueError(f"unknown mode {mode!r}")


def tiled_image_size(shape: Shape, device: torch.device) -> int:
    """The side of the square image inference-tiled predicts (smaller on CPU)."""
    return shape.tiled_size if device.type == "cuda" else min(shape.tiled_size, CPU_TILED_SIZE)

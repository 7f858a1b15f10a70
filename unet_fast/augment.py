"""Random elastic + affine + gray-value augmentation (the paper's key augmentation), one kernel launch.

Per sample: coarse displacements from N(0, sigma^2) pixels on a grid x grid lattice spanning the
image, bicubically upsampled (the paper: 3x3, 10 px); a rotation uniform in +-rotation degrees; a
zoom log-uniform in ``scale``; horizontal and vertical flips with probability 1/2 each; a shift
uniform in +-shift pixels per axis; gray-value variation v -> contrast * v^gamma + brightness with
contrast and brightness uniform and gamma log-uniform in their ranges. Image, label (nearest) and
weight map (bilinear) are warped with the same field in one :func:`unet_fast.ops.elastic_warp` call.

Parameters are drawn on the CPU from a ``torch.Generator`` (a fixed number of draws per sample,
whatever is switched off), so one seed gives the same parameters whether the images live on the CPU
or on a GPU.

Defaults: ``grid=3, sigma=10.0, rotation=180.0, scale=None, shift=0.0, flip=True,
contrast=(0.8, 1.2), brightness=(-0.1, 0.1), gamma=(0.8, 1.25)``, bilinear image sampling with
reflection padding. Gray-value variation assumes intensities in [0, 1]; ``None`` switches a
component off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from unet_fast.ops.elastic_warp import INTERPOLATIONS, PADDING_MODES, parse_int_pair, warp

# Uniform draws per sample: angle, zoom, flip x, flip y, shift x, shift y, contrast, brightness, gamma.
_UNIFORM_DRAWS = 9


@dataclass(frozen=True)
class ElasticParameters:
    """One batch's random parameters, in the form :func:`unet_fast.ops.elastic_warp` takes.

    displacement: (N, 2, grid, grid) float32 coarse field in pixels (dy, dx).
    affine: (N, 2, 3) float32 [M | t] on (x, y) about the image centre, or None.
    intensity: (N, 3) float32 (contrast, brightness, gamma), or None.
    """

    displacement: torch.Tensor
    affine: torch.Tensor | None
    intensity: torch.Tensor | None

    def to(self, device) -> "ElasticParameters":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return ElasticParameters(move(self.displacement), move(self.affine), move(self.intensity))


def _range(name: str, value, *, positive: bool) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a (low, high) pair of numbers or None, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi or (positive and lo <= 0):
        need = "0 < low <= high" if positive else "finite low <= high"
        raise ValueError(f"{name} must satisfy {need}, got {(lo, hi)}")
    return lo, hi


def _amount(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return float(value)


def _between(u: torch.Tensor, bounds: tuple[float, float] | None, *, log: bool) -> torch.Tensor | None:
    if bounds is None:
        return None
    lo, hi = (math.log(b) for b in bounds) if log else bounds
    value = lo + (hi - lo) * u
    return value.exp() if log else value


def draw_parameters(
    batch: int,
    *,
    grid: int = 3,
    sigma: float = 10.0,
    rotation: float = 180.0,
    scale: Sequence[float] | None = None,
    shift: float = 0.0,
    flip: bool = True,
    contrast: Sequence[float] | None = (0.8, 1.2),
    brightness: Sequence[float] | None = (-0.1, 0.1),
    gamma: Sequence[float] | None = (0.8, 1.25),
    generator: torch.Generator | None = None,
) -> ElasticParameters:
    """Draws per-sample augmentation parameters on the CPU (see the module docstring for the ranges)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise ValueError(f"batch must be an int >= 0, got {batch!r}")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be an int >= 1, got {grid!r}")
    sigma, rotation, shift = _amount("sigma", sigma), _amount("rotation", rotation), _amount("shift", shift)
    scale = _range("scale", scale, positive=True)
    contrast = _range("contrast", contrast, positive=False)
    brightness = _range("brightness", brightness, positive=False)
    gamma = _range("gamma", gamma, positive=True)
    if not isinstance(flip, bool):
        raise TypeError(f"flip must be a bool, got {type(flip).__name__}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator (parameters are drawn on the CPU), got one on "
                         f"{generator.device}")

    displacement = torch.randn(batch, 2, grid, grid, generator=generator) * sigma
    u = torch.rand(batch, _UNIFORM_DRAWS, generator=generator, dtype=torch.float64)

    affine = None
    if rotation > 0 or scale is not None or shift > 0 or flip:
        angle = torch.deg2rad((2 * u[:, 0] - 1) * rotation)
        zoom = _between(u[:, 1], scale, log=True) if scale is not None else torch.ones(batch, dtype=torch.float64)
        flip_x = torch.where((u[:, 2] < 0.5) & flip, -1.0, 1.0).to(torch.float64)
        flip_y = torch.where((u[:, 3] < 0.5) & flip, -1.0, 1.0).to(torch.float64)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # M = R(angle) diag(flip_x, flip_y) / zoom: the output shows the input zoomed by `zoom`.
        affine = torch.stack([
            torch.stack([cos * flip_x, -sin * flip_y, (2 * u[:, 4] - 1) * shift], dim=1),
            torch.stack([sin * flip_x, cos * flip_y, (2 * u[:, 5] - 1) * shift], dim=1),
        ], dim=1).float()

    intensity = None
    if contrast is not None or brightness is not None or gamma is not None:
        ones, zeros = torch.ones(batch, dtype=torch.float64), torch.zeros(batch, dtype=torch.float64)
        c = _between(u[:, 6], contrast, log=False)
        b = _between(u[:, 7], brightness, log=False)
        g = _between(u[:, 8], gamma, log=True)
        intensity = torch.stack([ones if c is None else c, zeros if b is None else b, ones if g is None else g],
                                dim=1).float()
    return ElasticParameters(displacement, affine, intensity)


def apply_parameters(
    image: torch.Tensor,
    parameters: ElasticParameters,
    label: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    *,
    interpolation: str = "bilinear",
    padding_mode: str = "reflection",
    out_size: Sequence[int] | None = None,
    offset: Sequence[int] | None = None,
):
    """Warps (image, label, weight) with drawn parameters; see :class:`ElasticAugment` for shapes."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        raise ValueError(f"image must be a (N, C, H, W) tensor, got {getattr(image, 'shape', type(image).__name__)}")
    if parameters.displacement.shape[0] != image.shape[0]:
        raise ValueError(f"parameters are for a batch of {parameters.displacement.shape[0]}, image has "
                         f"{image.shape[0]} samples")
    height, width = image.shape[-2:]
    if offset is None:  # a centred window: its centre is the rotation centre
        out_h, out_w = (height, width) if out_size is None else parse_int_pair("out_size", out_size, minimum=1)
        offset = ((height - out_h) // 2, (width - out_w) // 2)
    p = parameters.to(image.device)
    return warp(image, p.displacement, label=label, weight=weight, affine=p.affine, interpolation=interpolation,
                padding_mode=padding_mode, out_size=out_size, offset=offset, intensity=p.intensity,
                check_finite=False, always_tuple=True)


def elastic_augment(
    image: torch.Tensor,
    label: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    *,
    out_size: Sequence[int] | None = None,
    offset: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    interpolation: str = "bilinear",
    padding_mode: str = "reflection",
    **settings,
):
    """Functional :class:`ElasticAugment`: ``settings`` are its range arguments (grid, sigma, ...)."""
    parameters = draw_parameters(image.shape[0], generator=generator, **settings)
    return apply_parameters(image, parameters, label, weight, interpolation=interpolation,
                            padding_mode=padding_mode, out_size=out_size, offset=offset)


class ElasticAugment(nn.Module):
    """Random elastic deformation + rotation/zoom/flip/shift + gray-value variation, one launch.

    ``aug = ElasticAugment(); image, label, weight = aug(image, label, weight, out_size=(572, 572),
    generator=g)``

    Args (ranges documented in the module docstring):
        grid, sigma: coarse displacement lattice (grid x grid) and its standard deviation in pixels.
        rotation: maximum angle in degrees; scale: (low, high) zoom or None; shift: maximum pixels;
        flip: random horizontal and vertical flips; contrast, brightness, gamma: (low, high) or None.
        interpolation: "bilinear" or "bicubic" (or "nearest") for the image; the label is always nearest
            and the weight map bilinear. padding_mode: "reflection" (mirror, the paper's), "border", "zeros".
    Call:
        image (N, C, H, W) float; label (N, H, W) integer or None; weight (N, H, W) float or None;
        out_size (h, w) window, default (H, W); offset (top, left), default centred (may be negative:
        the surroundings are mirrored); generator: a CPU torch.Generator or None (global RNG).
    Returns:
        (image (N, C, h, w), label (N, h, w) or None, weight (N, h, w) or None).
    """

    def __init__(self, grid: int = 3, sigma: float = 10.0, rotation: float = 180.0,
                 scale: Sequence[float] | None = None, shift: float = 0.0, flip: bool = True,
                 contrast: Sequence[float] | None = (0.8, 1.2), brightness: Sequence[float] | None = (-0.1, 0.1),
                 gamma: Sequence[float] | None = (0.8, 1.25), interpolation: str = "bilinear",
                 padding_mode: str = "reflection"):
        super().__init__()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}; got {interpolation!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}; got {padding_mode!r}")
        self.settings = dict(grid=grid, sigma=sigma, rotation=rotation, scale=scale, shift=shift, flip=flip,
                             contrast=contrast, brightness=brightness, gamma=gamma)
        draw_parameters(0, **self.settings)  # validates the settings now rather than at the first batch
        self.interpolation = interpolation
        self.padding_mode = padding_mode

    def draw(self, batch: int, generator: torch.Generator | None = None) -> ElasticParameters:
        return draw_parameters(batch, generator=generator, **self.settings)

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                *, out_size: Sequence[int] | None = None, offset: Sequence[int] | None = None,
                generator: torch.Generator | None = None):
        if not isinstance(image, torch.Tensor) or image.dim() != 4:
            raise ValueError(f"image must be a (N, C, H, W) tensor, got {getattr(image, 'shape', type(image))}")
        return apply_parameters(image, self.draw(image.shape[0], generator), label, weight,
                                interpolation=self.interpolation, padding_mode=self.padding_mode,
                                out_size=out_size, offset=offset)

    def extra_repr(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"{settings}, interpolation={self.interpolation}, padding_mode={self.padding_mode}"

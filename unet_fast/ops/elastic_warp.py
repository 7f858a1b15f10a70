"""elastic_warp: elastic + affine deformation of image, label and weight map in one pass (C++/CUDA)."""
from __future__ import annotations

from typing import Sequence

import torch

from unet_fast import _ext
from unet_fast.ops._layout import extension_memory_format
from unet_fast.ops._numerics import FLOAT_DTYPES
from unet_fast.ops._validation import check_same, check_tensor

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
PADDING_MODES = ("zeros", "border", "reflection")
INTEGER_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
# Source coordinates are clamped to +-2^22 pixels (exact in fp32 with a fraction to spare), and the
# kernels take images below that size (csrc/ops/elastic_warp_checks.h)
MAX_IMAGE_SIZE = 2**22 - 1


def elastic_warp(
    image: torch.Tensor,
    displacement: torch.Tensor,
    *,
    label: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    affine: torch.Tensor | None = None,
    interpolation: str = "bilinear",
    padding_mode: str = "reflection",
    out_size: Sequence[int] | None = None,
    offset: Sequence[int] = (0, 0),
    intensity: torch.Tensor | None = None,
):
    """Warps an image (and optionally its label and weight map) with a displacement field.

    Output pixel p = (y, x) of the full warp samples the input at p + d(p); with ``affine`` = [M | t]
    (acting on (x, y) about the centre c = ((W-1)/2, (H-1)/2)) at c + M (p - c) + t + d(p).
    Sampling is ``F.grid_sample(..., align_corners=True)`` in pixel units: with a dense field and no
    affine the result equals grid_sample's. No gradient exists (inputs requiring grad are refused).

    Source coordinates are clamped to +-2^22 pixels (no change for zeros and border padding;
    reflection mirrors the clamped coordinate) and a NaN one (e.g. from an overflowing affine:
    inf - inf) to -2^22: NaN samples what -infinity does, for image, label and weight alike. Zeros
    padding reads 0; border padding the first pixel of that axis (as grid_sample's bilinear and
    nearest do; its bicubic and zeros-padded bilinear give NaN); reflection padding the pixel at
    -2^22 reflected (grid_sample: the first pixel, for infinities too).

    Args:
        image: (N, C, H, W) float16/bfloat16/float32/float64, or an integer tensor (N, H, W) or
            (N, C, H, W), which is always sampled nearest and copied exactly; 1 <= H, W < 2^22.
        displacement: (N, 2, gh, gw) float, (dy, dx) in pixels, finite. (gh, gw) == (H, W) is a dense
            per-pixel field; otherwise a coarse grid with control points at linspace(0, H-1, gh) x
            linspace(0, W-1, gw), upsampled on the fly exactly like
            ``F.interpolate(displacement, size=(H, W), mode="bicubic", align_corners=True)``.
        label: optional (N, H, W) integer tensor, warped with nearest (the same field and window).
        weight: optional (N, H, W) float tensor, warped with bilinear.
        affine: optional (N, 2, 3) float matrix [M | t] on (x, y) pixel coordinates.
        interpolation: "nearest", "bilinear" or "bicubic" (float images).
        padding_mode: "zeros", "border" or "reflection" (reflection about the edge pixel centres,
            scipy's "mirror"); applies to image, label and weight alike.
        out_size: (h, w) of the returned window of the full (H, W) warp; default (H, W).
        offset: (top, left) of that window in the full warp. A window reaching outside (H, W) is
            allowed: there the displacement is that of the nearest edge pixel (the field is extended
            by clamping), e.g. a 572x572 tile from a 512x512 image at offset (-30, -30).
        intensity: optional (N, 3) float per-sample (contrast, brightness, gamma), float images
            only: each warped value v becomes contrast * sign(v) |v|^gamma + brightness.
    Returns:
        The warped image (N, C, h, w) (integer (N, H, W) input: (N, h, w)), same dtype, channels_last
        when the image is; or, when label or weight is given, the tuple (image, label, weight) with
        label (N, h, w) and weight (N, h, w) in their dtypes, None for those not given.
    """
    return warp(image, displacement, label=label, weight=weight, affine=affine, interpolation=interpolation,
                padding_mode=padding_mode, out_size=out_size, offset=offset, intensity=intensity,
                check_finite=True, always_tuple=False)


def warp(image, displacement, *, label, weight, affine, interpolation, padding_mode, out_size, offset, intensity,
         check_finite: bool, always_tuple: bool):
    """elastic_warp with two switches for callers that build their own parameters (the augmentation):
    ``check_finite=False`` skips the finiteness checks (each is a device synchronisation on CUDA;
    they are skipped under torch.compile too, where they would be data-dependent branches),
    ``always_tuple=True`` returns (image, label, weight) even without label and weight."""
    check_tensor("image", image, dtypes=FLOAT_DTYPES + INTEGER_DTYPES)
    # meta tensors (shapes only) hold no values to check
    check_finite = check_finite and not torch.compiler.is_compiling() and image.device.type != "meta"
    integer_image = image.dtype in INTEGER_DTYPES
    if integer_image and image.dim() == 3:
        image4 = image.unsqueeze(1)
    elif image.dim() == 4:
        image4 = image
    else:
        allowed = "(N, H, W) or (N, C, H, W)" if integer_image else "(N, C, H, W)"
        raise ValueError(f"image must be {allowed}, got shape {tuple(image.shape)}")
    n, _, height, width = image4.shape
    if height < 1 or width < 1:
        raise ValueError(f"image height and width must be at least 1, got {(height, width)}")
    if max(height, width) > MAX_IMAGE_SIZE:
        raise ValueError(f"image height and width must be at most {MAX_IMAGE_SIZE} (2^22 - 1, the kernels' "
                         f"coordinate range), got {(height, width)}: warp tiles of it (out_size, offset)")
    acc_dtype = torch.float64 if image.dtype == torch.float64 else torch.float32

    check_tensor("displacement", displacement, dim=4, dtypes=FLOAT_DTYPES)
    check_same("displacement", displacement, "image", image, dtype=False)
    if displacement.shape[0] != n or displacement.shape[1] != 2 or min(displacement.shape[2:]) < 1:
        raise ValueError(
            f"displacement must be (N, 2, gh, gw) = ({n}, 2, gh, gw) with gh, gw >= 1 for image of shape "
            f"{tuple(image.shape)}, got {tuple(displacement.shape)}"
        )
    if check_finite and not bool(torch.isfinite(displacement).all()):
        raise ValueError("displacement must be finite (it contains NaN or infinity)")

    if label is not None:
        _check_plane("label", label, image, n, height, width, INTEGER_DTYPES)
    restore_weight_dtype = None
    if weight is not None:
        _check_plane("weight", weight, image, n, height, width, FLOAT_DTYPES)
        if weight.dtype != torch.float32 and (integer_image or weight.dtype != image.dtype):
            restore_weight_dtype, weight = weight.dtype, weight.float()
    if affine is not None:
        _check_parameters("affine", affine, image, (n, 2, 3), "(N, 2, 3)", check_finite)
        affine = affine.to(acc_dtype)
    if intensity is not None:
        if integer_image:
            raise ValueError("intensity (gray-value variation) needs a float image, got an integer image")
        _check_parameters("intensity", intensity, image, (n, 3), "(N, 3) (contrast, brightness, gamma)",
                          check_finite)
        intensity = intensity.to(acc_dtype)
    _check_mode("interpolation", interpolation, INTERPOLATIONS)  # integer images ignore it, but it must be valid
    _check_mode("padding_mode", padding_mode, PADDING_MODES)
    out_size = (height, width) if out_size is None else parse_int_pair("out_size", out_size, minimum=1)
    offset = parse_int_pair("offset", offset, minimum=None)
    _refuse_gradients(image=image, displacement=displacement, weight=weight, affine=affine, intensity=intensity)

    _ext.require_extension()
    out, label_out, weight_out = torch.ops.unet_fast.elastic_warp(
        image4, displacement.to(acc_dtype), label, weight, affine, intensity,
        interpolation if not integer_image else "nearest", padding_mode, list(out_size), list(offset),
    )
    if integer_image and image.dim() == 3:
        out = out.squeeze(1)
    if label is None and weight is None and not always_tuple:
        return out
    if weight is not None and restore_weight_dtype is not None:
        weight_out = weight_out.to(restore_weight_dtype)
    return out, (label_out if label is not None else None), (weight_out if weight is not None else None)


def _check_plane(name, t, image, n, height, width, dtypes) -> None:
    check_tensor(name, t, dim=3, dtypes=dtypes)
    check_same(name, t, "image", image, dtype=False)
    if tuple(t.shape) != (n, height, width):
        raise ValueError(
            f"{name} must have shape (N, H, W) = {(n, height, width)} like the image, got {tuple(t.shape)}"
        )


def _check_parameters(name, t, image, shape, described, check_finite) -> None:
    check_tensor(name, t, dtypes=FLOAT_DTYPES)
    check_same(name, t, "image", image, dtype=False)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must be {described} = {shape}, got {tuple(t.shape)}")
    if check_finite and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite (it contains NaN or infinity)")


def _check_mode(name: str, value, allowed) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {', '.join(allowed)}; got {type(value).__name__}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def parse_int_pair(name: str, value, *, minimum: int | None) -> tuple[int, int]:
    try:
        pair = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a pair of ints, got {type(value).__name__}") from None
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be a pair of ints, got {value!r}")
    if minimum is not None and min(pair) < minimum:
        raise ValueError(f"{name} must be at least {minimum} on each axis, got {pair}")
    return pair


def _refuse_gradients(**tensors) -> None:
    if not torch.is_grad_enabled():
        return
    wanting = [name for name, t in tensors.items() if t is not None and t.requires_grad]
    if wanting:
        raise ValueError(
            f"elastic_warp has no gradient, but {', '.join(wanting)} require(s) grad: pass .detach()ed "
            "tensors or call it under torch.no_grad()"
        )


def _fake(image, displacement, label, weight, affine, intensity, interpolation, padding_mode, out_size, offset):
    n, channels = image.shape[:2]
    out_height, out_width = out_size
    layout = extension_memory_format(image)
    out = torch.empty((n, channels, out_height, out_width), dtype=image.dtype, device=image.device,
                      memory_format=layout)
    if label is not None:
        label_out = label.new_empty((n, out_height, out_width))
    else:
        label_out = image.new_empty((0,), dtype=torch.long)
    if weight is not None:
        weight_out = weight.new_empty((n, out_height, out_width))
    else:
        weight_out = image.new_empty((0,), dtype=torch.float32 if image.dtype in INTEGER_DTYPES else image.dtype)
    return out, label_out, weight_out


if _ext._C is not None:
    torch.library.register_fake("unet_fast::elastic_warp")(_fake)

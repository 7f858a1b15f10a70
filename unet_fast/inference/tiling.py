"""In-memory overlap-tile prediction with mirrored borders (the paper's Fig. 2 strategy).

An image of any size is mirror-padded by the network's context margin, cut into tiles of a valid
input size whose origins in the padded image are multiples of 2**(depth-1), run through the model
in batches, and the tiles' outputs are stitched into one map of the image's size.

Why the origins are aligned: every 2x2 max-pool sees the same pixel pairs in a tile as in one pass
over the whole padded image, so for a ``padding="valid"`` model each output pixel is computed from
exactly the same values either way. Whenever the padded image is itself a valid input size the
stitched result therefore equals one pass over it, up to float summation order.

Context margin: for ``"valid"`` models with transposed-conv up-sampling it is
``shapes.border(depth)`` (92 for the paper's network) and each tile's whole output is kept.
``"same"``-padding models see zero padding at every tile edge, and bilinear up-sampling clamps at
every map edge; their tiles are padded by a margin at least as wide as the network's receptive
field (plus the border for valid models, :func:`context_margin`) and only the centre, which the
edge effects cannot reach, is kept, so those models stitch exactly too (equal to one pass over
the padded image's inner region).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unet_fast import shapes

DEFAULT_TILE_SIZE = 572
# Share of the free device memory the default tile size may plan for: the estimate below counts
# feature maps only, not convolution workspaces or allocator fragmentation.
MEMORY_FRACTION = 0.5


def context_margin(depth: int, padding: str = "valid", up_mode: str = "transpose") -> int:
    """Pixels of context each side of a kept output pixel that a tile must contain.

    ``"valid"`` with transposed-conv up-sampling: the border the network trims (92 for depth 5);
    every tile edge effect is trimmed with it. ``"same"``: an upper bound of the
    receptive-field radius, by propagating per-level dependency reach: a 3x3 conv at level l adds
    2**l pixels each side, a 2x2 pool keeps the reach relative to its block, a stride-2 transposed
    conv to level l adds 2**l (bilinear up-sampling, reading two neighbours, adds 2**(l+1)), and a
    skip concat takes the larger reach of its two inputs. ``"valid"`` with bilinear up-sampling:
    that reach plus the border, since interpolation clamps at each map's edge, which in a valid
    model lies up to ``border`` px inside the tile.
    """
    border = shapes.border(depth, padding)  # also validates depth and padding
    up_reach = {"transpose": 1, "bilinear": 2}
    if up_mode not in up_reach:
        raise ValueError(f"up_mode must be one of {tuple(up_reach)}, got {up_mode!r}")
    if padding == "valid" and up_mode == "transpose":
        return border
    reach = 0
    skip_reach = []
    for level in range(depth):
        reach += 2 * 2**level
        skip_reach.append(reach)
    for level in range(depth - 2, -1, -1):
        reach = max(reach + up_reach[up_mode] * 2**level, skip_reach[level]) + 2 * 2**level
    # A valid model's maps end up to ``border`` px inside the tile, and bilinear up-sampling clamps
    # at those edges (align_corners=False): no kept pixel may depend on a clamped one.
    return reach + border


def tile_activation_bytes(tile_size: int, batch_size: int, *, base_channels: int, depth: int,
                          padding: str = "valid", num_classes: int = 2, in_channels: int = 1,
                          dtype: torch.dtype = torch.float32) -> int:
    """An upper estimate of the memory a no-grad forward pass of ``batch_size`` tiles of
    ``tile_size`` x ``tile_size`` holds at its peak, in bytes.

    Counts what inference keeps alive at once: the skip tensors of every encoder level, and at the
    widest point of any level four feature maps of that level's width at its largest spatial size
    (a decoder block's concatenated input is two of them, its up-sampled input and conv output the
    others); plus the float32 logits and softmax of the output. Widths are ``base_channels * 2**l``.
    ValueError when ``tile_size`` is not a valid input size.
    """
    levels = shapes.level_sizes(tile_size, depth, padding)
    if levels is None:
        raise ValueError(shapes.invalid_size_message(tile_size, depth, padding))
    shrink = 4 if padding == "valid" else 0
    skips, widest = 0, in_channels * tile_size**2
    for level, (encoder_size, _) in enumerate(levels):
        width = base_channels * 2**level
        largest = encoder_size + shrink  # the level's input, the largest map it holds
        if level < depth - 1:
            skips += width * encoder_size**2
        widest = max(widest, 4 * width * largest**2)
    item = torch.empty((), dtype=dtype).element_size()
    output = 2 * num_classes * levels[0][1] ** 2 * 4
    return batch_size * ((skips + widest) * item + output)


def free_device_memory(device: torch.device) -> int | None:
    """Bytes a CUDA device can still give this process (free memory plus what PyTorch's caching
    allocator holds unused); None for other devices."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def default_tile_size(model: nn.Module, batch_size: int = 4, device: torch.device | None = None,
                      dtype: torch.dtype | None = None, cap: int = DEFAULT_TILE_SIZE) -> int:
    """The tile edge ``predict_tiled`` uses when none is given: the largest valid input size up to
    ``cap`` (default 572) whose :func:`tile_activation_bytes` for ``batch_size`` tiles fits
    ``MEMORY_FRACTION`` of the device's free memory (CUDA only; elsewhere the size cap alone), and
    never smaller than the smallest usable tile. ``device``/``dtype``: default the model's."""
    config = _model_config(model)
    depth, padding = config["depth"], config["padding"]
    smallest = _smallest_tile(depth, padding, context_margin(depth, padding, config["up_mode"]))
    largest = max(shapes.largest_valid_input_size(cap, depth, padding) or 0, smallest)
    parameter = next(iter(model.parameters()), None)
    if device is None:
        device = parameter.device if parameter is not None else torch.device("cpu")
    if dtype is None:
        dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    free = free_device_memory(torch.device(device))
    if free is None:
        return largest
    budget = MEMORY_FRACTION * free
    base_channels = getattr(_unwrap(model), "base_channels", 64)
    for size in range(largest, smallest - 1, -1):
        if shapes.is_valid_input_size(size, depth, padding) and tile_activation_bytes(
            size, batch_size, base_channels=base_channels, depth=depth, padding=padding,
            num_classes=config["num_classes"], in_channels=config["in_channels"], dtype=dtype,
        ) <= budget:
            return size
    return smallest


def _unwrap(model: nn.Module) -> nn.Module:
    """The module holding the U-Net's configuration behind DDP / torch.compile wrappers."""
    for attribute in ("module", "_orig_mod"):
        inner = getattr(model, attribute, None)
        if isinstance(inner, nn.Module) and not hasattr(model, "depth"):
            return _unwrap(inner)
    return model


def _model_config(model) -> dict:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a U-Net), got {type(model).__name__}")
    inner = _unwrap(model)
    missing = [name for name in ("depth", "padding", "num_classes", "in_channels") if not hasattr(inner, name)]
    if missing:
        raise TypeError(
            f"model must be a U-Net exposing depth, padding, num_classes and in_channels "
            f"(unet_fast.UNet or unet_fast.reference.UNet); {type(inner).__name__} lacks {', '.join(missing)}"
        )
    return dict(
        depth=inner.depth, padding=inner.padding, num_classes=inner.num_classes,
        in_channels=inner.in_channels, up_mode=getattr(inner, "up_mode", "transpose"),
    )


def mirror_pad(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """Reflect-pad ``x`` along ``dim`` (-1 or -2) by ``before`` / ``after`` pixels.

    For pads smaller than the size this is torch's "reflect" mode (the edge pixel is not repeated);
    larger pads keep reflecting back and forth, i.e. the image is extended with period
    2 * (size - 1), like ``numpy.pad(mode="reflect")``. A size-1 axis is repeated.
    """
    if dim not in (-1, -2):
        raise ValueError(f"dim must be -1 or -2, got {dim}")
    size = x.shape[dim]
    if before < size and after < size and size > 1:
        pad = (before, after, 0, 0) if dim == -1 else (0, 0, before, after)
        return F.pad(x, pad, mode="reflect")
    positions = torch.arange(-before, size + after, device=x.device)
    if size == 1:
        index = torch.zeros_like(positions)
    else:
        period = 2 * (size - 1)
        phase = positions.remainder(period)
        index = torch.where(phase < size, phase, period - phase)
    return x.index_select(x.dim() + dim, index)


class _AxisPlan:
    """Tiling of one spatial axis of ``size`` pixels: tile length, kept length, stride and count."""

    def __init__(self, size: int, tile_cap: int, margin: int, depth: int, padding: str, axis_name: str):
        step = 2 ** (depth - 1)
        needed = shapes.valid_input_size(size + 2 * margin, depth, padding)
        self.tile = min(tile_cap, needed)
        self.kept = self.tile - 2 * margin
        if size <= self.kept:
            self.stride, self.count = self.kept, 1
        else:
            self.stride = (self.kept // step) * step
            self.count = math.ceil((size - self.kept) / self.stride) + 1
        self.padded = (self.count - 1) * self.stride + self.tile
        self.size, self.margin, self.axis_name = size, margin, axis_name

    def origins(self) -> list[int]:
        return [i * self.stride for i in range(self.count)]


def _smallest_tile(depth: int, padding: str, margin: int) -> int:
    """The smallest valid tile whose kept output spans at least one pooling period 2**(depth-1)."""
    return shapes.valid_input_size(2 * margin + 2 ** (depth - 1), depth, padding)


def model_device(model: nn.Module, device=None) -> torch.device:
    """Where ``model`` runs: ``device`` when given (it must be where the parameters are), else the
    parameters' device (the CPU for a model without any). Errors name the argument."""
    parameter = next(iter(model.parameters()), None)
    if parameter is not None and parameter.device.type == "meta":
        raise ValueError("model has its parameters on the meta device, which holds no values: load its weights first")
    if device is None:
        return parameter.device if parameter is not None else torch.device("cpu")
    try:
        device = torch.device(device)
    except (TypeError, RuntimeError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
    if device.type == "meta":
        raise ValueError("device must be one that holds values, such as 'cpu' or 'cuda:0', got 'meta'")
    home = parameter.device if parameter is not None else device
    if home.type != device.type or None not in (home.index, device.index) and home.index != device.index:
        raise ValueError(f"device {device} is not where the model's parameters are ({parameter.device}): "
                         f"move the model with model.to({str(device)!r}) or leave device unset")
    return device


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _predict_plain(model, image, config, tile_cap, margin, batch_size, device, dtype) -> torch.Tensor:
    """Stitched class probabilities (N, K, H, W) in float32 on ``device``, without TTA."""
    n, _, height, width = image.shape
    rows = _AxisPlan(height, tile_cap, margin, config["depth"], config["padding"], "height")
    cols = _AxisPlan(width, tile_cap, margin, config["depth"], config["padding"], "width")
    padded = mirror_pad(mirror_pad(image, margin, margin, -2), margin, margin, -1)
    # Beyond the mirrored border the content reaches no kept output pixel: zeros complete the grid.
    padded = F.pad(padded, (0, cols.padded - padded.shape[-1], 0, rows.padded - padded.shape[-2]))
    # Outputs start ``border`` px into the tile (0 for "same"); the kept centre ``margin`` px in.
    offset = margin - shapes.border(config["depth"], config["padding"])
    probs = torch.empty((n, config["num_classes"], height, width), dtype=torch.float32, device=device)
    tiles = [(i, top, left) for i in range(n) for top in rows.origins() for left in cols.origins()]
    for start in range(0, len(tiles), batch_size):
        chunk = tiles[start : start + batch_size]
        batch = torch.stack(
            [padded[i, :, top : top + rows.tile, left : left + cols.tile] for i, top, left in chunk]
        ).to(device=device, dtype=dtype)
        logits = model(batch)
        tile_probs = logits.float().softmax(dim=1)
        for (i, top, left), tile in zip(chunk, tile_probs):
            h, w = min(rows.kept, height - top), min(cols.kept, width - left)
            probs[i, :, top : top + h, left : left + w] = tile[:, offset : offset + h, offset : offset + w]
    return probs


# The dihedral group of the square: (rotation quarter-turns, flip-left-right first).
DIHEDRAL = tuple((turns, flip) for flip in (False, True) for turns in range(4))


def _transform(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


def _inverse_transform(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    if turns:
        x = torch.rot90(x, -turns, dims=(-2, -1))
    return x.flip(-1) if flip else x


def predict_tiled(model, image, *, tile_size: int | None = None, batch_size: int = 4, tta: bool = False):
    """Segment an image of any size by overlap-tile prediction.

    Args:
        model: a U-Net (``unet_fast.UNet`` or ``unet_fast.reference.UNet``, also wrapped in DDP or
            ``torch.compile``). It runs in eval mode under ``torch.no_grad``; its mode is restored.
        image: floating-point tensor (N, C, H, W) or (C, H, W), any H, W >= 1, normalised as in training.
        tile_size: largest tile edge fed to the model; tiles use the largest valid input size <= it
            (default :func:`default_tile_size`: the largest valid size <= 572 whose activations
            for ``batch_size`` tiles fit half the free memory of a CUDA device). Smaller images
            use one smaller tile.
        batch_size: tiles per forward pass.
        tta: average the probabilities over the 8 flips and 90-degree rotations. Each transformed
            image is padded and tiled in its own frame (so rotated tiles keep a valid, aligned grid)
            and its prediction transformed back; the result is equivariant under those transforms.

    Returns:
        ``(probs, labels)``: float32 class probabilities (N, K, H, W) and int64 labels (N, H, W), the
        argmax; (K, H, W) and (H, W) for a (C, H, W) image. On the image's device.
    """
    config = _model_config(model)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() not in (3, 4):
        raise ValueError(f"image must be (C, H, W) or (N, C, H, W), got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(
            f"image must be floating point, normalised as in training, got {image.dtype} "
            "(e.g. convert 8-bit images with image.float() / 255)"
        )
    single = image.dim() == 3
    batch = image.unsqueeze(0) if single else image
    if batch.shape[1] != config["in_channels"]:
        raise ValueError(
            f"image has {batch.shape[1]} channel(s) but the model expects {config['in_channels']} "
            f"(shape {tuple(image.shape)})"
        )
    if batch.shape[0] < 1 or batch.shape[-1] < 1 or batch.shape[-2] < 1:
        raise ValueError(f"image must be non-empty, got shape {tuple(image.shape)}")
    if image.device.type == "meta":
        raise ValueError("image is on the meta device, which holds no values: pass a CPU or CUDA tensor")
    _check_int("batch_size", batch_size, 1)
    if not isinstance(tta, bool):
        raise TypeError(f"tta must be a bool, got {type(tta).__name__}")

    depth, padding = config["depth"], config["padding"]
    margin = context_margin(depth, padding, config["up_mode"])
    smallest = _smallest_tile(depth, padding, margin)
    if tile_size is None:
        tile_cap = default_tile_size(model, batch_size)
    else:
        _check_int("tile_size", tile_size, 1)
        if tile_size < smallest:
            raise ValueError(
                f"tile_size={tile_size} is too small for a depth-{depth} U-Net with padding={padding!r}: "
                f"a tile needs {margin} px of context per side, so the smallest usable tile is {smallest}"
            )
        tile_cap = shapes.largest_valid_input_size(tile_size, depth, padding)

    parameter = next(iter(model.parameters()), None)
    device = model_device(model) if parameter is not None else batch.device
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            transforms = DIHEDRAL if tta else DIHEDRAL[:1]
            probs = None
            for turns, flip in transforms:
                view = _transform(batch, turns, flip)
                p = _predict_plain(model, view, config, tile_cap, margin, batch_size, device, dtype)
                p = _inverse_transform(p, turns, flip)
                probs = p if probs is None else probs + p
            if len(transforms) > 1:
                probs /= len(transforms)
    finally:
        model.train(was_training)
    probs = probs.to(batch.device)
    labels = probs.argmax(dim=1)
    return (probs[0], labels[0]) if single else (probs, labels)

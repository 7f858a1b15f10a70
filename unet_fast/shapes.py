"""Valid input sizes, output sizes and crop offsets of the U-Net.

With ``padding="valid"`` every 3x3 conv trims one pixel per side, every 2x2 max-pool halves the
size and needs it even, and every up-convolution doubles it. For depth 5 (the paper's network)
the valid inputs are 188 + 16k (572 gives 388); for ``padding="same"`` they are the multiples of
2^(depth-1) and the output has the input's size.
"""
from __future__ import annotations

PADDINGS = ("valid", "same")


def _check(depth: int, padding: str) -> None:
    if not isinstance(depth, int) or depth < 2:
        raise ValueError(f"depth must be an integer >= 2, got {depth!r}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


def level_sizes(input_size: int, depth: int = 5, padding: str = "valid") -> list[tuple[int, int]] | None:
    """Per level, the (encoder output size, decoder output size) of one spatial axis, or None.

    Level 0 is the top, level depth-1 the bottleneck (whose two sizes are equal). Returns None when
    a feature map would be odd before a pool or would vanish.
    """
    _check(depth, padding)
    shrink = 4 if padding == "valid" else 0
    encoder = []
    size = input_size
    for level in range(depth):
        size -= shrink
        if size < 1 or (level < depth - 1 and size % 2):
            return None
        encoder.append(size)
        size //= 2
    decoder = [encoder[-1]]
    for level in range(depth - 2, -1, -1):
        size = 2 * decoder[0] - shrink
        if size < 1:
            return None
        decoder.insert(0, size)
    return list(zip(encoder, decoder))


def is_valid_input_size(size: int, depth: int = 5, padding: str = "valid") -> bool:
    """Whether a spatial size passes through the network without odd pools or vanishing maps."""
    return level_sizes(size, depth, padding) is not None


def output_size(input_size: int, depth: int = 5, padding: str = "valid") -> int:
    """The output's spatial size for one axis; ValueError for an invalid input size."""
    levels = level_sizes(input_size, depth, padding)
    if levels is None:
        raise ValueError(invalid_size_message(input_size, depth, padding))
    return levels[0][1]


def valid_input_size(size: int, depth: int = 5, padding: str = "valid") -> int:
    """The smallest valid input size >= ``size``."""
    _check(depth, padding)
    candidate = max(int(size), 1)
    while not is_valid_input_size(candidate, depth, padding):
        candidate += 1
    return candidate


def largest_valid_input_size(size: int, depth: int = 5, padding: str = "valid") -> int | None:
    """The largest valid input size <= ``size``, or None if there is none."""
    _check(depth, padding)
    for candidate in range(int(size), 0, -1):
        if is_valid_input_size(candidate, depth, padding):
            return candidate
    return None


def border(depth: int = 5, padding: str = "valid") -> int:
    """Pixels lost per side between input and output (92 for the paper's network)."""
    size = valid_input_size(1, depth, padding)
    return (size - output_size(size, depth, padding)) // 2


def crop_offset(skip_size: int, size: int) -> int:
    """Offset of the centered crop of ``size`` out of ``skip_size``; the difference must be even."""
    diff = skip_size - size
    if diff < 0 or diff % 2:
        raise ValueError(f"cannot center-crop {skip_size} to {size}: the difference must be even and >= 0")
    return diff // 2


def invalid_size_message(size: int, depth: int, padding: str) -> str:
    below = largest_valid_input_size(size, depth, padding)
    above = valid_input_size(size, depth, padding)
    nearest = f"{below} or {above}" if below is not None else f"{above}"
    step = 2 ** (depth - 1)
    rule = (
        f"valid sizes are {valid_input_size(1, depth, padding)} + {step}k"
        if padding == "valid"
        else f"valid sizes are multiples of {step}"
    )
    return (
        f"input size {size} is invalid for a depth-{depth} U-Net with padding={padding!r}: a feature map "
        f"would be odd before a 2x2 max-pool or would vanish ({rule}); the nearest valid sizes are {nearest}"
    )

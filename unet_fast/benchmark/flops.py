"""Analytic FLOP counts of the U-Net, layer by layer.

A FLOP here is one multiply or one add of a convolution's multiply-accumulates (2 per MAC), the
convention of ``torch.utils.flop_counter`` and of matmul TFLOP/s figures. Bias adds, ReLU, pooling,
crops, concats, normalisation and the loss are left out: they are memory bound, not FLOP bound.

For the paper's network (1 -> 2 classes, base 64, depth 5, valid padding) at 572x572, batch 1, the
forward pass is 300.857 GFLOP; a training step (forward, input-gradient of every layer but the
first, weight gradient of every layer) is 902.196 GFLOP.
"""
from __future__ import annotations

from dataclasses import dataclass

from unet_fast.shapes import invalid_size_message, is_valid_input_size


@dataclass(frozen=True)
class Layer:
    """One convolution-like layer at a given input size.

    ``kind`` is "conv3x3", "upconv2x2" (stride-2 transposed conv), "conv1x1"; ``pixels`` is the
    number of output pixels per image for convs and of input pixels for the transposed conv (each
    input pixel produces a 2x2 output patch).
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    taps: int
    pixels: int

    @property
    def macs(self) -> int:
        """Multiply-accumulates per image."""
        return self.in_channels * self.out_channels * self.taps * self.pixels


def _config_value(config: dict, key: str, default):
    return config.get(key, default)


def unet_layers(config: dict, height: int, width: int) -> list[Layer]:
    """The convolution-like layers of a reference-compatible U-Net for an (height, width) input.

    ``config`` holds the reference UNet's constructor arguments (``UNet.config()``); missing keys
    take the reference defaults. ValueError for an input size the network cannot take.
    """
    in_channels = _config_value(config, "in_channels", 1)
    num_classes = _config_value(config, "num_classes", 2)
    base = _config_value(config, "base_channels", 64)
    depth = _config_value(config, "depth", 5)
    padding = _config_value(config, "padding", "valid")
    up_mode = _config_value(config, "up_mode", "transpose")
    skips = _config_value(config, "skip_connections", True)
    for axis, size in (("height", height), ("width", width)):
        if not is_valid_input_size(size, depth, padding):
            raise ValueError(f"input {axis}: " + invalid_size_message(size, depth, padding))
    shrink = 2 if padding == "valid" else 0

    layers: list[Layer] = []
    h, w = height, width
    widths = [base * 2**level for level in range(depth)]
    c_in = in_channels
    for level, c_out in enumerate(widths):
        h, w = h - shrink, w - shrink
        layers.append(Layer(f"encoder.{level}.conv1", "conv3x3", c_in, c_out, 9, h * w))
        h, w = h - shrink, w - shrink
        layers.append(Layer(f"encoder.{level}.conv2", "conv3x3", c_out, c_out, 9, h * w))
        if level < depth - 1:
            h, w = h // 2, w // 2
        c_in = c_out
    for stage, c_up_in in enumerate(reversed(widths[1:])):
        c_half = c_up_in // 2
        if up_mode == "transpose":
            layers.append(Layer(f"decoder.{stage}.up", "upconv2x2", c_up_in, c_half, 4, h * w))
            h, w = 2 * h, 2 * w
        else:
            h, w = 2 * h, 2 * w
            layers.append(Layer(f"decoder.{stage}.up.conv", "conv1x1", c_up_in, c_half, 1, h * w))
        block_in = 2 * c_half if skips else c_half
        h, w = h - shrink, w - shrink
        layers.append(Layer(f"decoder.{stage}.block.conv1", "conv3x3", block_in, c_half, 9, h * w))
        h, w = h - shrink, w - shrink
        layers.append(Layer(f"decoder.{stage}.block.conv2", "conv3x3", c_half, c_half, 9, h * w))
    layers.append(Layer("head", "conv1x1", base, num_classes, 1, h * w))
    return layers


def forward_flops(config: dict, height: int, width: int, batch: int = 1) -> int:
    """FLOPs of one forward pass over a batch."""
    return 2 * batch * sum(layer.macs for layer in unet_layers(config, height, width))


def train_step_flops(config: dict, height: int, width: int, batch: int = 1) -> int:
    """FLOPs of forward + backward: every layer's weight gradient, and the input gradient of every
    layer except the first (the image needs none). The optimizer step is O(parameters): left out."""
    layers = unet_layers(config, height, width)
    macs = sum(3 * layer.macs for layer in layers) - layers[0].macs
    return 2 * batch * macs

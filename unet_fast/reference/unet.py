"""The U-Net of Ronneberger, Fischer and Brox (2015) in plain PyTorch.

Defaults are the paper's: two unpadded 3x3 conv + ReLU per level, 2x2 max-pool, a 2x2 stride-2
transposed conv that halves the channels, center crop of the skip and concat (skip first), a 1x1
output conv and dropout at the end of the contracting path. 572x572 in gives 388x388 out; the
model has 31,030,658 parameters.

State dict keys (stable; ``unet_fast.UNet`` uses the same), for level i in [0, depth) and decoder
stage j in [0, depth - 1) counted from the bottom up:

    encoder.{i}.conv1.{weight,bias}   encoder.{i}.conv2.{weight,bias}
    encoder.{i}.norm1.*, encoder.{i}.norm2.*                       (norm="batch" or "instance")
    decoder.{j}.up.{weight,bias}                                   (up_mode="transpose")
    decoder.{j}.up.conv.{weight,bias}                              (up_mode="bilinear")
    decoder.{j}.block.conv1.*, decoder.{j}.block.conv2.*, decoder.{j}.block.norm{1,2}.*
    head.{weight,bias}                                             (1x1 conv to num_classes)

Encoder level i has ``base_channels * 2**i`` channels; level depth-1 is the bottleneck.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unet_fast.reference.functional import center_crop_concat
from unet_fast.shapes import PADDINGS, invalid_size_message, is_valid_input_size

UP_MODES = ("transpose", "bilinear")
NORMS = (None, "batch", "instance")


def _norm(kind: str | None, channels: int) -> nn.Module | None:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return None


class ConvBlock(nn.Module):
    """Two 3x3 convs, each followed by the optional norm and a ReLU. (N, C_in, H, W) -> (N, C_out, H', W')
    with H' = H - 4 for padding="valid" and H' = H for "same"."""

    def __init__(self, in_channels: int, out_channels: int, padding: str = "valid", norm: str | None = None):
        super().__init__()
        pad = 0 if padding == "valid" else 1
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=pad)
        self.norm1 = _norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=pad)
        self.norm2 = _norm(norm, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = F.relu(self.norm1(x) if self.norm1 is not None else x)
        x = self.conv2(x)
        return F.relu(self.norm2(x) if self.norm2 is not None else x)


class BilinearUp(nn.Module):
    """2x bilinear upsampling then a 1x1 conv to ``out_channels``: (N, C, H, W) -> (N, C_out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


class DecoderStage(nn.Module):
    """Upsample (halving the channels), center-crop the skip, concat (skip first), ConvBlock."""

    def __init__(self, in_channels: int, padding: str, up_mode: str, norm: str | None, skip_connection: bool):
        super().__init__()
        out_channels = in_channels // 2
        if up_mode == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        else:
            self.up = BilinearUp(in_channels, out_channels)
        self.skip_connection = skip_connection
        block_in = 2 * out_channels if skip_connection else out_channels
        self.block = ConvBlock(block_in, out_channels, padding, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.skip_connection:
            x = center_crop_concat(skip, x)
        return self.block(x)


class UNet(nn.Module):
    """The U-Net. Input (N, in_channels, H, W), output logits (N, num_classes, H', W').

    With ``padding="valid"`` H and W must be valid sizes (188 + 16k for depth 5; see
    ``unet_fast.shapes``) and H' = ``output_size(H, depth)``; with ``"same"`` they must be multiples
    of 2**(depth-1) and H' = H.

    Args:
        in_channels: image channels.
        num_classes: output channels (class logits).
        base_channels: channels of the top level; level i has base_channels * 2**i.
        depth: number of levels including the bottleneck (the paper: 5).
        padding: "valid" (the paper: unpadded convs) or "same" (zero padding 1).
        up_mode: "transpose" (2x2 stride-2 transposed conv) or "bilinear" (bilinear + 1x1 conv).
        dropout: drop probability at the end of the contracting path (the bottleneck's output).
        norm: None (the paper), "batch" or "instance", after every 3x3 conv.
        skip_connections: False drops the skips (an ablation): the decoder sees only upsampled maps.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 64,
        depth: int = 5,
        padding: str = "valid",
        up_mode: str = "transpose",
        dropout: float = 0.5,
        norm: str | None = None,
        skip_connections: bool = True,
    ):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("base_channels", base_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 2:
            raise ValueError(f"depth must be an integer >= 2, got {depth!r}")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if up_mode not in UP_MODES:
            raise ValueError(f"up_mode must be one of {UP_MODES}, got {up_mode!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_channels, self.num_classes, self.base_channels, self.depth = in_channels, num_classes, base_channels, depth
        self.padding, self.up_mode, self.norm, self.skip_connections = padding, up_mode, norm, skip_connections

        widths = [base_channels * 2**level for level in range(depth)]
        self.encoder = nn.ModuleList(
            ConvBlock(c_in, c_out, padding, norm) for c_in, c_out in zip([in_channels] + widths[:-1], widths)
        )
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.ModuleList(
            DecoderStage(width, padding, up_mode, norm, skip_connections) for width in reversed(widths[1:])
        )
        self.head = nn.Conv2d(base_channels, num_classes, 1)

    def config(self) -> dict:
        """The constructor arguments, to rebuild the same architecture."""
        return dict(
            in_channels=self.in_channels, num_classes=self.num_classes, base_channels=self.base_channels,
            depth=self.depth, padding=self.padding, up_mode=self.up_mode, dropout=self.dropout.p,
            norm=self.norm, skip_connections=self.skip_connections,
        )

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError naming the problem for a tensor this model cannot take."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"expected a 4-d input (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channel(s), got {x.shape[1]} (shape {tuple(x.shape)})")
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point input, got {x.dtype}")
        parameter_device = self.head.weight.device
        if x.device != parameter_device:
            raise ValueError(f"input is on {x.device} but the model's parameters are on {parameter_device}: "
                             f"move one of them, e.g. x.to({str(parameter_device)!r})")
        for axis, size in (("height", x.shape[2]), ("width", x.shape[3])):
            if not is_valid_input_size(size, self.depth, self.padding):
                raise ValueError(f"input {axis}: " + invalid_size_message(size, self.depth, self.padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < self.depth - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        x = self.dropout(x)
        for stage, skip in zip(self.decoder, reversed(skips)):
            x = stage(x, skip)
        return self.head(x)

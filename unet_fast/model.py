"""``unet_fast.UNet``: the reference U-Net's drop-in replacement with fused block ops.

Same constructor (plus ``backend`` and ``recompute``), same module tree and ``state_dict`` keys as
``unet_fast.reference.UNet`` (it is a subclass), same outputs and gradients. What changes is how a
block runs: each encoder block, decoder stage and the head is one custom op (``unet_fast.blocks``)
that keeps only the block's two ReLU outputs for backward (see there), and on CUDA runs the fused
Triton kernels. Blocks whose options the fused ops do not serve (norm, padding="same",
up_mode="bilinear") run the reference modules unchanged; ``backend_summary()`` lists which is which.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from unet_fast import blocks
from unet_fast.ops._layout import output_memory_format
from unet_fast.ops._numerics import autocast_dtype
from unet_fast.ops.backend import ChoiceLog, block_backend, check_backend, layer_scope, resolve_backend
from unet_fast.reference.unet import UNet as ReferenceUNet


class UNet(ReferenceUNet):
    """The U-Net with fused blocks. Input (N, in_channels, H, W), output logits (N, num_classes, H', W').

    Args: those of ``unet_fast.reference.UNet`` (same defaults: the paper's network), plus
        backend: "auto" (Triton kernels for CUDA inputs when Triton is installed, PyTorch ops
            otherwise), "triton" or "torch". Both save the same tensors for backward.
        recompute: also recompute each block's first conv in backward instead of keeping its
            output: about half the saved activations again, for one extra conv per block.

    Under ``torch.autocast`` the blocks compute in the autocast dtype (weights are cast inside the
    ops, and not kept); without it the input must have the parameters' dtype.
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
        *,
        backend: str = "auto",
        recompute: bool = False,
    ):
        super().__init__(in_channels, num_classes, base_channels, depth, padding, up_mode, dropout, norm,
                         skip_connections)
        check_backend(backend)
        if not isinstance(recompute, bool):
            raise TypeError(f"recompute must be a bool, got {type(recompute).__name__}")
        self.backend, self.recompute = backend, recompute
        self._choices = ChoiceLog()  # what backend "auto" picked for each block (backend_summary)

    # --- which layers run fused ---------------------------------------------------------------------

    def _encoder_fallback_reason(self) -> str | None:
        if self.norm is not None:
            return f"norm={self.norm!r}"
        if self.padding != "valid":
            return f"padding={self.padding!r}"
        return None

    def _decoder_fallback_reason(self) -> str | None:
        if self.up_mode != "transpose":
            return f"up_mode={self.up_mode!r}"
        return self._encoder_fallback_reason()

    def backend_summary(self, device: torch.device | str | None = None) -> dict[str, str]:
        """For each block ("encoder.i", "decoder.j", "head"), how it runs on ``device`` (default: the
        parameters' device): "fused (triton)", "fused (torch)", "reference (<reason>)", or
        "unavailable (<reason>)" when the requested backend cannot run there (forward would raise).
        Where backend "auto" picks Triton or cuDNN per shape (its 3x3 convs on CUDA), a block reads
        what its forwards and backwards ran so far: "fused (triton)", "fused (cudnn)" or "fused
        (backward triton, forward cudnn+triton)", and "auto (not chosen yet: ...)" before its first
        forward."""
        parameter = next(self.parameters())
        device = parameter.device if device is None else torch.device(device)
        try:
            fused = f"fused ({resolve_backend(self.backend, device, parameter.dtype)})"
            per_shape = block_backend(self.backend, device, parameter.dtype) == "auto"
        except (ValueError, TypeError) as error:  # forward would raise this; the summary reports it
            fused, per_shape = f"unavailable ({error})", False
        encoder_reason, decoder_reason = self._encoder_fallback_reason(), self._decoder_fallback_reason()

        def fused_block(name: str) -> str:
            return _chosen(self._choices.layers.get(name)) if per_shape else fused

        summary = {}
        for level in range(self.depth):
            name = f"encoder.{level}"
            summary[name] = fused_block(name) if encoder_reason is None else f"reference ({encoder_reason})"
        for stage in range(self.depth - 1):
            name = f"decoder.{stage}"
            summary[name] = fused_block(name) if decoder_reason is None else f"reference ({decoder_reason})"
        summary["head"] = fused  # the 1x1 conv has no per-shape choice
        return summary

    # --- conversion ---------------------------------------------------------------------------------

    @classmethod
    def from_reference(cls, reference: ReferenceUNet, backend: str = "auto", recompute: bool = False) -> "UNet":
        """A fast twin of a reference model: same architecture, a copy of its weights (and buffers), on
        its device and dtype, in its training mode."""
        if not isinstance(reference, ReferenceUNet):
            raise TypeError(f"reference must be a unet_fast.reference.UNet, got {type(reference).__name__}")
        return _twin(cls(**ReferenceUNet.config(reference), backend=backend, recompute=recompute), reference)

    def to_reference(self) -> ReferenceUNet:
        """The reference twin with a copy of these weights, device, dtype and mode: the path to
        ``torch.export`` and ONNX export, which do not know the fused ops."""
        return _twin(ReferenceUNet(**self.config()), self)

    # --- forward ------------------------------------------------------------------------------------

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        autocast = autocast_dtype(x.device.type)
        if autocast is not None:
            return autocast
        parameter_dtype = self.head.weight.dtype
        if x.dtype != parameter_dtype:
            raise TypeError(
                f"input dtype {x.dtype} does not match the model's parameter dtype {parameter_dtype}: convert one of "
                "them, or run under torch.autocast"
            )
        return x.dtype

    def _scope(self, backend: str, name: str):
        """Logs backend "auto"'s choices inside under the block ``name`` (eager only: under
        torch.compile the ops run after tracing, outside any scope)."""
        if backend != "auto" or torch.compiler.is_compiling():
            return contextlib.nullcontext()
        return layer_scope(self._choices, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        dtype = self._compute_dtype(x)
        backend = block_backend(self.backend, x.device, dtype)  # "auto" keeps the per-shape cuDNN choice
        encoder_fused = self._encoder_fallback_reason() is None
        decoder_fused = self._decoder_fallback_reason() is None

        h, pooled, skips = (x.to(dtype) if encoder_fused else x), None, []
        cpu_layout = self._cpu_layout(x) if backend == "torch" and encoder_fused and decoder_fused else None
        if cpu_layout is not None:
            h = _in_layout(h, cpu_layout)
        for level, block in enumerate(self.encoder):
            bottom = level == self.depth - 1
            if encoder_fused:
                with self._scope(backend, f"encoder.{level}"):
                    _, y2, p = blocks.run_encoder_block(
                        h, pooled, block.conv1.weight, block.conv1.bias, block.conv2.weight, block.conv2.bias,
                        not bottom, self.recompute, backend,
                    )
            else:
                y2 = block(h if pooled is None else pooled)
                p = None if bottom else F.max_pool2d(y2, 2)
            if not bottom:
                skips.append(y2)
            h, pooled = y2, (None if bottom else p)

        if cpu_layout is not None and self.training and self.dropout.p > 0:
            # dropout draws its mask in memory order: in NCHW order, as the reference, for the same mask
            h = self.dropout(h.contiguous()).contiguous(memory_format=cpu_layout)
        else:
            h = self.dropout(h)
        for index, (stage, skip) in enumerate(zip(self.decoder, reversed(skips))):
            if decoder_fused:
                convs = stage.block
                with self._scope(backend, f"decoder.{index}"):
                    _, h = blocks.run_decoder_block(
                        h.to(dtype), skip if self.skip_connections else None, stage.up.weight, stage.up.bias,
                        convs.conv1.weight, convs.conv1.bias, convs.conv2.weight, convs.conv2.bias, self.recompute,
                        backend,
                    )
            else:
                h = stage(h, skip)
        logits = blocks.run_head(h.to(dtype), self.head.weight, self.head.bias, backend)
        if cpu_layout is not None:  # the caller's layout, as the reference returns it
            logits = logits.contiguous(memory_format=output_memory_format("torch", x))
        return logits

    def _cpu_layout(self, x: torch.Tensor) -> torch.memory_format | None:
        """The layout the fused blocks run in on CPU (None elsewhere): channels_last, training and
        inference, where oneDNN's convolutions (forward, input and weight gradients) run about 1.5-2x
        faster than in NCHW at the U-Net's shapes, and the pool and ReLU-gradient kernels stream
        channels."""
        return torch.channels_last if x.device.type == "cpu" else None


def _in_layout(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """x in ``memory_format`` by its strides (``output_memory_format``'s rule), also for a single
    channel, where ``contiguous`` keeps NCHW strides that are channels_last at once."""
    if memory_format == torch.channels_last and x.shape[1] == 1:
        n, _, h, w = x.shape
        return x.contiguous().as_strided(x.shape, (h * w, 1, w, 1))
    return x.contiguous(memory_format=memory_format)


def _chosen(passes: dict[str, set[str]] | None) -> str:
    """A block's summary from the backends "auto" chose for its passes ("aten" is cuDNN + PyTorch ops)."""
    if not passes:
        return "auto (not chosen yet: Triton or cuDNN is picked per shape on the first forward)"
    names = {pass_name: "+".join(sorted("cudnn" if c == "aten" else c for c in choices))
             for pass_name, choices in passes.items()}
    if len(set(names.values())) == 1:
        return f"fused ({next(iter(names.values()))})"
    return "fused (" + ", ".join(f"{pass_name} {names[pass_name]}" for pass_name in sorted(names)) + ")"


def _twin(model: torch.nn.Module, source: torch.nn.Module) -> torch.nn.Module:
    """``model`` with ``source``'s weights, device, dtype and training mode."""
    parameter, current = next(source.parameters()), next(model.parameters())
    if (current.device, current.dtype) != (parameter.device, parameter.dtype):
        model.to(device=parameter.device, dtype=parameter.dtype)
    model.load_state_dict(source.state_dict())
    return model.train(source.training)

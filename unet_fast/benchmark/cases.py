"""What the suite measures: providers x modes x shapes x dtypes.

Providers (implementations of the same U-Net, same weights):
  reference            the paper-exact PyTorch model, eager, contiguous (NCHW) tensors
  reference-cl         the same with channels_last model and input
  reference-compile    the same under ``torch.compile`` (mode "max-autotune" on CUDA with --full,
                       else the default mode); skipped on CPU in --quick mode (compiling takes
                       minutes on a small CPU)
  unet_fast            ``unet_fast.UNet`` (backend "auto"), when this build has it
  unet_fast-recompute  ``unet_fast.UNet(recompute=True)``; train-step only (recompute changes
                       nothing else)

Modes:
  forward              inference forward in eval mode under ``torch.no_grad``
  train-step           forward + pixel-wise cross-entropy + backward + SGD (momentum 0.99) step
  inference-tiled      ``unet_fast.inference.predict_tiled`` overlap-tile prediction of one large
                       image (4096x4096 on CUDA), when this build has it

Dtypes: "fp32" (TF32 off, so fp32 means fp32) and "bf16" (``torch.autocast`` bfloat16).
"""
from __future__ import annotations

from dataclasses import dataclass, field

PROVIDERS = ("reference", "reference-cl", "reference-compile", "unet_fast", "unet_fast-recompute")
BASELINE = "reference"
MODES = ("forward", "train-step", "inference-tiled")
DTYPES = ("fp32", "bf16")


@dataclass(frozen=True)
class Shape:
    """A model configuration and input: ``config`` holds reference UNet constructor arguments,
    ``size`` the input height and width, ``tiled_size`` the image side for inference-tiled and
    ``tile_size`` the tile size passed to ``predict_tiled`` (batch_size is ``batch``);
    ``tiled_devices`` where inference-tiled is measured with this shape (once per model and device,
    as the image is the same), ``cpu_ok`` whether the shape is small enough for a CPU, ``cuda_ok``
    whether it is worth a GPU's time (the CPU-sized ones are not)."""

    name: str
    config: dict = field(hash=False)
    batch: int
    size: int
    tiled_size: int
    tile_size: int
    tiled_devices: tuple[str, ...] = ()
    cpu_ok: bool = True
    cuda_ok: bool = True


PAPER = {"in_channels": 1, "num_classes": 2, "base_channels": 64, "depth": 5}
HALF_WIDTH = dict(PAPER, base_channels=32)
QUARTER_WIDTH = dict(PAPER, base_channels=16)
TINY = {"in_channels": 1, "num_classes": 2, "base_channels": 8, "depth": 3}

QUICK_SHAPES = (
    Shape("tiny-d3-w8-92-b1", TINY, batch=1, size=92, tiled_size=150, tile_size=92, tiled_devices=("cpu", "cuda")),
)
# Most important first: a time budget cuts cases from the end.
STANDARD_SHAPES = (
    Shape("paper-572-b8", PAPER, batch=8, size=572, tiled_size=4096, tile_size=572, tiled_devices=("cuda",), cpu_ok=False),
    Shape("paper-572-b1", PAPER, batch=1, size=572, tiled_size=4096, tile_size=572, tiled_devices=("cpu",)),
    Shape("w32-572-b8", HALF_WIDTH, batch=8, size=572, tiled_size=4096, tile_size=572, cpu_ok=False),
    # the narrower models at batch 1: what CPU training and a first hour on a laptop run
    Shape("w32-572-b1", HALF_WIDTH, batch=1, size=572, tiled_size=4096, tile_size=572, cuda_ok=False),
    Shape("w16-572-b1", QUARTER_WIDTH, batch=1, size=572, tiled_size=4096, tile_size=572, cuda_ok=False),
)
CPU_TILED_SIZE = 768
CPU_SKIP_REASON = "batch 8 at 572x572 takes minutes per step on a CPU; run it on a GPU"
CUDA_SKIP_REASON = "a CPU-sized case (batch 1, narrow model): the GPU runs the batch-8 shapes"


@dataclass
class Plan:
    """The resolved set of cases and how to time them."""

    device: str
    quick: bool
    full: bool
    providers: tuple[str, ...]
    modes: tuple[str, ...]
    dtypes: tuple[str, ...]
    shapes: tuple[Shape, ...]
    compile_mode: str | None
    warmup: int
    rounds: int
    min_sample_ms: float
    time_budget_s: float | None
    cudnn_benchmark: bool


def make_plan(
    device: str,
    *,
    quick: bool,
    full: bool,
    providers: tuple[str, ...] | None = None,
    modes: tuple[str, ...] | None = None,
    dtypes: tuple[str, ...] | None = None,
    shapes: tuple[str, ...] | None = None,
    time_budget_s: float | None = None,
) -> Plan:
    """The cases for a device ("cpu" or "cuda") and preset; the optional tuples restrict them
    (ValueError for unknown names; an empty ``modes`` runs no model case, only the op benchmarks)."""
    all_shapes = QUICK_SHAPES if quick else STANDARD_SHAPES
    known_shapes = {shape.name: shape for shape in QUICK_SHAPES + STANDARD_SHAPES}
    for name, chosen, allowed in (
        ("providers", providers, PROVIDERS), ("modes", modes, MODES), ("dtypes", dtypes, DTYPES),
        ("shapes", shapes, tuple(known_shapes)),
    ):
        unknown = [item for item in chosen or () if item not in allowed]
        if unknown:
            raise ValueError(f"unknown {name} {unknown}; choose from {list(allowed)}")
    if shapes:
        all_shapes = tuple(known_shapes[name] for name in shapes)
    on_cuda = device == "cuda"
    compile_mode = "max-autotune" if full and on_cuda else "default"
    return Plan(
        device=device,
        quick=quick,
        full=full,
        providers=PROVIDERS if providers is None else tuple(providers),
        modes=MODES if modes is None else tuple(modes),
        # bf16 first on CUDA: it is the case that matters there, and a time budget cuts from the end.
        dtypes=tuple(dtypes or (("fp32",) if quick else ("bf16", "fp32") if on_cuda else DTYPES)),
        shapes=all_shapes,
        compile_mode=compile_mode,
        # The paper's model takes seconds per call on a CPU: fewer repeats there.
        warmup=3 if on_cuda else (2 if quick else 1),
        rounds=10 if on_cuda else (5 if quick else 3),
        min_sample_ms=25.0 if on_cuda else (20.0 if quick else 50.0),
        time_budget_s=time_budget_s,
        cudnn_benchmark=on_cuda,
    )

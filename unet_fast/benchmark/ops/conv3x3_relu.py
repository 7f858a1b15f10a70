"""Benchmark: the fused conv3x3_relu against F.conv2d + bias + ReLU (+ cat + max_pool2d), per U-Net shape.

    python benchmarks/bench_conv3x3_relu.py --dtype bf16 --batch 1 --batch 8 --json benchmarks/results/conv3x3_h100.json

(or ``python -m unet_fast.benchmark.ops.conv3x3_relu`` where the package is installed).

Every 3x3 conv of the paper's U-Net at a 572x572 input (or --size), forward ("fwd") and forward +
backward ("fwdbwd"), for three providers on channels_last tensors:

- fused:   ``unet_fast.ops.conv3x3_relu(..., backend="triton")`` (crop-concat and pool inside);
- auto:    ``backend="auto"``: per shape and pass the faster of the Triton kernels and cuDNN (timed
           once on first use; the row's "backend" says which ran, e.g. "fwd:triton bwd:aten");
- eager:   ``cat(center_crop(skip), x)`` -> ``F.conv2d`` (cuDNN, bias included) -> ``relu`` (-> ``max_pool2d``);
- compile: the eager function under ``torch.compile(mode="max-autotune")``.

Reported per shape: milliseconds (triton.testing.do_bench, median), TFLOP/s (2 FLOP per MAC; the
backward adds the weight gradient and, where the input needs one, the input gradient), the bytes
each provider must move at least (a traffic model: each tensor an op reads or writes counted once),
the speedup of fused over eager and over compile, and which backend the fused op ran. A summary
sums the times over all shapes. Without CUDA (or with --device cpu) the script says so and times
one tiny shape of the "torch" backend on the CPU, which only checks that the script runs.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from unet_fast.ops import conv3x3_relu
from unet_fast.reference.functional import center_crop
from unet_fast.shapes import level_sizes

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PROVIDERS = ("fused", "auto", "eager", "compile")
MODES = ("fwd", "fwdbwd")


@dataclass(frozen=True)
class ConvShape:
    """One 3x3 conv of the U-Net: x (batch, c1, size, size), skip (batch, c0, skip_size, skip_size)."""

    name: str
    batch: int
    c0: int
    c1: int
    c_out: int
    size: int
    skip_size: int
    pool: bool
    input_grad: bool  # False for the first layer: the image needs no gradient

    @property
    def out_size(self) -> int:
        return self.size - 2

    def macs(self) -> int:
        return self.batch * self.out_size**2 * self.c_out * (self.c0 + self.c1) * 9


def unet_conv_shapes(size: int, batch: int, base: int = 64, depth: int = 5, in_channels: int = 1) -> list[ConvShape]:
    """The 3x3 convs of the paper's U-Net (valid padding) for a size x size input."""
    levels = level_sizes(size, depth, "valid")
    if levels is None:
        raise ValueError(f"{size} is not a valid input size for a depth-{depth} valid U-Net")
    shapes = []
    level_input, previous = size, in_channels
    for level in range(depth):
        channels = base * 2**level
        pool = level < depth - 1
        shapes.append(ConvShape(f"enc{level}.conv1", batch, 0, previous, channels, level_input, level_input, False, level > 0))
        shapes.append(ConvShape(f"enc{level}.conv2", batch, 0, channels, channels, level_input - 2, level_input - 2, pool, True))
        level_input, previous = (level_input - 4) // 2, channels
    for level in range(depth - 2, -1, -1):
        channels = base * 2**level
        x_size = 2 * levels[level + 1][1]
        shapes.append(ConvShape(f"dec{level}.conv1", batch, channels, channels, channels, x_size, levels[level][0], False, True))
        shapes.append(ConvShape(f"dec{level}.conv2", batch, 0, channels, channels, x_size - 2, x_size - 2, False, True))
    return shapes


def make_tensors(shape: ConvShape, dtype, device, grad: bool):
    def rand(*dims, requires_grad=grad):
        t = torch.randn(*dims, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        return t.requires_grad_(requires_grad)

    x = rand(shape.batch, shape.c1, shape.size, shape.size, requires_grad=grad and shape.input_grad)
    skip = rand(shape.batch, shape.c0, shape.skip_size, shape.skip_size) if shape.c0 else None
    weight = (torch.randn(shape.c_out, shape.c0 + shape.c1, 3, 3, device=device, dtype=dtype) * 0.05).requires_grad_(grad)
    bias = torch.zeros(shape.c_out, device=device, dtype=dtype).requires_grad_(grad)
    return x, skip, weight, bias


def eager_block(x, weight, bias, skip, pool: bool):
    inputs = x if skip is None else torch.cat([center_crop(skip, tuple(x.shape[-2:])), x], dim=1)
    y = F.relu(F.conv2d(inputs, weight, bias))
    return (y, F.max_pool2d(y, 2)) if pool else (y,)


def fused_block(backend: str):
    def run(x, weight, bias, skip, pool: bool):
        out = conv3x3_relu(x, weight, bias, skip=skip, pool=pool, backend=backend)
        return out if pool else (out,)

    return run


def flops(shape: ConvShape, mode: str) -> int:
    passes = 1 if mode == "fwd" else (3 if shape.input_grad else 2)
    return 2 * shape.macs() * passes


def traffic_bytes(shape: ConvShape, mode: str, provider: str, itemsize: int) -> int:
    """Bytes a provider must move at least: every tensor each of its kernels reads or writes, once."""
    n, o = shape.batch, shape.out_size
    x = n * shape.c1 * shape.size**2
    crop = n * shape.c0 * shape.size**2
    skip = n * shape.c0 * shape.skip_size**2
    weight = shape.c_out * (shape.c0 + shape.c1) * 9 + shape.c_out
    y = n * shape.c_out * o * o
    pooled = y // 4 if shape.pool else 0
    if provider == "fused":
        forward = x + crop + weight + y + pooled
        # backward: read grad_y, grad_pooled and y (mask, argmax), x and skip again, write the gradients
        backward = y + pooled + y + (x + crop) * (2 if shape.input_grad else 1) + weight + (skip - crop)
        if shape.pool:
            backward += 2 * y  # the pool-routing pass writes g, which dgrad and wgrad read
    else:
        concat = 2 * (x + crop) if shape.c0 else 0  # cat reads both parts and writes the concatenation
        forward = concat + x + crop + weight + y + 2 * y  # conv writes the pre-activation, ReLU reads it, writes y
        if shape.pool:
            forward += y + pooled + pooled * 8 // itemsize  # max_pool2d reads y, writes pooled and int64 indices
        backward = 2 * y + y + (x + crop) * (2 if shape.input_grad else 1) + weight
        if shape.pool:
            backward += pooled + pooled * 8 // itemsize + y  # pool backward: grad_pooled, indices, writes grad_y
        if shape.c0:
            backward += 2 * (x + crop) + skip  # split the concatenation's gradient, pad the skip's
    total = forward if mode == "fwd" else forward + backward
    return total * itemsize


def time_ms(fn, device) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100))
    fn()
    start, reps = time.perf_counter(), 5
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def measure(block, shape: ConvShape, mode: str, dtype, device) -> float:
    x, skip, weight, bias = make_tensors(shape, dtype, device, grad=mode == "fwdbwd")
    if mode == "fwd":
        with torch.no_grad():
            return time_ms(lambda: block(x, weight, bias, skip, shape.pool), device)
    inputs = [t for t in (x, skip, weight, bias) if t is not None and t.requires_grad]
    out = block(x, weight, bias, skip, shape.pool)
    grads = [torch.randn_like(o) for o in out]

    def step():
        outputs = block(x, weight, bias, skip, shape.pool)
        torch.autograd.grad(outputs, inputs, grads)

    return time_ms(step, device)


# --quick: one shape per kind (pooled encoder conv, deep conv, decoder conv with crop-concat)
QUICK_LAYERS = ("enc0.conv2", "enc3.conv1", "dec1.conv1")


def run(args) -> dict:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_conv3x3_relu: --device cuda, but no CUDA device is available")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    if device.type == "cuda":
        shapes = [s for batch in args.batch for s in unet_conv_shapes(args.size, batch)]
        if args.quick:
            shapes = [s for s in shapes if s.name in QUICK_LAYERS]
        blocks = {"fused": fused_block("triton"), "auto": fused_block("auto"), "eager": eager_block}
        if "compile" in args.providers and not args.quick:
            blocks["compile"] = torch.compile(eager_block, mode="max-autotune", dynamic=False)
        fused_backend = "triton"
    else:
        print("bench_conv3x3_relu: no CUDA device; timing one tiny shape of the torch backend on the CPU "
              "(checks that the script runs; the numbers mean nothing)", file=sys.stderr)
        shapes = [ConvShape("cpu.tiny", 1, 8, 8, 8, 18, 22, True, True)]
        blocks = {"fused": fused_block("torch"), "eager": eager_block}
        fused_backend, dtype = "torch", torch.float32
    providers = [p for p in args.providers if p in blocks]
    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = []
    for shape in shapes:
        if args.layers and not any(part in shape.name for part in args.layers):
            continue
        for mode in args.modes:
            times = {p: measure(blocks[p], shape, mode, dtype, device) for p in providers}
            for provider, ms in times.items():
                row = {
                    **asdict(shape), "mode": mode, "provider": provider, "dtype": str(dtype).replace("torch.", ""), "ms": ms,
                    "tflops": flops(shape, mode) / ms / 1e9,
                    "bytes": traffic_bytes(shape, mode, "fused" if provider == "fused" else "eager", itemsize),
                    "backend": _backend_label(provider, fused_backend, shape, device),
                }
                for other in ("eager", "compile"):
                    if provider in ("fused", "auto") and other in times:
                        row[f"speedup_vs_{other}"] = times[other] / ms
                rows.append(row)
                print(f"{shape.name:>10} b={shape.batch} {mode:>6} {provider:>7}: {ms:8.3f} ms "
                      f"{row['tflops']:7.1f} TFLOP/s {row['bytes'] / 1e6:9.1f} MB"
                      + "".join(f"  x{row[k]:.2f} vs {k[11:]}" for k in row if k.startswith("speedup_vs_")))
    summary = {}
    for batch in sorted({r["batch"] for r in rows}):
        for mode in args.modes:
            total = {p: sum(r["ms"] for r in rows if r["batch"] == batch and r["mode"] == mode and r["provider"] == p)
                     for p in providers}
            entry = {f"{p}_ms": t for p, t in total.items()}
            for fused in ("fused", "auto"):
                for other in ("eager", "compile"):
                    if other in total and total.get(fused):
                        entry[f"{fused}_speedup_vs_{other}"] = total[other] / total[fused]
            summary[f"batch{batch}.{mode}"] = entry
            print(f"sum b={batch} {mode}: " + ", ".join(f"{k}={v:.3f}" for k, v in entry.items()))
    return {
        "benchmark": "conv3x3_relu",
        "environment": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "triton": _triton_version(), "dtype": str(dtype).replace("torch.", ""),
            "size": args.size, "cudnn_conv_tf32": _tf32_setting(),
        },
        "results": rows,
        "summary": summary,
    }


def _backend_label(provider: str, fused_backend: str, shape: ConvShape, device) -> str:
    if provider == "fused":
        return fused_backend
    if provider != "auto":
        return "cudnn" if device.type == "cuda" else "aten"
    from unet_fast.ops.backend import chosen_backends

    x_shape = (shape.batch, shape.c1, shape.size, shape.size)
    weight_shape = (shape.c_out, shape.c0 + shape.c1, 3, 3)
    picks = {key[0]: choice for key, choice in chosen_backends().items() if key[1] == x_shape and key[3] == weight_shape}
    return " ".join(f"{stage}:{picks[stage]}" for stage in ("forward", "backward") if stage in picks) or "triton"


def _triton_version():
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _tf32_setting() -> bool:
    from unet_fast.ops._numerics import conv_allows_tf32

    return conv_allows_tf32()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (repeatable; default 1 and 8)")
    parser.add_argument("--size", type=int, default=572, help="U-Net input size (default 572)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--layers", nargs="+", help="only shapes whose name contains one of these, e.g. enc0 dec3.conv1")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available; cpu runs a tiny smoke shape")
    parser.add_argument("--quick", action="store_true", help=f"batch 1, shapes {', '.join(QUICK_LAYERS)}, no torch.compile")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.batch = args.batch or ([1] if args.quick else [1, 8])
    report = run(args)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

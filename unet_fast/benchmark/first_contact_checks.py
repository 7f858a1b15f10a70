"""First-contact checks: every Triton kernel family against float64 PyTorch on the paper model's
layer shapes, the whole model against the reference, the CUDA elastic warp against its CPU twin,
and compute-sanitizer memcheck on the CUDA C++ ops' tests.

Rule of the numerics: an op's relative error ||ours - ref|| / ||ref|| against float64 (computed
from the same rounded inputs) is at most twice PyTorch's own error in the same dtype, plus a floor
of 8 units of fp32 roundoff (8 * 2**-24; the kernels accumulate in fp32) where PyTorch happens to be
almost exact: a bias gradient summed over a few hundred pixels can come out of PyTorch within one
rounding, and the kernels' blocked order of the same sum within a few (about log2 of the terms). Outputs are
poisoned (the caching allocator's free memory filled with NaN) before each launch on CUDA, so an
element the kernel never wrote is NaN and fails; NaN never passes.
"""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

KERNEL_DTYPES = ("bf16", "fp16", "tf32", "fp32")
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "fp32": torch.float32}
FP32_FLOOR = 8 * 2.0**-24
PAPER = {"in_channels": 1, "num_classes": 2, "base_channels": 64, "depth": 5}
DRY_RUN = {"in_channels": 1, "num_classes": 2, "base_channels": 4, "depth": 2}
PAPER_SIZE, DRY_RUN_SIZE = 572, 20
INTERPRETER_SKIP = {
    "bf16": "bf16 is unreliable in Triton's interpreter (numpy has no bfloat16); checked on the GPU only",
    "tf32": "tf32 rounds on tensor cores; the interpreter computes fp32 dots (the fp32 step covers them)",
}


def _device(context: dict) -> torch.device:
    return torch.device("cpu" if context["dry_run"] else "cuda")


def model_size(context: dict) -> tuple[dict, int]:
    """The model configuration and input side of the checks: the paper's at 572, or the dry run's."""
    return (DRY_RUN, DRY_RUN_SIZE) if context["dry_run"] else (PAPER, PAPER_SIZE)


@contextlib.contextmanager
def fp32_precision(tf32: bool):
    """cuDNN convolutions and matmuls (so the Triton dots too, which follow them) in TF32 or IEEE fp32."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def poison(device: torch.device, nbytes: int) -> bool:
    """Fills ``nbytes`` of the CUDA caching allocator's free memory with NaN, so the next outputs
    (``torch.empty`` reuses those blocks) read NaN wherever a kernel does not write. False on CPU."""
    if device.type != "cuda":
        return False
    block = torch.empty(max(nbytes // 4, 1) + 1024, device=device, dtype=torch.float32).fill_(float("nan"))
    del block
    return True


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| in float64; inf when value has a non-finite element."""
    value = value.detach().double()
    if not bool(torch.isfinite(value).all()):
        return math.inf
    scale = reference.norm().item()
    return (value - reference).norm().item() / (scale if scale > 0 else 1.0)


def verdict(ours: float, torch_own: float) -> tuple[bool, float]:
    """(passes, the limit): at most twice PyTorch's error, which counts as at least ``FP32_FLOOR``."""
    limit = 2.0 * max(torch_own, FP32_FLOOR)
    return ours <= limit, limit


def _compare(results: dict, family: str, layer: str, ours: torch.Tensor, own: torch.Tensor,
             reference: torch.Tensor) -> None:
    """Adds one comparison to ``results[family]``: worst ratio to the limit, failures by layer."""
    error, own_error = relative_error(ours, reference), relative_error(own, reference)
    passes, limit = verdict(error, own_error)
    entry = results.setdefault(family, {"checked": 0, "worst_ratio": 0.0, "worst_layer": None, "failures": []})
    entry["checked"] += 1
    ratio = error / limit
    if ratio >= entry["worst_ratio"]:
        entry.update(worst_ratio=round(ratio, 4), worst_layer=layer, worst_error=error, torch_error=own_error)
    if not passes:
        entry["failures"].append({"layer": layer, "error": error, "torch_error": own_error})


def _rand(shape, dtype, device, generator, scale=1.0) -> torch.Tensor:
    t = (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)
    return t.to(device).contiguous(memory_format=torch.channels_last) if len(shape) == 4 else t.to(device)


def _conv3x3_layer(shape, dtype: str, device, generator) -> dict:
    """Forward, input gradient and weight gradient of one conv3x3_relu layer: ours, PyTorch's in the
    same dtype (``eager_block``), and float64 (the reference)."""
    from unet_fast.benchmark.ops.conv3x3_relu import eager_block
    from unet_fast.ops import conv3x3_relu

    torch_dtype = _TORCH_DTYPES[dtype]
    fan_in = (shape.c0 + shape.c1) * 9
    x = _rand((shape.batch, shape.c1, shape.size, shape.size), torch_dtype, device, generator)
    skip = _rand((shape.batch, shape.c0, shape.skip_size, shape.skip_size), torch_dtype, device, generator) if shape.c0 else None
    weight = _rand((shape.c_out, shape.c0 + shape.c1, 3, 3), torch_dtype, device, generator, fan_in**-0.5)
    bias = _rand((shape.c_out,), torch_dtype, device, generator, 0.1)
    out = shape.out_size
    grad_y = _rand((shape.batch, shape.c_out, out, out), torch_dtype, device, generator)
    grad_p = _rand((shape.batch, shape.c_out, out // 2, out // 2), torch_dtype, device, generator) if shape.pool else None
    inputs = [x, weight, bias] + ([skip] if skip is not None else [])

    def run(block, tensors, grads):
        xs, ws, bs, *rest = [t.detach().requires_grad_() for t in tensors]
        outputs = block(xs, ws, bs, rest[0] if rest else None, shape.pool)
        poison(device, sum(t.numel() * t.element_size() for t in (xs, ws) + tuple(rest)))
        torch.autograd.backward(list(outputs), [g.to(outputs[0].dtype) for g in grads])
        return {"forward": outputs, "input_grad": [xs.grad] + [r.grad for r in rest], "weight_grad": [ws.grad, bs.grad]}

    def fused(xs, ws, bs, sk, pool):
        poison(device, 4 * shape.batch * shape.c_out * out * out * torch.finfo(torch_dtype).bits // 8)
        result = conv3x3_relu(xs, ws, bs, skip=sk, pool=pool, backend="triton")
        return result if pool else (result,)

    grads = [grad_y] + ([grad_p] if grad_p is not None else [])
    with fp32_precision(dtype == "tf32"):
        ours, own = run(fused, inputs, grads), run(eager_block, inputs, grads)
    with fp32_precision(False):
        reference = run(eager_block, [t.double() for t in inputs], [g.double() for g in grads])
    return {"ours": ours, "own": own, "reference": reference}


def _pixel_gemm_layer(kind: str, c_in: int, c_out: int, side: int, dtype: str, device, generator) -> dict:
    """Forward, input gradient and weight gradient of upconv2x2 or conv1x1: ours, PyTorch's, float64."""
    from unet_fast import ops

    torch_dtype = _TORCH_DTYPES[dtype]
    x = _rand((1, c_in, side, side), torch_dtype, device, generator)
    if kind == "upconv2x2":
        weight = _rand((c_in, c_out, 2, 2), torch_dtype, device, generator, c_in**-0.5)
        torch_op = lambda xs, ws, bs: F.conv_transpose2d(xs, ws, bs, stride=2)  # noqa: E731
        fused_op = lambda xs, ws, bs: ops.upconv2x2(xs, ws, bs, backend="triton")  # noqa: E731
        out_side = 2 * side
    else:
        weight = _rand((c_out, c_in, 1, 1), torch_dtype, device, generator, c_in**-0.5)
        torch_op = F.conv2d
        fused_op = lambda xs, ws, bs: ops.conv1x1(xs, ws, bs, backend="triton")  # noqa: E731
        out_side = side
    bias = _rand((c_out,), torch_dtype, device, generator, 0.1)
    grad_y = _rand((1, c_out, out_side, out_side), torch_dtype, device, generator)

    def run(op, tensors, grad):
        xs, ws, bs = [t.detach().requires_grad_() for t in tensors]
        poison(device, grad.numel() * grad.element_size() * 2)
        y = op(xs, ws, bs)
        y.backward(grad.to(y.dtype))
        return {"forward": [y], "input_grad": [xs.grad], "weight_grad": [ws.grad, bs.grad]}

    with fp32_precision(dtype == "tf32"):
        ours, own = run(fused_op, (x, weight, bias), grad_y), run(torch_op, (x, weight, bias), grad_y)
    with fp32_precision(False):
        reference = run(torch_op, [t.double() for t in (x, weight, bias)], grad_y.double())
    return {"ours": ours, "own": own, "reference": reference}


def kernel_numerics(dtype: str):
    """The step checking every Triton kernel family in ``dtype`` on the model's layer shapes."""

    def step(context: dict) -> dict:
        if context["dry_run"] and dtype in INTERPRETER_SKIP:
            return {"status": f"skipped: dry run: {INTERPRETER_SKIP[dtype]}"}
        from unet_fast.benchmark.flops import unet_layers
        from unet_fast.benchmark.ops.conv3x3_relu import unet_conv_shapes

        os.environ["UNET_FAST_AUTOTUNE"] = "0"  # each kernel compiles its default tile once
        device, generator = _device(context), torch.Generator().manual_seed(13)
        config, size = model_size(context)
        results: dict = {}
        for shape in unet_conv_shapes(size, 1, base=config["base_channels"], depth=config["depth"],
                                      in_channels=config["in_channels"]):
            layer = _conv3x3_layer(shape, dtype, device, generator)
            for family, prefix in (("forward", "conv3x3_forward"), ("input_grad", "conv3x3_input_grad"),
                                   ("weight_grad", "conv3x3_weight_grad")):
                for index, reference in enumerate(layer["reference"][family]):
                    if reference is None:  # the first layer's image gets no gradient
                        continue
                    _compare(results, prefix, f"{shape.name}[{index}]", layer["ours"][family][index],
                             layer["own"][family][index], reference)
        for layer in unet_layers(config, size, size):
            if layer.kind not in ("upconv2x2", "conv1x1"):
                continue
            side = math.isqrt(layer.pixels)
            tensors = _pixel_gemm_layer(layer.kind, layer.in_channels, layer.out_channels, side, dtype, device, generator)
            for family in ("forward", "input_grad", "weight_grad"):
                for index, reference in enumerate(tensors["reference"][family]):
                    _compare(results, f"{layer.kind}_{family}", f"{layer.name}[{index}]",
                             tensors["ours"][family][index], tensors["own"][family][index], reference)
        failures = sum(len(entry["failures"]) for entry in results.values())
        worst = max(results.values(), key=lambda entry: entry["worst_ratio"])
        return {
            "status": "ok" if not failures else f"failed: {failures} comparisons over the limit",
            "families": results, "poisoned": device.type == "cuda",
            "headline": f"worst error/limit {worst['worst_ratio']:.2f} ({worst['worst_layer']})",
        }

    return step


def model_numerics(dtype: str):
    """The step comparing ``unet_fast.UNet`` (backend "triton") with the reference U-Net: logits and
    every parameter gradient, under bf16 autocast or in IEEE fp32."""

    def step(context: dict) -> dict:
        if context["dry_run"] and dtype == "bf16":
            return {"status": f"skipped: dry run: {INTERPRETER_SKIP['bf16']}"}
        from unet_fast.model import UNet
        from unet_fast.reference import UNet as ReferenceUNet

        os.environ["UNET_FAST_AUTOTUNE"] = "0"
        device = _device(context)
        config, size = model_size(context)
        torch.manual_seed(0)
        reference = ReferenceUNet(**config).to(device).eval()
        ours = UNet(**config, backend="triton").to(device).eval()
        ours.load_state_dict(reference.state_dict())
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(1, config["in_channels"], size, size, generator=generator).to(device)
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext())

        def run(model, inputs, cast):
            model.zero_grad(set_to_none=True)
            with cast:
                logits = model(inputs)
            grad = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
            logits.backward(grad.to(device, logits.dtype))
            return {"logits": logits.detach(), **{name: p.grad for name, p in model.named_parameters()}}

        with fp32_precision(False):
            poison(device, 1 << 30)
            got, own = run(ours, x, autocast), run(reference, x, autocast)
            reference64 = run(reference.double(), x.double(), contextlib.nullcontext())
        results: dict = {}
        for name, value in reference64.items():
            family = "logits" if name == "logits" else "parameter_grads"
            _compare(results, family, name, got[name], own[name], value)
        failures = sum(len(entry["failures"]) for entry in results.values())
        worst = max(results.values(), key=lambda entry: entry["worst_ratio"])
        return {"status": "ok" if not failures else f"failed: {failures} tensors over the limit", "families": results,
                "headline": f"worst error/limit {worst['worst_ratio']:.2f} ({worst['worst_layer']})"}

    return step


def elastic_warp_twins(context: dict) -> dict:
    """The CUDA elastic warp against its CPU twin on one batch (bilinear image, nearest label)."""
    if context["dry_run"]:
        return {"status": "skipped: dry run: no CUDA device (the CPU twin is the reference of this check)"}
    from unet_fast.ops import elastic_warp

    generator = torch.Generator().manual_seed(3)
    image = torch.rand(4, 1, 512, 512, generator=generator)
    label = torch.randint(0, 2, (4, 512, 512), generator=generator)
    displacement = torch.randn(4, 2, 3, 3, generator=generator) * 10
    cpu = elastic_warp(image, displacement, label=label)
    cuda = elastic_warp(image.cuda(), displacement.cuda(), label=label.cuda())
    image_error = (cuda[0].cpu() - cpu[0]).abs().max().item()
    label_mismatch = int((cuda[1].cpu() != cpu[1]).sum())
    # fp32 bilinear: coordinates ~512 carry ~3e-5 px of rounding, so samples differ by about that
    ok = image_error <= 1e-4 and label_mismatch <= 4 * 16  # labels may flip where a source is a tie
    return {"status": "ok" if ok else "failed: CUDA and CPU warps differ",
            "image_max_abs_diff": image_error, "label_mismatches": label_mismatch,
            "headline": f"max |diff| {image_error:.2e}, {label_mismatch} label flips"}


def memcheck(context: dict) -> dict:
    """compute-sanitizer memcheck on the GPU tests of the CUDA C++ ops (center_crop_concat,
    elastic_warp); a recorded skip where the tool is missing or refuses the device."""
    if context["dry_run"]:
        return {"status": "skipped: dry run: compute-sanitizer needs a CUDA device"}
    tool = next((path for path in (os.environ.get("COMPUTE_SANITIZER"), "/usr/local/cuda/bin/compute-sanitizer")
                 if path and Path(path).is_file()), None) or _which("compute-sanitizer")
    if tool is None:
        return {"status": "skipped: compute-sanitizer not found (PATH, /usr/local/cuda/bin)"}
    root = Path(__file__).resolve().parents[2]
    tests = sorted(str(p) for pattern in ("test_*crop_concat*.py", "test_elastic_warp*.py")
                   for p in (root / "tests" / "ops").glob(pattern))
    if not tests:
        return {"status": "skipped: the op tests are not in this tree (tests/ops)"}
    log = Path(context["outdir"]) / "memcheck.log"
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    # --import-mode=append: the installed unet_fast (wheel) wins over the tree's sources
    command = [tool, "--tool", "memcheck", "--error-exitcode", "99", sys.executable, "-m", "pytest", "-q",
               "-p", "no:cacheprovider", "--import-mode=append", "-m", "gpu", "--rootdir", str(root), *tests]
    with log.open("w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=context["outdir"]).returncode
    tail = log.read_text(errors="replace")[-3000:]
    if code != 0 and "not supported" in tail.lower():
        return {"status": "skipped: compute-sanitizer does not support this device (memcheck.log)", "exit_code": code}
    status = "ok" if code == 0 else f"failed: exit code {code} (memcheck.log)"
    return {"status": status, "exit_code": code, "tests": [Path(t).name for t in tests], "headline": tail.strip().splitlines()[-1][:60] if tail.strip() else ""}


def _which(name: str) -> str | None:
    from shutil import which

    return which(name)


def environment(context: dict) -> dict:
    """Device, commit and versions (``unet_fast.benchmark.environment.describe``), the per-block
    shared-memory limit, and how many Triton kernels the GPU run compiles."""
    from unet_fast.benchmark.environment import describe
    from unet_fast.tools.launch_trace import triton_kernel_count

    device = _device(context)
    record = describe(device)
    if device.type == "cuda":
        record["shared_memory_per_block_optin"] = torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    record["triton_kernels"] = triton_kernel_count()
    record["status"] = "ok"
    return record

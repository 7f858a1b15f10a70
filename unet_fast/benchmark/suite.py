"""Runs a plan of model cases (and the op benchmarks) and returns the result document."""
from __future__ import annotations

import gc
import time
from typing import Callable

import torch

from unet_fast.benchmark import measure
from unet_fast.benchmark.cases import BASELINE, CPU_SKIP_REASON, CUDA_SKIP_REASON, Plan, Shape
from unet_fast.benchmark.environment import describe
from unet_fast.benchmark.flops import forward_flops, train_step_flops
from unet_fast.benchmark.ops import run_op_benchmarks
from unet_fast.benchmark.providers import (
    Skip, build_model, make_runnable, predict_tiled_function, reference_model, tiled_image_size,
)
from unet_fast.benchmark.schema import SCHEMA_VERSION

MIB = 2**20


def device_peaks(device: torch.device, quick: bool) -> dict:
    """Measured in this run: dense matmul throughput (bf16 8192^3 on CUDA; fp32 on CPU, where
    bf16 matmuls are not what a CPU is built for) and copy bandwidth."""
    if device.type == "cuda":
        matmul = measure.matmul_peak(device, torch.bfloat16, 8192)
        copy = measure.copy_bandwidth(device, 2**30)
    else:
        matmul = measure.matmul_peak(device, torch.float32, 512 if quick else 2048, rounds=3 if quick else 5)
        copy = measure.copy_bandwidth(device, (64 if quick else 512) * MIB, rounds=3 if quick else 5)
    return {"matmul": matmul, "copy": copy}


def _case_fields(mode: str, shape: Shape, dtype: str, device: torch.device) -> dict:
    size = tiled_image_size(shape, device) if mode == "inference-tiled" else shape.size
    batch = 1 if mode == "inference-tiled" else shape.batch
    return {
        "kind": "model", "mode": mode, "shape": shape.name, "dtype": dtype, "config": dict(shape.config),
        "batch": batch, "height": size, "width": size,
    }


def _flops(mode: str, shape: Shape) -> int | None:
    if mode == "forward":
        return forward_flops(shape.config, shape.size, shape.size, shape.batch)
    if mode == "train-step":
        return train_step_flops(shape.config, shape.size, shape.size, shape.batch)
    return None  # the tile count is predict_tiled's choice


def _blank(provider: str, base: dict, status: str, reason: str | None) -> dict:
    return dict(
        base, provider=provider, status=status, reason=reason, ms=None, ms_min=None, ms_max=None, ms_iqr=None,
        samples=0, calls_per_sample=0, flops=None, tflops=None, peak_fraction=None, throughput=None,
        throughput_unit=None, speedup=None, speedups=None, saved_bytes=None, memory=None,
    )


def run_case(mode: str, shape: Shape, dtype: str, plan: Plan, peaks: dict, skip_reason: str | None) -> list[dict]:
    """One record per provider for a (mode, shape, dtype) case."""
    device = torch.device(plan.device)
    base = _case_fields(mode, shape, dtype, device)
    if skip_reason is None and device.type == "cpu" and not shape.cpu_ok:
        skip_reason = CPU_SKIP_REASON
    if skip_reason is None and device.type == "cuda" and not shape.cuda_ok:
        skip_reason = CUDA_SKIP_REASON
    if skip_reason is None and mode == "inference-tiled" and device.type not in shape.tiled_devices:
        skip_reason = "inference-tiled is measured once per model and device (same image), on another shape"
    if skip_reason is None and mode == "inference-tiled":
        try:
            predict_tiled_function()
        except Skip as skip:
            skip_reason = str(skip)
    if skip_reason is not None:
        return [_blank(provider, base, "skipped", skip_reason) for provider in plan.providers]

    records: dict[str, dict] = {}
    runnables = {}
    reference = reference_model(shape, device)
    for provider in plan.providers:
        try:
            model = build_model(provider, reference, plan.compile_mode, plan.quick)
            runnables[provider] = make_runnable(mode, provider, model, shape, dtype, device)
        except Skip as skip:
            records[provider] = _blank(provider, base, "skipped", str(skip))
        except Exception as error:  # a provider that breaks is a result, not a crash
            records[provider] = _blank(provider, base, "error", f"{type(error).__name__}: {error}")

    timings, errors = measure.time_interleaved(
        {name: runnable.run for name, runnable in runnables.items()}, device,
        warmup=plan.warmup, rounds=plan.rounds, min_sample_ms=plan.min_sample_ms,
    )
    flops = _flops(mode, shape)
    for provider, runnable in runnables.items():
        if provider in errors:
            records[provider] = _blank(provider, base, "error", errors[provider])
            continue
        record = _blank(provider, base, "ok", None)
        record.update(timings[provider])
        ms = record["ms"]
        if flops is not None:
            record["flops"] = flops
            record["tflops"] = flops / ms / 1e9
            record["peak_fraction"] = record["tflops"] / peaks["matmul"]["tflops"]
        if mode == "inference-tiled":
            record["throughput"], record["throughput_unit"] = base["height"] * base["width"] / ms / 1e3, "Mpixel/s"
        else:
            record["throughput"], record["throughput_unit"] = shape.batch / ms * 1e3, "images/s"
        try:
            record["memory"] = measure.peak_memory(runnable.run, device)
        except Exception as error:
            record["memory"] = {"error": f"{type(error).__name__}: {error}"}
        if runnable.graph is not None:
            try:
                record["saved_bytes"] = measure.saved_tensor_bytes(runnable.graph, runnable.parameters)
            except Exception as error:
                record["memory"] = dict(record["memory"] or {}, saved_bytes_error=f"{type(error).__name__}: {error}")
        records[provider] = record
    timed = {provider: record["ms"] for provider, record in records.items() if record["status"] == "ok"}
    for record in records.values():
        if record["status"] == "ok":
            record["speedups"] = {other: ms / record["ms"] for other, ms in timed.items() if other != record["provider"]}
            if BASELINE in timed:
                record["speedup"] = timed[BASELINE] / record["ms"]
    return [records[provider] for provider in plan.providers]


def _release(device: torch.device, compiled: bool) -> None:
    """Frees a finished case's models, compiled code and cached device memory."""
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_suite(
    plan: Plan,
    *,
    ops: bool = True,
    log: Callable[[str], None] = print,
    checkpoint: Callable[[dict], None] | None = None,
) -> dict:
    """Runs every case of ``plan`` and, with ``ops``, the op benchmarks. Returns the JSON document
    described in ``unet_fast.benchmark.schema``. ``checkpoint``, when given, receives the document
    so far (``complete`` false) after every case, so that a run killed midway leaves its results."""
    previous = torch.backends.cudnn.benchmark
    # Fixed shapes: let cuDNN pick its fastest algorithms, as a tuned eager baseline would.
    torch.backends.cudnn.benchmark = plan.cudnn_benchmark
    try:
        return _run_suite(plan, ops, log, checkpoint or (lambda document: None))
    finally:
        torch.backends.cudnn.benchmark = previous


def _run_suite(plan: Plan, ops: bool, log: Callable[[str], None], checkpoint: Callable[[dict], None]) -> dict:
    started = time.monotonic()
    device = torch.device(plan.device)
    environment = describe(device)
    environment["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    environment["matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    log(f"unet_fast benchmark on {environment['device_name']} ({plan.device}), commit {environment['commit']}")
    peaks = device_peaks(device, plan.quick)
    log(
        f"measured peaks: {peaks['matmul']['dtype']} matmul {peaks['matmul']['tflops']:.2f} TFLOP/s, "
        f"copy {peaks['copy']['gbps']:.1f} GB/s"
    )
    document = {
        "schema_version": SCHEMA_VERSION,
        "complete": False,
        "environment": environment,
        "settings": {
            "quick": plan.quick, "full": plan.full, "device": plan.device, "compile_mode": plan.compile_mode,
            "providers": list(plan.providers), "modes": list(plan.modes), "dtypes": list(plan.dtypes),
            "shapes": [shape.name for shape in plan.shapes], "baseline": BASELINE, "warmup": plan.warmup,
            "rounds": plan.rounds, "min_sample_ms": plan.min_sample_ms, "time_budget_s": plan.time_budget_s,
            "cudnn_benchmark": plan.cudnn_benchmark, "ops": ops,
        },
        "peaks": peaks,
        "records": [],
        "op_benchmarks": [],
        "seconds": 0.0,
    }
    for dtype in plan.dtypes:
        for shape in plan.shapes:
            for mode in plan.modes:
                over = plan.time_budget_s is not None and time.monotonic() - started > plan.time_budget_s
                reason = f"time budget of {plan.time_budget_s:.0f} s exhausted before this case" if over else None
                if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
                    reason = reason or "this GPU has no bf16 support"
                case_started = time.monotonic()
                case = run_case(mode, shape, dtype, plan, peaks, reason)
                _release(device, compiled="reference-compile" in plan.providers)
                document["records"].extend(case)
                document["seconds"] = time.monotonic() - started
                checkpoint(document)
                summary = ", ".join(
                    f"{r['provider']} {r['ms']:.2f} ms" if r["status"] == "ok" else f"{r['provider']} {r['status']}"
                    for r in case
                )
                log(f"[{time.monotonic() - case_started:6.1f} s] {mode} {shape.name} {dtype}: {summary}")
    if ops:
        model_records = list(document["records"])

        def add_op_results(entries: list[dict], op_rows: list[dict]) -> None:
            for row in op_rows:
                # Memory-bound ops: achieved bandwidth against the copy bandwidth measured in this run.
                if "gbps" in row and "bandwidth_fraction" not in row:
                    row["bandwidth_fraction"] = row["gbps"] / peaks["copy"]["gbps"]
            document["op_benchmarks"] = entries
            document["records"] = model_records + op_rows
            document["seconds"] = time.monotonic() - started

        add_op_results(*run_op_benchmarks(
            plan.device, plan.quick, log, after_script=lambda *so_far: (add_op_results(*so_far), checkpoint(document))
        ))
    document["seconds"] = time.monotonic() - started
    document["complete"] = True
    return document

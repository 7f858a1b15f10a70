"""Timing and memory measurement shared by the model and op benchmarks.

Timing runs candidates interleaved: every round times each candidate once, in an order rotated
from round to round, so drift of a noisy machine (clock boost, other processes, thermal state)
hits every candidate alike and their ratios stay trustworthy. On CUDA a sample is the CUDA-event
time of ``inner`` back-to-back calls after a synchronisation; on CPU it is ``time.perf_counter``.
"""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Milliseconds per call of ``calls`` back-to-back calls."""
    synchronize(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls
    begin = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - begin) * 1e3 / calls


def summarize(samples: list[float]) -> dict:
    """Median, min, max and interquartile range (ms) of timing samples."""
    ordered = sorted(samples)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {
        "ms": statistics.median(ordered),
        "ms_min": ordered[0],
        "ms_max": ordered[-1],
        "ms_iqr": quartiles[2] - quartiles[0],
        "samples": len(ordered),
    }


def time_interleaved(
    candidates: dict[str, Callable[[], object]],
    device: torch.device,
    *,
    warmup: int,
    rounds: int,
    min_sample_ms: float,
) -> tuple[dict[str, dict], dict[str, str]]:
    """Times every candidate interleaved with the others.

    Each candidate is warmed up ``warmup`` times (compilation and autotuning happen there), then
    gets the number of calls per sample that makes a sample last at least ``min_sample_ms``.
    Returns (timings by name, see ``summarize``, with "calls_per_sample"; errors by name): a
    candidate that raises is dropped from the rounds and reported with its error.
    """
    errors: dict[str, str] = {}
    calls: dict[str, int] = {}
    for name, fn in candidates.items():
        try:
            for _ in range(max(warmup, 1)):
                fn()
            once = _time_calls(fn, 1, device)
        except Exception as error:  # a failing provider is a result, not a crash of the suite
            errors[name] = f"{type(error).__name__}: {error}"
            continue
        calls[name] = max(1, math.ceil(min_sample_ms / max(once, 1e-3)))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_index in range(rounds):
        shift = round_index % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            if name in errors:
                continue
            try:
                samples[name].append(_time_calls(candidates[name], calls[name], device))
            except Exception as error:
                errors[name] = f"{type(error).__name__}: {error}"
    timings = {}
    for name, values in samples.items():
        if name not in errors and values:
            timings[name] = dict(summarize(values), calls_per_sample=calls[name])
    return timings, errors


def saved_tensor_bytes(fn: Callable[[], object], exclude: list[torch.Tensor]) -> int:
    """Bytes of the unique storages autograd saves for backward while ``fn`` runs (``fn`` should
    build the graph, e.g. forward + loss, and keep it alive by returning the loss). Storages of the
    ``exclude`` tensors (the parameters) are not counted: they exist anyway."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in excluded and pointer not in seen:
            seen[pointer] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    del result
    return sum(seen.values())


def _read_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Resets the process's peak resident set size (Linux ``clear_refs``); False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size since the last reset (or since it started)."""
    kib = _read_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(fn: Callable[[], object], device: torch.device) -> dict:
    """Peak memory of one call of ``fn``: ``torch.cuda.max_memory_allocated`` after a reset on
    CUDA (``peak_bytes``, and ``peak_over_start_bytes`` above what was allocated before the call);
    the process's peak RSS on CPU (``peak_rss_bytes``; ``rss_before_bytes``, the RSS before the
    call; ``rss_reset``, whether the peak could be reset before the call, else it is the peak
    since the process started)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_bytes": int(peak), "peak_over_start_bytes": int(peak - start)}
    was_reset = reset_peak_rss()
    before = _read_status_kib("VmRSS")
    fn()
    return {
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_before_bytes": None if before is None else before * 1024,
        "rss_reset": was_reset,
    }


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, rounds: int = 10) -> dict:
    """Measured dense matmul throughput: median over ``rounds`` of a size^3 matmul, in TFLOP/s."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    timings, errors = time_interleaved(
        {"matmul": lambda: torch.mm(a, b)}, device, warmup=3, rounds=rounds,
        min_sample_ms=20.0 if device.type == "cuda" else 1.0,
    )
    if errors:
        raise RuntimeError(errors["matmul"])
    ms = timings["matmul"]["ms"]
    return {"dtype": str(dtype).replace("torch.", ""), "size": size, "ms": ms, "tflops": 2 * size**3 / ms / 1e9}


def copy_bandwidth(device: torch.device, nbytes: int, rounds: int = 10) -> dict:
    """Measured device copy bandwidth (bytes read + bytes written per second) of an ``nbytes``
    tensor copy, in GB/s."""
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    timings, errors = time_interleaved(
        {"copy": lambda: dst.copy_(src)}, device, warmup=3, rounds=rounds,
        min_sample_ms=20.0 if device.type == "cuda" else 1.0,
    )
    if errors:
        raise RuntimeError(errors["copy"])
    ms = timings["copy"]["ms"]
    moved = 2 * src.numel() * 4
    return {"bytes": int(moved), "ms": ms, "gbps": moved / ms / 1e6}

"""The benchmark JSON schema (version 1) and a dependency-free validator.

Top level (an object):

    schema_version   int, 1
    complete         bool: false in a file written while the run was still going (it was cut
                     short if it stays false)
    environment      object: date (ISO 8601 UTC), device_type ("cpu"|"cuda"), device_name,
                     device_slug (directory name for benchmarks/results/<slug>/), cpu_threads,
                     python, platform, torch, triton (str|null), cuda_runtime (str|null),
                     cudnn (int|null), unet_fast, extension (bool), extension_cuda_kernels (bool),
                     commit (str|null; "-dirty" suffix for uncommitted changes), commit_source
                     ("git", "env:UNET_FAST_COMMIT", "file:_commit.txt", "file:COMMIT" or
                     "unknown"), gpu_capability (str|null), gpu_memory_bytes (int|null),
                     cudnn_allow_tf32, matmul_allow_tf32 (bool: fp32 convs/matmuls may use TF32)
    settings         object: quick, full (bool), device, compile_mode (str|null), providers,
                     modes, dtypes, shapes (lists of str), baseline (the provider speedups are
                     relative to), warmup, rounds (int), min_sample_ms (number),
                     time_budget_s (number|null), ops, cudnn_benchmark (bool: cuDNN autotuning
                     on, as on CUDA)
    peaks            object: matmul {dtype, size, ms, tflops} (bf16 8192^3 on CUDA, fp32 on CPU)
                     and copy {bytes, ms, gbps} (bytes read + written per second), measured
                     in the same run
    records          list of records (below)
    op_benchmarks    list of {name (the op), module (unet_fast.benchmark.ops.<op>), status
                     ("ok"|"skipped"|"error"), reason (str|null), seconds, result (the op
                     benchmark's own JSON, or null)}
    seconds          number: wall time of the whole run

A record of kind "model" (one per provider x mode x shape x dtype):

    kind "model"; mode ("forward"|"train-step"|"inference-tiled"); shape (name); dtype
    ("fp32"|"bf16"); provider; config (reference UNet constructor arguments); batch, height,
    width (int: the timed input); status ("ok"|"skipped"|"error"); reason (str, null iff ok).
    When ok: ms (median per call), ms_min, ms_max, ms_iqr (number), samples,
    calls_per_sample (int); flops (int|null: analytic, see unet_fast.benchmark.flops),
    tflops, peak_fraction (of peaks.matmul; null without flops); throughput (number) and
    throughput_unit ("images/s" or "Mpixel/s"); speedup (baseline ms / this ms, null without an
    ok baseline); speedups (object: every other ok provider of the case -> its ms / this ms, e.g.
    speedups["reference-cl"] is the speedup over eager channels_last); saved_bytes (int|null: saved-for-backward bytes of unique storages,
    parameters excluded; train-step only); memory (object|null: peak_bytes and
    peak_over_start_bytes on CUDA, peak_rss_bytes, rss_before_bytes and rss_reset on
    CPU, or error;
    saved_bytes_error when saved bytes could not be counted). When not ok those are null/0.

A record of kind "op" (from an op benchmark's "records"):

    kind "op"; benchmark (the op benchmark's name); name; provider; dtype (str, may be ""); status;
    reason; when ok, ms (number); optional numbers tflops, gbps, bandwidth_fraction,
    peak_fraction, mpixel_per_s, flops, bytes, speedup and speedup_vs_<provider>; backend and
    mode (str); batch (int).
"""
from __future__ import annotations

import math

SCHEMA_VERSION = 1
STATUSES = ("ok", "skipped", "error")
MODES = ("forward", "train-step", "inference-tiled")
DTYPES = ("fp32", "bf16")

_STR, _INT, _NUM, _BOOL, _DICT, _LIST = "str", "int", "number", "bool", "object", "list"


def _is(value, kind: str, nullable: bool = False) -> bool:
    if value is None:
        return nullable
    if kind == _STR:
        return isinstance(value, str)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _DICT:
        return isinstance(value, dict)
    if kind == _LIST:
        return isinstance(value, list)
    raise ValueError(kind)


ENVIRONMENT = {
    "date": (_STR, False), "device_type": (_STR, False), "device_name": (_STR, False), "device_slug": (_STR, False),
    "cpu_threads": (_INT, False), "python": (_STR, False), "platform": (_STR, False), "torch": (_STR, False),
    "triton": (_STR, True), "cuda_runtime": (_STR, True), "cudnn": (_INT, True), "unet_fast": (_STR, False),
    "extension": (_BOOL, False), "extension_cuda_kernels": (_BOOL, False), "commit": (_STR, True),
    "commit_source": (_STR, False), "gpu_capability": (_STR, True), "gpu_memory_bytes": (_INT, True),
    "cudnn_allow_tf32": (_BOOL, False), "matmul_allow_tf32": (_BOOL, False),
}
SETTINGS = {
    "quick": (_BOOL, False), "full": (_BOOL, False), "device": (_STR, False), "compile_mode": (_STR, True),
    "providers": (_LIST, False), "modes": (_LIST, False), "dtypes": (_LIST, False), "shapes": (_LIST, False),
    "baseline": (_STR, False), "warmup": (_INT, False), "rounds": (_INT, False), "min_sample_ms": (_NUM, False),
    "time_budget_s": (_NUM, True), "ops": (_BOOL, False), "cudnn_benchmark": (_BOOL, False),
}
MATMUL = {"dtype": (_STR, False), "size": (_INT, False), "ms": (_NUM, False), "tflops": (_NUM, False)}
COPY = {"bytes": (_INT, False), "ms": (_NUM, False), "gbps": (_NUM, False)}
MODEL_ALWAYS = {
    "mode": (_STR, False), "shape": (_STR, False), "dtype": (_STR, False), "provider": (_STR, False),
    "config": (_DICT, False), "batch": (_INT, False), "height": (_INT, False), "width": (_INT, False),
    "status": (_STR, False), "reason": (_STR, True), "samples": (_INT, False), "calls_per_sample": (_INT, False),
}
MODEL_WHEN_OK = {
    "ms": (_NUM, False), "ms_min": (_NUM, False), "ms_max": (_NUM, False), "ms_iqr": (_NUM, False),
    "flops": (_INT, True), "tflops": (_NUM, True), "peak_fraction": (_NUM, True), "throughput": (_NUM, False),
    "throughput_unit": (_STR, False), "speedup": (_NUM, True), "speedups": (_DICT, False), "saved_bytes": (_INT, True),
    "memory": (_DICT, True),
}
MODEL_NULL_UNLESS_OK = tuple(MODEL_WHEN_OK)
OP_ALWAYS = {
    "benchmark": (_STR, False), "name": (_STR, False), "provider": (_STR, False), "dtype": (_STR, False),
    "status": (_STR, False), "reason": (_STR, True),
}
OP_OPTIONAL = {
    "tflops": (_NUM, False), "gbps": (_NUM, False), "bandwidth_fraction": (_NUM, False), "peak_fraction": (_NUM, False),
    "mpixel_per_s": (_NUM, False), "flops": (_NUM, False), "bytes": (_NUM, False), "speedup": (_NUM, False),
    "backend": (_STR, False), "mode": (_STR, False), "batch": (_INT, False),
}
OP_ENTRY = {
    "name": (_STR, False), "module": (_STR, False), "status": (_STR, False), "reason": (_STR, True),
    "seconds": (_NUM, False), "result": (_DICT, True),
}


def _fields(obj, spec: dict, where: str, problems: list[str], required: bool = True) -> None:
    if not isinstance(obj, dict):
        problems.append(f"{where}: expected an object, got {type(obj).__name__}")
        return
    for key, (kind, nullable) in spec.items():
        if key not in obj:
            if required:
                problems.append(f"{where}.{key}: missing")
        elif not _is(obj[key], kind, nullable):
            problems.append(f"{where}.{key}: expected {kind}{' or null' if nullable else ''}, got {obj[key]!r}")


def _status(record: dict, where: str, problems: list[str]) -> None:
    status = record.get("status")
    if status not in STATUSES:
        problems.append(f"{where}.status: expected one of {STATUSES}, got {status!r}")
    elif (status == "ok") != (record.get("reason") is None):
        problems.append(f"{where}.reason: must be null exactly when status is 'ok', got {record.get('reason')!r}")


def _model_record(record: dict, where: str, problems: list[str]) -> None:
    _fields(record, MODEL_ALWAYS, where, problems)
    _status(record, where, problems)
    if record.get("mode") not in MODES:
        problems.append(f"{where}.mode: expected one of {MODES}, got {record.get('mode')!r}")
    if record.get("dtype") not in DTYPES:
        problems.append(f"{where}.dtype: expected one of {DTYPES}, got {record.get('dtype')!r}")
    if record.get("status") == "ok":
        _fields(record, MODEL_WHEN_OK, where, problems)
        if _is(record.get("ms"), _NUM) and record["ms"] <= 0:
            problems.append(f"{where}.ms: must be > 0, got {record['ms']!r}")
        for other, ratio in (record.get("speedups") or {}).items():
            if not _is(ratio, _NUM):
                problems.append(f"{where}.speedups[{other!r}]: expected number, got {ratio!r}")
    else:
        for key in MODEL_NULL_UNLESS_OK:
            if record.get(key) is not None:
                problems.append(f"{where}.{key}: must be null when status is {record.get('status')!r}")


def _op_record(record: dict, where: str, problems: list[str]) -> None:
    _fields(record, OP_ALWAYS, where, problems)
    _status(record, where, problems)
    if record.get("status") == "ok" and not _is(record.get("ms"), _NUM):
        problems.append(f"{where}.ms: expected a number for an ok op record, got {record.get('ms')!r}")
    _fields(record, OP_OPTIONAL, where, problems, required=False)


def validate(document) -> list[str]:
    """Every way ``document`` departs from the schema, as readable messages; [] when it conforms."""
    problems: list[str] = []
    if not isinstance(document, dict):
        return [f"document: expected an object, got {type(document).__name__}"]
    if document.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version: expected {SCHEMA_VERSION}, got {document.get('schema_version')!r}")
    _fields(document.get("environment"), ENVIRONMENT, "environment", problems)
    _fields(document.get("settings"), SETTINGS, "settings", problems)
    peaks = document.get("peaks")
    _fields(peaks, {"matmul": (_DICT, False), "copy": (_DICT, False)}, "peaks", problems)
    if isinstance(peaks, dict):
        _fields(peaks.get("matmul"), MATMUL, "peaks.matmul", problems)
        _fields(peaks.get("copy"), COPY, "peaks.copy", problems)
    if not _is(document.get("complete"), _BOOL):
        problems.append(f"complete: expected bool, got {document.get('complete')!r}")
    if not _is(document.get("seconds"), _NUM):
        problems.append(f"seconds: expected a number, got {document.get('seconds')!r}")
    records = document.get("records")
    if not isinstance(records, list):
        problems.append("records: expected a list")
        records = []
    for index, record in enumerate(records):
        where = f"records[{index}]"
        if not isinstance(record, dict):
            problems.append(f"{where}: expected an object")
        elif record.get("kind") == "model":
            _model_record(record, where, problems)
        elif record.get("kind") == "op":
            _op_record(record, where, problems)
        else:
            problems.append(f"{where}.kind: expected 'model' or 'op', got {record.get('kind')!r}")
    entries = document.get("op_benchmarks")
    if not isinstance(entries, list):
        problems.append("op_benchmarks: expected a list")
        entries = []
    for index, entry in enumerate(entries):
        _fields(entry, OP_ENTRY, f"op_benchmarks[{index}]", problems)
        if isinstance(entry, dict):
            _status(entry, f"op_benchmarks[{index}]", problems)
    return problems


def check(document) -> None:
    """ValueError listing every problem when ``document`` does not conform to the schema."""
    problems = validate(document)
    if problems:
        raise ValueError("benchmark JSON does not match schema version 1:\n  " + "\n  ".join(problems))

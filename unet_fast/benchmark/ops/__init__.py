"""The op benchmarks, one module per op, and how the suite runs them.

Each module ``unet_fast.benchmark.ops.<op>`` (``OP_BENCHMARKS``: conv3x3_relu, elastic_warp,
border_distances, the last timing the border weight map built on that op) exposes ``main(argv)``,
returning an exit status, None or its result dict, and accepts ``--json PATH`` and, when it can,
``--device cpu|cuda`` and ``--quick`` (a benchmark without ``--quick`` is skipped in quick mode:
its full run may take long). ``benchmarks/bench_<op>.py`` are thin entry points to the same
``main``; ``python -m unet_fast.benchmark.ops.<op>`` runs one from an installed wheel. The suite
imports each module by name and records, per benchmark, its status and raw JSON.

Rows become suite records of kind "op" (see ``unet_fast.benchmark.schema``), so op and model
numbers share one format: entries of the benchmark's ``"records"`` (or ``"results"``) list that
have a ``name`` and an ``ms``, and, for benchmarks organised as ``"cases": [{..., "providers":
{provider: {"ms": ..., ...}}}]``, one record per case and provider, named by the case's scalar
fields. A row's ``mode`` (str), ``batch`` (int) and numeric ``speedup_vs_<provider>`` fields are kept.
"""
from __future__ import annotations

import importlib
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Callable

OP_BENCHMARKS = ("conv3x3_relu", "elastic_warp", "border_distances")
PASSED_FIELDS = ("ms", "tflops", "gbps", "bandwidth_fraction", "peak_fraction", "mpixel_per_s", "flops", "bytes", "backend")


USAGE_ERROR = 2  # argparse's exit status for arguments it does not know


def _call_main(main: Callable, argv: list[str]) -> tuple[int, dict | None]:
    """(exit status, the result dict when main returned one)."""
    try:
        returned = main(argv)
    except SystemExit as exit_:
        returned = exit_.code
    if isinstance(returned, dict):
        return 0, returned
    if returned is None:
        return 0, None
    return (returned, None) if isinstance(returned, int) and not isinstance(returned, bool) else (1, None)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def op_records(benchmark: str, result) -> list[dict]:
    """Suite records (kind "op") from a benchmark's JSON: entries of its "records"/"results" list
    that have a string ``name`` and a numeric ``ms`` (or a ``status`` other than "ok")."""
    if not isinstance(result, dict):
        return []
    rows = result.get("records", result.get("results"))
    if not isinstance(rows, list):
        rows = _rows_from_cases(result.get("cases"))
    environment = result.get("environment") if isinstance(result.get("environment"), dict) else {}
    default_dtype = result.get("dtype", environment.get("dtype", ""))  # a benchmark-wide dtype
    records = []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            continue
        status = row.get("status", "ok")
        if status not in ("ok", "skipped", "error") or (status == "ok" and not _number(row.get("ms"))):
            continue
        record = {
            "kind": "op",
            "benchmark": benchmark,
            "name": row["name"],
            "provider": str(row.get("provider", "")),
            "dtype": str(row.get("dtype", default_dtype)),
            "status": status,
            "reason": row.get("reason") if status != "ok" else None,
        }
        if "mpixel_per_s" not in row and _number(row.get("mpixels_per_s")):
            row = dict(row, mpixel_per_s=row["mpixels_per_s"])
        for key in PASSED_FIELDS:
            if key in row and (_number(row[key]) or (key == "backend" and isinstance(row[key], str))):
                record[key] = row[key]
        if isinstance(row.get("mode"), str):
            record["mode"] = row["mode"]
        if isinstance(row.get("batch"), int) and not isinstance(row["batch"], bool):
            record["batch"] = row["batch"]
        record.update({key: value for key, value in row.items() if key.startswith("speedup_vs_") and _number(value)})
        if _number(row.get("ratio")):
            record["speedup"] = row["ratio"]
        elif _number(row.get("speedup")):
            record["speedup"] = row["speedup"]
        records.append(record)
    return records


def _rows_from_cases(cases) -> list[dict]:
    """Rows from ``[{scalar case fields..., "providers": {provider: {...}}}]``."""
    rows = []
    for case in cases if isinstance(cases, list) else []:
        if not isinstance(case, dict) or not isinstance(case.get("providers"), dict):
            continue
        label = " ".join(
            f"{key}={'x'.join(map(str, value)) if isinstance(value, list) else value}"
            for key, value in case.items()
            if key in ("name", "shape", "layer", "size", "batch", "dtype", "mode")
            and (isinstance(value, (str, int)) or (isinstance(value, list) and all(isinstance(v, int) for v in value)))
        )
        for provider, row in case["providers"].items():
            if isinstance(row, dict):
                rows.append(dict(row, name=label or "case", provider=provider))
    return rows


def _run_benchmark(module, device: str, quick: bool, out: Path) -> tuple[str, str | None, dict | None]:
    """(status, reason, result) of one benchmark run writing its JSON to ``out``."""
    if not callable(getattr(module, "main", None)):
        raise AttributeError(f"{module.__name__} has no main(argv)")
    # Fewer options for a benchmark that rejects some (argparse exits with status 2).
    attempts = [["--device", device, "--quick"], ["--quick"]] if quick else [["--device", device], []]
    for options in attempts:
        code, returned = _call_main(module.main, ["--json", str(out)] + options)
        if code != USAGE_ERROR or out.exists():
            break
    if code == USAGE_ERROR and not out.exists() and quick:
        return "skipped", "the benchmark has no --quick mode (its full run is too long for --quick)", None
    if code != 0:
        raise RuntimeError(f"main returned exit status {code}")
    if out.is_file():
        return "ok", None, json.loads(out.read_text())
    if returned is not None:
        return "ok", None, json.loads(json.dumps(returned, default=str))
    raise RuntimeError(f"main neither wrote --json {out} nor returned a result dict")


def run_op_benchmarks(
    device: str,
    quick: bool,
    log: Callable[[str], None] = print,
    after_script: Callable[[list[dict], list[dict]], None] | None = None,
    *,
    package: str = __name__,
    names: tuple[str, ...] = OP_BENCHMARKS,
) -> tuple[list[dict], list[dict]]:
    """Runs the op benchmarks ``package.<name>`` for every name that exists. Returns (one entry per
    benchmark: name, module, status, reason, seconds, result; op records); ``after_script`` gets
    both, so far, after each benchmark."""
    entries, records = [], []
    for name in names:
        module_name = f"{package}.{name}"
        entry = {"name": name, "module": module_name, "status": "skipped", "reason": None, "seconds": 0.0,
                 "result": None}
        entries.append(entry)
        log(f"op benchmark {name} ...")
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                module = importlib.import_module(module_name)
                entry["status"], entry["reason"], entry["result"] = _run_benchmark(module, device, quick, Path(tmp) / "out.json")
            except ModuleNotFoundError as error:
                if error.name != module_name:  # a module the benchmark needs is missing: an error
                    entry["status"], entry["reason"] = "error", f"{type(error).__name__}: {error}"
                else:
                    entry["reason"] = f"module {module_name} not found"
            except Exception as error:  # a broken benchmark is reported, the suite goes on
                entry["status"], entry["reason"] = "error", f"{type(error).__name__}: {error}"
        entry["seconds"] = time.monotonic() - started
        records.extend(op_records(name, entry["result"]))
        if after_script is not None:
            after_script(entries, records)
    return entries, records

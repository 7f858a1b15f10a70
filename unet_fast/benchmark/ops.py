"""Runs the op-level benchmark scripts of ``benchmarks/`` and folds their results into the suite.

Each script ``benchmarks/<name>.py`` (bench_conv, bench_augment, bench_weight_map) exposes
``main(argv)``, returning an exit status, None or its result dict, and accepts ``--json PATH``
and, when it can, ``--device cpu|cuda`` and ``--quick`` (a script without ``--quick`` is skipped
in quick mode: its full run may take long). The suite imports the script from the source tree
(``UNET_FAST_BENCHMARKS_DIR`` overrides where) and records, per script, its status and raw JSON.

Rows become suite records of kind "op" (see ``unet_fast.benchmark.schema``), so op and model
numbers share one format: entries of the script's ``"records"`` (or ``"results"``) list that have
a ``name`` and an ``ms``, and, for scripts organised as ``"cases": [{..., "providers": {provider:
{"ms": ..., ...}}}]``, one record per case and provider, named by the case's scalar fields.
A row's ``mode`` (str), ``batch`` (int) and numeric ``speedup_vs_<provider>`` fields are kept.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from unet_fast.benchmark.environment import REPO_ROOT

OP_SCRIPTS = ("bench_conv", "bench_augment", "bench_weight_map")
DIR_ENV = "UNET_FAST_BENCHMARKS_DIR"
PASSED_FIELDS = ("ms", "tflops", "gbps", "bandwidth_fraction", "peak_fraction", "mpixel_per_s", "flops", "bytes", "backend")


def benchmarks_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or REPO_ROOT / "benchmarks")


def _load(path: Path):
    name = f"unet_fast_benchmarks_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: dataclasses and pickling look the module up by name.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


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


def op_records(script: str, result) -> list[dict]:
    """Suite records (kind "op") from a script's JSON: entries of its "records"/"results" list
    that have a string ``name`` and a numeric ``ms`` (or a ``status`` other than "ok")."""
    if not isinstance(result, dict):
        return []
    rows = result.get("records", result.get("results"))
    if not isinstance(rows, list):
        rows = _rows_from_cases(result.get("cases"))
    environment = result.get("environment") if isinstance(result.get("environment"), dict) else {}
    default_dtype = result.get("dtype", environment.get("dtype", ""))  # a script-wide dtype
    records = []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            continue
        status = row.get("status", "ok")
        if status not in ("ok", "skipped", "error") or (status == "ok" and not _number(row.get("ms"))):
            continue
        record = {
            "kind": "op",
            "benchmark": script,
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


def _run_script(path: Path, device: str, quick: bool, out: Path) -> tuple[str, str | None, dict | None]:
    """(status, reason, result) of one script run writing its JSON to ``out``."""
    module = _load(path)
    if not callable(getattr(module, "main", None)):
        raise AttributeError(f"{path} has no main(argv)")
    # Fewer options for a script that rejects some (argparse exits with status 2).
    attempts = [["--device", device, "--quick"], ["--quick"]] if quick else [["--device", device], []]
    for options in attempts:
        code, returned = _call_main(module.main, ["--json", str(out)] + options)
        if code != USAGE_ERROR or out.exists():
            break
    if code == USAGE_ERROR and not out.exists() and quick:
        return "skipped", "the script has no --quick mode (its full run is too long for --quick)", None
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
) -> tuple[list[dict], list[dict]]:
    """Runs every op script that exists. Returns (one entry per script: name, path, status,
    reason, seconds, result; op records); ``after_script`` gets both, so far, after each script."""
    entries, records = [], []
    folder = benchmarks_dir()
    for script in OP_SCRIPTS:
        path = folder / f"{script}.py"
        entry = {"name": script, "path": str(path), "status": "skipped", "reason": None, "seconds": 0.0, "result": None}
        entries.append(entry)
        if not path.is_file():
            entry["reason"] = f"{path} not found (the op benchmarks live in the source tree's benchmarks/)"
            continue
        log(f"op benchmark {script} ...")
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                entry["status"], entry["reason"], entry["result"] = _run_script(path, device, quick, Path(tmp) / "out.json")
            except Exception as error:  # a broken script is reported, the suite goes on
                entry["status"], entry["reason"] = "error", f"{type(error).__name__}: {error}"
        entry["seconds"] = time.monotonic() - started
        records.extend(op_records(script, entry["result"]))
        if after_script is not None:
            after_script(entries, records)
    return entries, records

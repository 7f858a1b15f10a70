"""Runs the op-level benchmark scripts of ``benchmarks/`` and folds their results into the suite.

Each script ``benchmarks/<name>.py`` (bench_conv, bench_augment, bench_weight_map) exposes
``main(argv) -> int`` and accepts ``--json PATH`` (and, when it can, ``--device cpu|cuda`` and
``--quick``). The suite imports the script from the source tree (``UNET_FAST_BENCHMARKS_DIR``
overrides where) and records, per script, its status and raw JSON. Records the script lists
under ``"records"`` (or ``"results"``) that carry a ``name`` and ``ms`` become suite records of
kind "op" (see ``unet_fast.benchmark.schema``), so op and model numbers share one format.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
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
    spec = importlib.util.spec_from_file_location(f"unet_fast_benchmarks_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _call_main(main: Callable, argv: list[str]) -> int:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return 0 if code is None else int(code) if isinstance(code, int) else 1


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def op_records(script: str, result) -> list[dict]:
    """Suite records (kind "op") from a script's JSON: entries of its "records"/"results" list
    that have a string ``name`` and a numeric ``ms`` (or a ``status`` other than "ok")."""
    rows = result.get("records", result.get("results")) if isinstance(result, dict) else None
    if not isinstance(rows, list):
        return []
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
            "dtype": str(row.get("dtype", "")),
            "status": status,
            "reason": row.get("reason") if status != "ok" else None,
        }
        for key in PASSED_FIELDS:
            if key in row and (_number(row[key]) or (key == "backend" and isinstance(row[key], str))):
                record[key] = row[key]
        if _number(row.get("ratio")):
            record["speedup"] = row["ratio"]
        elif _number(row.get("speedup")):
            record["speedup"] = row["speedup"]
        records.append(record)
    return records


def run_op_benchmarks(device: str, quick: bool, log: Callable[[str], None] = print) -> tuple[list[dict], list[dict]]:
    """Runs every op script that exists. Returns (one entry per script: name, path, status,
    reason, seconds, result; op records)."""
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
            out = Path(tmp) / f"{script}.json"
            try:
                module = _load(path)
                if not callable(getattr(module, "main", None)):
                    raise AttributeError(f"{path} has no main(argv)")
                argv = ["--json", str(out), "--device", device] + (["--quick"] if quick else [])
                code = _call_main(module.main, argv)
                if code == 2 and not out.exists():  # an argparse usage error: retry with --json alone
                    code = _call_main(module.main, ["--json", str(out)])
                if code != 0:
                    raise RuntimeError(f"main returned exit status {code}")
                if not out.is_file():
                    raise RuntimeError(f"main did not write --json {out}")
                entry["result"] = json.loads(out.read_text())
                entry["status"] = "ok"
                records.extend(op_records(script, entry["result"]))
            except Exception as error:  # a broken script is reported, the suite goes on
                entry["status"] = "error"
                entry["reason"] = f"{type(error).__name__}: {error}"
        entry["seconds"] = time.monotonic() - started
    return entries, records

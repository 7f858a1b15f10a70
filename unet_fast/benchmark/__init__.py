"""The unet_fast benchmark suite: providers x modes x shapes x dtypes, plus the op benchmarks.

Run it as ``unet-fast bench`` or ``python -m unet_fast.benchmark``; ``main(argv)`` is the entry
point both use. What is measured is described in ``unet_fast.benchmark.cases``, the JSON it
writes in ``unet_fast.benchmark.schema``.

Layout: ``cases`` (the plan), ``providers`` (the models and what each mode times), ``measure``
(timing and memory), ``flops``, ``environment`` (device, versions, commit), ``suite`` (runs a
plan), ``report`` (table and plot), ``schema``, and ``ops/``: one module per op benchmark and the
runner that folds their results into the suite. All benchmark code lives here, so that it runs
from a wheel; the repository's ``benchmarks/`` folder only holds entry points to ``ops/``, the
GPU script and committed results.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unet_fast.benchmark.cases import DTYPES, MODES, PROVIDERS, make_plan
from unet_fast.benchmark.schema import check, validate

__all__ = ["main", "run", "validate", "check"]


def _csv(text: str) -> tuple[str, ...]:
    """Comma-separated names; "none" is the empty selection."""
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    return () if items == ("none",) else items


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-fast bench",
        description="Benchmark unet_fast against the reference U-Net (eager, channels_last, torch.compile): "
        "forward, training step and overlap-tile inference; prints a table, writes JSON and a plot.",
    )
    parser.add_argument("--quick", action="store_true", help="one small model (depth 3, 8 channels, 92x92), fp32, few repeats: a CI check, minutes on a CPU")
    parser.add_argument("--full", action="store_true", help="torch.compile with mode max-autotune on CUDA (long compiles)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON (schema: unet_fast.benchmark.schema)")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG plot of the speedups (needs matplotlib)")
    parser.add_argument("--providers", type=_csv, help=f"comma-separated subset of {','.join(PROVIDERS)}")
    parser.add_argument("--modes", type=_csv, help=f"comma-separated subset of {','.join(MODES)}, or none (op benchmarks only)")
    parser.add_argument("--dtypes", type=_csv, help=f"comma-separated subset of {','.join(DTYPES)}")
    parser.add_argument("--shapes", type=_csv, help="comma-separated shape names (see unet_fast.benchmark.cases)")
    parser.add_argument("--no-ops", dest="ops", action="store_false", help="skip the op benchmarks (unet_fast.benchmark.ops)")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS", help="skip (and record) cases that would start after this many seconds")
    return parser


def _write_json(path: str, document: dict) -> None:
    """Writes atomically: a reader (or a killed run) never sees half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(document, indent=1) + "\n")
    partial.replace(target)


def run(argv: list[str] | None = None) -> dict:
    """Parses ``argv`` like ``main``, runs the suite and returns the result document (with
    ``--json``, also written after every case while it runs)."""
    import torch

    from unet_fast.benchmark.suite import run_suite

    args = build_parser().parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    plan = make_plan(
        device, quick=args.quick, full=args.full, providers=args.providers, modes=args.modes, dtypes=args.dtypes,
        shapes=args.shapes, time_budget_s=args.time_budget,
    )
    checkpoint = (lambda document: _write_json(args.json, document)) if args.json else None
    return run_suite(plan, ops=args.ops, log=lambda line: print(line, flush=True), checkpoint=checkpoint)


def main(argv: list[str] | None = None) -> int:
    """``unet-fast bench``: runs the suite, prints the table, writes --json and --plot. Returns
    the exit status: 0, 1 when a provider errored or the JSON failed its schema check, 2 for bad
    arguments."""
    from unet_fast.benchmark.report import plot, table

    args = build_parser().parse_args(argv)
    try:
        document = run(argv)
    except ValueError as error:
        print(f"unet-fast bench: error: {error}", file=sys.stderr)
        return 2
    print()
    print(table(document))
    problems = validate(document)
    if args.json:
        _write_json(args.json, document)
        print(f"\nwrote {args.json}")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        why_not = plot(document, args.plot)
        print(f"wrote {args.plot}" if why_not is None else f"no plot: {why_not}")
    for problem in problems:
        print(f"schema problem: {problem}", file=sys.stderr)
    errors = [r for r in document["records"] if r["status"] == "error"]
    errors += [e for e in document["op_benchmarks"] if e["status"] == "error"]
    for record in errors:
        print(f"error: {record.get('provider', record.get('name'))}: {record['reason']}", file=sys.stderr)
    return 1 if problems or errors else 0

"""The first GPU contact in one call: numerics, the whole model, then the headline benchmark, each
step in its own process with its own deadline, fitting 4.5 minutes of wall time on an H100/H200.

    python -m unet_fast.benchmark.first_contact OUTDIR [--dry-run] [--only STEP,...]

(``benchmarks/gpu_suite.sh first-contact OUTDIR`` runs the install step first, then this.)

Each step runs in a forked child (the parent never initialises CUDA, so every child may); a
watchdog kills a child at its deadline, with its process group (compute-sanitizer, pytest), and
records ``"failed: deadline"``. Steps of one wave run at the same time (the numerics and model
checks, whose cost is mostly Triton's compilation on the CPU cores); the benchmark steps run one
at a time, so that their timings do not overlap. A wave starts no step once the run's deadline
has passed (recorded ``"skipped: run deadline"``), and each step's deadline is cut to the time left.

``OUTDIR/first-contact.json``: ``environment`` (device, commit, versions, the install step) and the
sections ``numerics``, ``model``, ``bench``, each mapping step names to ``{"status": "ok" |
"failed: ..." | "skipped: ...", "seconds": float, ...figures}``. The file is rewritten after every
step (a step running when the run is killed reads ``"failed: unfinished"``), and ``--only`` reruns
the named steps into the existing file. A summary table closes the output (and goes to
``OUTDIR/summary.txt``).

The dry run (``--dry-run``) runs the same plan on the CPU at tiny sizes: Triton kernels under
TRITON_INTERPRET=1, the C++ CPU twins, the same deadlines (not scaled), JSON and summary; what only a
GPU can measure is recorded as skipped, with the reason.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

RUN_DEADLINE_S = 270.0  # 4.5 minutes of wall time for the whole call, the install step included
SECTIONS = ("numerics", "model", "bench")
JSON_NAME = "first-contact.json"
INSTALL_RECORD = "install.json"  # written by benchmarks/gpu_suite.sh before this module runs


@dataclass(frozen=True)
class Step:
    """One step: ``run(context) -> dict`` of figures (a "status" key overrides "ok")."""

    section: str
    name: str
    deadline_s: float
    wave: int
    run: Callable[[dict], dict]


def plan() -> list[Step]:
    """The steps in order; steps of one wave run concurrently, waves one after another."""
    from unet_fast.benchmark import first_contact_bench as bench
    from unet_fast.benchmark import first_contact_checks as checks

    steps = [Step("numerics", f"kernels_{dtype}", 150.0, 1, checks.kernel_numerics(dtype))
             for dtype in checks.KERNEL_DTYPES]
    steps += [
        Step("numerics", "elastic_warp", 60.0, 1, checks.elastic_warp_twins),
        Step("numerics", "memcheck", 120.0, 1, checks.memcheck),
        Step("model", "model_bf16", 150.0, 1, checks.model_numerics("bf16")),
        Step("model", "model_fp32", 150.0, 1, checks.model_numerics("fp32")),
    ]
    # most important first: the run's deadline cuts from the end
    steps += [Step("bench", name, deadline, 2 + index, run) for index, (name, deadline, run) in enumerate(bench.STEPS)]
    return steps


# --- the JSON document ---------------------------------------------------------------------------------

def _write_json(path: Path, document: dict) -> None:
    """Atomic rewrite: a killed run leaves the last whole file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=1, default=str) + "\n")
    partial.replace(path)


def new_document(outdir: Path, steps: list[Step], dry_run: bool, only: set[str] | None) -> dict:
    """The document at the start: the old file's records when rerunning ``--only`` some steps, every
    other step "skipped: not started"."""
    previous = outdir / JSON_NAME
    document = {"dry_run": dry_run, "run_deadline_s": RUN_DEADLINE_S, "environment": {}}
    document.update({section: {} for section in SECTIONS})
    if only is not None and previous.is_file():
        document.update(json.loads(previous.read_text()))
        document["dry_run"] = dry_run
    for step in steps:
        if only is None or step.name in only:
            document[step.section][step.name] = {"status": "skipped: not started", "seconds": 0.0}
        else:
            document[step.section].setdefault(step.name, {"status": "skipped: not selected (--only)", "seconds": 0.0})
    install = outdir / INSTALL_RECORD
    if install.is_file():
        document["environment"]["install"] = json.loads(install.read_text())
    return document


# --- running steps -------------------------------------------------------------------------------------

def _child(step: Step, context: dict, connection) -> None:
    os.setpgrp()  # the watchdog kills the whole group: subprocesses of the step die with it
    started = time.perf_counter()
    try:
        record = dict(step.run(context))
        record.setdefault("status", "ok")
    except Exception as error:  # a failing step is a result; the rest of the run goes on
        record = {"status": f"failed: {type(error).__name__}: {error}"[:500],
                  "traceback": traceback.format_exc()[-4000:]}
    record["seconds"] = round(time.perf_counter() - started, 3)
    connection.send(record)
    connection.close()


def _kill_group(process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.join(5)


def run_wave(steps: list[Step], context: dict, deadline_at: float, record: Callable[[Step, dict], None]) -> None:
    """Runs ``steps`` concurrently, each in a forked child killed at its deadline (or the run's)."""
    fork = multiprocessing.get_context("fork")
    running = []
    for step in steps:
        left = deadline_at - time.monotonic()
        if left <= 1.0:
            record(step, {"status": "skipped: run deadline (the call's 4.5 minutes are spent)", "seconds": 0.0})
            continue
        receiver, sender = fork.Pipe(duplex=False)
        process = fork.Process(target=_child, args=(step, context, sender), daemon=True)
        process.start()
        sender.close()
        limit = min(step.deadline_s, left)
        record(step, {"status": "failed: unfinished (running when the run was killed)", "seconds": 0.0,
                      "deadline_s": round(limit, 1)})
        running.append((step, process, receiver, time.monotonic(), limit))
    while running:
        for item in list(running):
            step, process, receiver, started, limit = item
            elapsed = time.monotonic() - started
            if receiver.poll():
                try:
                    result = receiver.recv()
                except EOFError:
                    result = {"status": f"failed: the step's process died (exit code {process.exitcode})"}
                process.join(5)
            elif not process.is_alive():
                result = {"status": f"failed: the step's process died (exit code {process.exitcode})"}
            elif elapsed > limit:
                _kill_group(process)
                result = {"status": "failed: deadline"}
            else:
                continue
            result.setdefault("seconds", round(elapsed, 3))
            result["deadline_s"] = round(limit, 1)
            record(step, result)
            running.remove(item)
        time.sleep(0.05)


# --- summary -------------------------------------------------------------------------------------------

def _headline(record: dict) -> str:
    """The one figure a step's summary row shows (see each step's "headline" key)."""
    value = record.get("headline")
    return "" if value is None else str(value)


def summary_table(document: dict) -> str:
    environment = document.get("environment", {})
    lines = [f"first-contact{' (dry run)' if document.get('dry_run') else ''}: "
             f"{environment.get('device_name', '?')}, commit {environment.get('commit', '?')}, "
             f"torch {environment.get('torch', '?')}, triton {environment.get('triton', '?')}, "
             f"Triton kernels to compile {environment.get('triton_kernels', {}).get('gpu_compiles', '?')}"]
    rows = []
    install = environment.get("install")
    if install:
        rows.append(("environment", "install", install.get("status", "?"), install.get("seconds", 0.0),
                     install.get("wheel") or install.get("how") or ""))
    for section in SECTIONS:
        for name, record in document.get(section, {}).items():
            rows.append((section, name, record.get("status", "?"), record.get("seconds", 0.0), _headline(record)))
    width = max([len(f"{s}/{n}") for s, n, *_ in rows] + [10])
    for section, name, status, seconds, headline in rows:
        lines.append(f"{section + '/' + name:<{width}}  {seconds:7.1f}s  {status[:70]:<70}  {headline[:60]}")
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    for *_, status, _, _ in rows:
        counts[status.split(":")[0] if status.split(":")[0] in counts else "failed"] += 1
    lines.append(f"ok {counts['ok']}, failed {counts['failed']}, skipped {counts['skipped']}")
    return "\n".join(lines)


# --- entry point ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m unet_fast.benchmark.first_contact", description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", help="folder for first-contact.json, summary.txt, autotune.json and the logs")
    parser.add_argument("--dry-run", action="store_true", help="the same plan on the CPU at tiny sizes (TRITON_INTERPRET=1)")
    parser.add_argument("--only", metavar="STEP,...", help="rerun only these steps (names as in the JSON), keeping the others' records")
    parser.add_argument("--started-at", type=float, metavar="EPOCH",
                        help="when the call started (time.time()); the run's deadline counts from it (default: now)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        # triton.jit decides at decoration time whether it interprets, and importing this module
        # imported unet_fast's kernels already: start again with the interpreter on
        argv = sys.argv[1:] if argv is None else list(argv)
        os.execve(sys.executable, [sys.executable, "-m", __spec__.name, *argv], dict(os.environ, TRITON_INTERPRET="1"))
    steps = plan()
    names = {step.name for step in steps}
    only = None
    if args.only is not None:
        only = {name.strip() for name in args.only.split(",") if name.strip()}
        unknown = sorted(only - names - {"environment"})
        if unknown or not only:
            print(f"--only: unknown step(s) {', '.join(unknown) or '(none given)'}; steps are: {', '.join(sorted(names))}",
                  file=sys.stderr)
            return 2
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    started = args.started_at if args.started_at is not None else time.time()
    deadline_at = time.monotonic() + RUN_DEADLINE_S - (time.time() - started)
    from unet_fast.benchmark import first_contact_checks as checks

    context = {"dry_run": args.dry_run, "outdir": str(outdir.resolve())}
    document = new_document(outdir, steps, args.dry_run, only)
    path = outdir / JSON_NAME

    def record(step: Step, result: dict) -> None:
        document[step.section][step.name] = result
        _write_json(path, document)
        if not result["status"].startswith("failed: unfinished"):
            print(f"[first-contact] {step.section}/{step.name}: {result['status'][:200]} ({result['seconds']:.1f}s)", flush=True)

    environment_step = Step("environment", "environment", 60.0, 0, checks.environment)
    environment: dict = {}
    run_wave([environment_step], context, deadline_at, lambda _step, result: environment.update(result))
    document["environment"] = {**document.get("environment", {}), **environment}
    _write_json(path, document)
    for wave in sorted({step.wave for step in steps}):
        selected = [step for step in steps if step.wave == wave and (only is None or step.name in only)]
        if selected:
            run_wave(selected, context, deadline_at, record)
    table = summary_table(document)
    (outdir / "summary.txt").write_text(table + "\n")
    print(table, flush=True)
    failed = [name for section in SECTIONS for name, r in document[section].items() if r["status"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

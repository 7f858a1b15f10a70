"""The terminal table and the PNG plot of a benchmark document."""
from __future__ import annotations

from collections import defaultdict

MIB = 2**20


def _fmt(value, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    """``value / scale`` formatted by ``spec`` plus ``suffix``, or "-" right-aligned to the same width."""
    width = int(spec.split(".")[0] or 0) + len(suffix)
    return "-".rjust(width) if value is None else format(value / scale, spec) + suffix


def _memory_mib(record: dict) -> float | None:
    """Peak memory of one call above what was allocated before it (so the weights, optimizer state
    and the other providers' models, all alive during a case, are left out): CUDA allocations, or
    on CPU the resident set size when its peak could be reset."""
    memory = record.get("memory") or {}
    if "peak_over_start_bytes" in memory:
        return memory["peak_over_start_bytes"] / MIB
    if memory.get("rss_reset") and memory.get("peak_rss_bytes") and memory.get("rss_before_bytes"):
        return (memory["peak_rss_bytes"] - memory["rss_before_bytes"]) / MIB
    return None


def table(document: dict) -> str:
    """One line per record: timing, speedup against the baseline, FLOP rate, memory."""
    baseline = document["settings"]["baseline"]
    peak = document["peaks"]["matmul"]
    lines = [
        f"device {document['environment']['device_name']}  torch {document['environment']['torch']}  "
        f"triton {document['environment']['triton']}  commit {document['environment']['commit']}",
        f"peaks: {peak['dtype']} matmul {peak['tflops']:.2f} TFLOP/s, copy {document['peaks']['copy']['gbps']:.1f} GB/s",
        "",
    ]
    header = (
        f"{'mode':<16}{'shape':<18}{'dtype':<6}{'provider':<21}{'ms':>10}{'x ' + baseline:>13}"
        f"{'TFLOP/s':>9}{'%peak':>7}{'+mem MiB':>10}{'saved MiB':>10}  note"
    )
    lines += [header, "-" * len(header)]
    for record in document["records"]:
        if record["kind"] != "model":
            continue
        note = "" if record["status"] == "ok" else f"{record['status']}: {record['reason']}"
        peak_fraction = None if record.get("peak_fraction") is None else 100 * record["peak_fraction"]
        lines.append(
            f"{record['mode']:<16}{record['shape']:<18}{record['dtype']:<6}{record['provider']:<21}"
            f"{_fmt(record.get('ms'), '10.2f')}{_fmt(record.get('speedup'), '12.2f', suffix='x')}"
            f"{_fmt(record.get('tflops'), '9.2f')}{_fmt(peak_fraction, '6.1f', suffix='%')}"
            f"{_fmt(_memory_mib(record), '10.0f')}{_fmt(record.get('saved_bytes'), '10.1f', MIB)}  {note}"
        )
    ops = [record for record in document["records"] if record["kind"] == "op"]
    if ops or document.get("op_benchmarks"):
        lines += ["", "op benchmarks:"]
        for entry in document.get("op_benchmarks", []):
            reason = f": {entry['reason']}" if entry["reason"] else ""
            result = entry.get("result") or {}
            headline = "".join(
                f"  {key} {value:.3g}" for key, value in result.items()
                if "speedup" in key and isinstance(value, (int, float)) and not isinstance(value, bool)
            )
            lines.append(f"  {entry['name']:<18}{entry['status']}{reason}{headline}  ({entry['seconds']:.0f} s)")
        for record in ops:
            extra = "  ".join(
                f"{key} {record[key]:.3g}" for key in ("speedup", "tflops", "gbps", "bandwidth_fraction") if key in record
            )
            lines.append(
                f"  {record['benchmark']:<18}{record['name']:<34}{record['provider']:<20}{record['dtype']:<6}"
                f"{_fmt(record.get('ms'), '10.3f')} ms  {extra}"
            )
    return "\n".join(lines)


def plot(document: dict, path: str) -> str | None:
    """Writes a PNG of every provider's speedup over the baseline, one panel per mode. Returns
    None on success, else why no plot was written (matplotlib missing, nothing to plot)."""
    try:
        # A figure of its own with the Agg canvas: pyplot's global backend stays the caller's.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot written"
    baseline = document["settings"]["baseline"]
    by_mode: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for record in document["records"]:
        if record["kind"] == "model" and record["status"] == "ok" and record.get("speedup") is not None:
            case = f"{record['shape']}\n{record['dtype']}"
            by_mode[record["mode"]][record["provider"]][case] = record["speedup"]
    if not by_mode:
        return "no provider ran alongside the baseline: nothing to plot"
    figure = Figure(figsize=(10, 3.6 * len(by_mode)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(by_mode), 1, squeeze=False)
    for axis, (mode, providers) in zip(axes[:, 0], by_mode.items()):
        cases = sorted({case for values in providers.values() for case in values})
        width = 0.8 / max(len(providers), 1)
        for index, (provider, values) in enumerate(sorted(providers.items())):
            positions = [cases.index(case) + index * width for case in values]
            bars = axis.bar(positions, list(values.values()), width=width, label=provider)
            axis.bar_label(bars, fmt="%.2f", fontsize=7)
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], cases, fontsize=8)
        axis.set_ylabel(f"speedup vs {baseline}")
        axis.set_title(mode)
        axis.legend(fontsize=8)
    env = document["environment"]
    figure.suptitle(f"unet_fast on {env['device_name']} (torch {env['torch']}, commit {str(env['commit'])[:12]})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return None


FAST_PROVIDERS = ("unet_fast", "unet_fast-recompute")
COMPARED = ("reference", "reference-cl", "reference-compile")


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(document: dict) -> str:
    """A README-ready table: every measured unet_fast case with its speedup over each reference
    provider (below 1.00x where it loses) and its memory against the eager reference's."""
    env = document["environment"]
    lines = [
        f"{env['device_name']}, {env['date'][:10]}, commit {str(env['commit'])[:12]}, torch {env['torch']}, "
        f"triton {env['triton']}" + ("" if document.get("complete", True) else " (incomplete run)"),
        "",
        "| mode | shape | dtype | provider | ms | vs eager | vs channels_last | vs compile | peak memory vs eager "
        "| saved for backward vs eager |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    model = [r for r in document["records"] if r["kind"] == "model"]
    eager = {(r["mode"], r["shape"], r["dtype"]): r for r in model if r["provider"] == "reference" and r["status"] == "ok"}
    for record in model:
        if record["provider"] not in FAST_PROVIDERS or record["status"] != "ok":
            continue
        base = eager.get((record["mode"], record["shape"], record["dtype"]))
        memory = saved = None
        if base is not None:
            mine, theirs = _memory_mib(record), _memory_mib(base)
            if mine is not None and theirs:
                memory = mine / theirs
            if record["saved_bytes"] is not None and base["saved_bytes"]:
                saved = record["saved_bytes"] / base["saved_bytes"]
        speedups = record["speedups"] or {}
        lines.append(
            f"| {record['mode']} | {record['shape']} | {record['dtype']} | {record['provider']} | {record['ms']:.2f} | "
            + " | ".join(_ratio(speedups.get(other)) for other in COMPARED)
            + f" | {_ratio(memory)} | {_ratio(saved)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m unet_fast.benchmark.report FILE.json...``: the markdown table of each file."""
    import argparse
    import json
    from pathlib import Path

    from unet_fast.benchmark.schema import check

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.files:
        document = json.loads(path.read_text())
        check(document)
        print(markdown(document) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

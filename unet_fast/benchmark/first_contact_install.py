"""The install step of first-contact: the matching prebuilt wheel, else an in-place build.

    python unet_fast/benchmark/first_contact_install.py ROOT OUTDIR SITE [--dry-run] [--deadline S]

Run by file path before anything imports ``unet_fast`` (it imports only the standard library and
torch): a wheel in ``ROOT/dist`` (``make wheel-gpu-server``) whose Python tag and local version
label (``+cu130torch2.11``) match this interpreter and torch is installed with pip into SITE
(``--no-deps --no-index``: no compile, no network); otherwise the extension is built in place for
this GPU's architecture only, with all cores, and the build time recorded. Writes
``OUTDIR/install.json``: status, seconds, how ("wheel" or "build"), the wheel, and ``pythonpath``,
where ``unet_fast`` is to be imported from. The dry run installs nothing and records which wheel
the GPU server (CPython 3.12, torch 2.11, CUDA 13.0) would take from ``dist/``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GPU_SERVER = {"python_tag": "cp312", "label": "cu130torch2.11"}


def wheel_label(torch_version: str, cuda_version: str | None) -> str:
    """The local version label of wheels built against this torch, e.g. "cu130torch2.11"."""
    major_minor = ".".join(torch_version.split("+")[0].split(".")[:2])
    return f"{'cu' + cuda_version.replace('.', '') if cuda_version else 'cpu'}torch{major_minor}"


def matching_wheel(dist: Path, python_tag: str, label: str) -> Path | None:
    """The newest ``unet_fast-<version>+<label>-<python_tag>-...whl`` in ``dist``, or None."""
    candidates = [path for path in dist.glob("unet_fast-*.whl")
                  if f"+{label}-" in path.name and f"-{python_tag}-" in path.name]
    return max(candidates, key=lambda path: path.stat().st_mtime) if candidates else None


def _run(command: list[str], log: Path, deadline_s: float, env: dict | None = None) -> str:
    """"ok", "failed: exit code N" or "failed: deadline"; output appended to ``log``."""
    with log.open("a") as out:
        out.write("=== " + " ".join(command) + "\n")
        out.flush()
        try:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=deadline_s, env=env).returncode
        except subprocess.TimeoutExpired:
            return "failed: deadline"
    return "ok" if code == 0 else f"failed: exit code {code} (install.log)"


def install(root: Path, outdir: Path, site: Path, dry_run: bool, deadline_s: float) -> dict:
    import torch

    started = time.perf_counter()
    python_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    label = wheel_label(torch.__version__, torch.version.cuda)
    record: dict = {"python_tag": python_tag, "label": label}
    if dry_run:
        server = matching_wheel(root / "dist", GPU_SERVER["python_tag"], GPU_SERVER["label"])
        record.update(
            status="skipped: dry run: the tree's own extension is used",
            how="tree", pythonpath=str(root),
            gpu_server_wheel=server.name if server else None,
            wheel=f"GPU server takes {server.name}" if server else "no GPU-server wheel in dist/ (make wheel-gpu-server)",
        )
    else:
        wheel = matching_wheel(root / "dist", python_tag, label)
        log = outdir / "install.log"
        if wheel is not None:
            status = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile",
                           "--upgrade", "--target", str(site), str(wheel)], log, deadline_s)
            record.update(how="wheel", wheel=wheel.name, pythonpath=str(site))
        else:
            capability = torch.cuda.get_device_capability()
            env = dict(os.environ, TORCH_CUDA_ARCH_LIST=f"{capability[0]}.{capability[1]}", UNET_FAST_FORCE_CUDA="1",
                       MAX_JOBS=str(os.cpu_count() or 1))
            status = _run([sys.executable, "setup.py", "build_ext", "--inplace"], log, deadline_s, env)
            record.update(how="build", wheel=f"no wheel for {python_tag} +{label} in dist/: built in place",
                          pythonpath=str(root))
        record["status"] = status
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("site", type=Path)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--deadline", type=float, default=200.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    record = install(args.root.resolve(), args.outdir.resolve(), args.site, args.dry_run, args.deadline)
    (args.outdir / "install.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"[first-contact] environment/install: {record['status']} ({record['seconds']:.1f}s) {record['wheel']}")
    return 0 if not record["status"].startswith("failed") else 1


if __name__ == "__main__":
    sys.exit(main())

"""What a benchmark ran on: device, library versions and the source commit."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = PACKAGE_DIR.parent
COMMIT_ENV = "UNET_FAST_COMMIT"
COMMIT_FILES = (PACKAGE_DIR / "_commit.txt", REPO_ROOT / "COMMIT")


def git_commit() -> tuple[str | None, str]:
    """(commit, where it came from): ``git rev-parse HEAD`` in the source tree, else the
    ``UNET_FAST_COMMIT`` environment variable, else ``unet_fast/_commit.txt`` or ``COMMIT`` (written
    before copying the tree to a machine without .git). A tree with uncommitted changes gets a
    ``-dirty`` suffix."""
    if (REPO_ROOT / ".git").exists():
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
            ).stdout.strip()
            return commit + ("-dirty" if dirty else ""), "git"
        except (OSError, subprocess.SubprocessError):
            pass
    if os.environ.get(COMMIT_ENV, "").strip():
        return os.environ[COMMIT_ENV].strip(), f"env:{COMMIT_ENV}"
    for path in COMMIT_FILES:
        if path.is_file() and path.read_text().strip():
            return path.read_text().split()[0], f"file:{path.name}"
    return None, "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return name


def device_slug(name: str) -> str:
    """A directory-safe name for ``benchmarks/results/<device>/``, e.g. "nvidia-h100-80gb-hbm3"."""
    keep = "".join(ch.lower() if ch.isalnum() else "-" for ch in name)
    return "-".join(part for part in keep.split("-") if part) or "unknown"


def describe(device: torch.device) -> dict:
    """The ``environment`` block of the benchmark JSON (see ``unet_fast.benchmark.schema``)."""
    from unet_fast import __version__, build_info

    commit, commit_source = git_commit()
    info = build_info()
    name = device_name(device)
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device_type": device.type,
        "device_name": name,
        "device_slug": device_slug(name),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": info["triton_version"],
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "unet_fast": __version__,
        "extension": info["extension"],
        "extension_cuda_kernels": info["cuda_kernels"],
        "commit": commit,
        "commit_source": commit_source,
        "gpu_capability": None,
        "gpu_memory_bytes": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        env["gpu_memory_bytes"] = int(props.total_memory)
    return env

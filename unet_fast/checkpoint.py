"""Atomic training checkpoints: safetensors for tensors, a small JSON for everything else.

Layout under a run directory::

    checkpoints/step_00000400/model.safetensors       model state dict
    checkpoints/step_00000400/optimizer.safetensors   optimizer tensors ("state.<param>.<name>")
    checkpoints/step_00000400/state.json              config, step, RNG states, optimizer
                                                      hyper-parameters, grad-scaler state, extras
    checkpoints/latest                                name of the newest complete checkpoint
    best/checkpoints/step_00000300/...                the best by validation, saved by the trainer
                                                      through save_checkpoint(run_dir / BEST, keep=1)

A checkpoint is written into a temporary directory and renamed into place, then ``latest`` is
replaced atomically, so an interrupted save never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

try:
    from safetensors.torch import load_file, save_file
except ImportError:  # pragma: no cover - exercised only without the dependency
    load_file = save_file = None

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"


def _require_safetensors() -> None:
    if save_file is None:
        raise ModuleNotFoundError("checkpoints need the 'safetensors' package: pip install safetensors",
                                  name="safetensors")


def encode_rng(state: torch.Tensor) -> str:
    """A torch RNG state (uint8 tensor) as base64 text for JSON."""
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def _json_value(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state dict -> (tensors for safetensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for param_id, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": _json_value(state_dict["param_groups"]), "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """Inverse of :func:`split_optimizer_state`."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = value
    for param_id, entries in rest["scalars"].items():
        state.setdefault(int(param_id), {}).update(entries)
    return {"state": state, "param_groups": rest["param_groups"]}


def _fsync(path: Path) -> None:
    """Flush a file's or directory's data to disk, so a rename after it never exposes a file whose
    content a power loss could still drop."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(run_dir, *, model_state: dict, optimizer_state: dict | None, state: dict, step: int, keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``run_dir/checkpoints`` atomically and keep the newest ``keep``.

    ``state`` is JSON-able (config, RNG states, ...); ``step`` is stored in it. ``keep`` >= 1.
    Returns the directory.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1 (the checkpoint just written is kept), got {keep!r}")
    _require_safetensors()
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
        meta = dict(state, step=step)
        if optimizer_state is not None:
            tensors, rest = split_optimizer_state(optimizer_state)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            meta["optimizer"] = rest
        _write_json(tmp / "state.json", meta)
        for tensors_file in tmp.glob("*.safetensors"):
            _fsync(tensors_file)
        _fsync(tmp)
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = root / f".{LATEST}.tmp"
    with open(pointer, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer, root / LATEST)
    _fsync(root)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path) -> Path | None:
    """The checkpoint directory for a run directory (its latest), a checkpoints/ folder, or a
    checkpoint directory itself; None when there is none."""
    path = Path(path)
    if (path / "state.json").is_file() and (path / "model.safetensors").is_file():
        return path
    for root in (path / CHECKPOINTS, path):
        pointer = root / LATEST
        if pointer.is_file():
            candidate = root / pointer.read_text().strip()
            if (candidate / "state.json").is_file():
                return candidate
    return None


def load_checkpoint(path, map_location="cpu") -> tuple[dict, dict | None, dict]:
    """(model state dict, optimizer state dict or None, JSON state) of a checkpoint; ``path`` as in
    :func:`find_checkpoint`. FileNotFoundError naming the path when there is none."""
    _require_safetensors()
    directory = find_checkpoint(path)
    if directory is None:
        raise FileNotFoundError(
            f"no checkpoint found at {path}: expected a run directory written by 'unet-fast train' "
            f"(with {CHECKPOINTS}/{LATEST}) or a checkpoint directory containing state.json and model.safetensors"
        )
    with open(directory / "state.json") as f:
        state = json.load(f)
    device = str(map_location)
    model_state = load_file(str(directory / "model.safetensors"), device=device)
    optimizer_state = None
    if "optimizer" in state and (directory / "optimizer.safetensors").is_file():
        tensors = load_file(str(directory / "optimizer.safetensors"), device=device)
        optimizer_state = join_optimizer_state(tensors, state["optimizer"])
    return model_state, optimizer_state, state

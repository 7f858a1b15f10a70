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
replaced atomically; directories leave by being renamed aside first. Every ``step_*`` directory is
thus complete at every instant, and a save killed at any point leaves ``latest`` naming a complete
checkpoint (or, in the instant a same-step checkpoint is replaced, dangling: the newest complete
one is then used). ``state.json`` records the SHA-256 of each tensors file, so a truncated or
corrupted file is found on load.

Loading reads only JSON and safetensors, never pickles (``torch.load`` could run arbitrary code
from a file). Every problem raises :class:`unet_fast.errors.CheckpointError` naming the file.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from unet_fast.errors import CheckpointError, CheckpointNotFoundError

try:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors
    from safetensors.torch import save_file
except ImportError:  # pragma: no cover - exercised only without the dependency
    SafetensorError, load_tensors, save_file = Exception, None, None

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"
STATE = "state.json"
MODEL = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
# Leftovers of killed saves: a temporary checkpoint being written, one renamed aside to be deleted.
TEMPORARY_PREFIXES = (".step_", ".trash.")
POINTER_DRAFT = f".{LATEST}.tmp"  # the next content of ``latest``, renamed over it
# How pickle-based files start: the protocol opcode (protocols 2 to 5), or the zip archive torch.save
# writes. A safetensors file starts with its header's 8-byte length and then "{".
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


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
    """Inverse of :func:`split_optimizer_state`; KeyError or ValueError for malformed input."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        prefix, param_id, name = key.split(".", 2)
        if prefix != "state":
            raise ValueError(f"unexpected tensor name {key!r}")
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


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _remove(directory: Path) -> None:
    """Delete a directory by renaming it aside first, so no ``step_*`` is ever seen half-deleted."""
    trash = directory.with_name(f".trash.{directory.name}.{os.getpid()}")
    os.replace(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _clear_leftovers(root: Path) -> None:
    """Remove what killed saves left: temporary and renamed-aside directories, a pointer draft.
    One process writes a run's checkpoints (rank 0), so none of these is in use."""
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith(TEMPORARY_PREFIXES):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name == POINTER_DRAFT:
            path.unlink(missing_ok=True)


def save_checkpoint(run_dir, *, model_state: dict, optimizer_state: dict | None, state: dict, step: int, keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``run_dir/checkpoints`` atomically and keep the newest ``keep``.

    ``state`` is JSON-able (config, RNG states, ...); ``step`` and the tensors files' SHA-256 are
    stored in it. ``keep`` >= 1: the checkpoint just written and the ``keep - 1`` newest older ones
    stay. Returns the directory.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1 (the checkpoint just written is kept), got {keep!r}")
    _require_safetensors()
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(root)
    name = f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(tmp / MODEL))
        meta = dict(state, step=step)
        if optimizer_state is not None:
            tensors, rest = split_optimizer_state(optimizer_state)
            save_file(tensors, str(tmp / OPTIMIZER))
            meta["optimizer"] = rest
        meta["files"] = {}
        for tensors_file in sorted(tmp.glob("*.safetensors")):
            _fsync(tensors_file)
            meta["files"][tensors_file.name] = {"sha256": _sha256(tensors_file), "bytes": tensors_file.stat().st_size}
        _write_json(tmp / STATE, meta)
        _fsync(tmp)
        final = root / name
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = root / POINTER_DRAFT
    with open(pointer, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer, root / LATEST)
    _fsync(root)
    older = sorted(p for p in root.glob("step_*") if p.is_dir() and p.name < name)
    for old in older[: max(len(older) - (keep - 1), 0)]:
        _remove(old)
    return final


def _newest_complete(root: Path) -> Path | None:
    steps = sorted(p for p in root.glob("step_*") if (p / STATE).is_file())
    return steps[-1] if steps else None


def find_checkpoint(path) -> Path | None:
    """The checkpoint directory for a run directory (its latest), a checkpoints/ folder, or a
    checkpoint directory itself; None when there is none.

    When ``latest`` is missing or names no checkpoint (a save killed at its one unguarded instant,
    or before its first pointer), the newest ``step_*`` directory is used.
    """
    path = Path(path)
    if (path / STATE).is_file():
        return path
    for root in (path / CHECKPOINTS, path):
        pointer = root / LATEST
        if pointer.is_file():
            candidate = root / pointer.read_text().strip()
            if candidate.name and (candidate / STATE).is_file():
                return candidate
        if root.is_dir():
            newest = _newest_complete(root)
            if newest is not None:
                return newest
    return None


def _not_found(path: Path) -> CheckpointNotFoundError:
    if not path.exists():
        return CheckpointNotFoundError(f"checkpoint {path}: no such file or directory")
    pickles = sorted(p.name for p in ([path] if path.is_file() else path.iterdir()) if p.suffix in (".pt", ".pth", ".ckpt", ".pkl"))
    if pickles:
        return CheckpointNotFoundError(
            f"checkpoint {path}: {', '.join(pickles[:3])} would have to be unpickled, which can run arbitrary code; "
            f"unet_fast reads only its own checkpoints ({STATE} with {MODEL}, as 'unet-fast train' writes them)"
        )
    return CheckpointNotFoundError(
        f"no checkpoint found at {path}: expected a run directory written by 'unet-fast train' "
        f"(with {CHECKPOINTS}/{LATEST}) or a checkpoint directory containing {STATE} and {MODEL}"
    )


def read_state(directory, required: tuple[str, ...] = ()) -> dict:
    """The JSON state of a checkpoint directory; ``CheckpointError`` naming the file when it is not
    valid JSON, not a checkpoint's state, or lacks one of the ``required`` keys."""
    file = Path(directory) / STATE
    try:
        state = json.loads(file.read_bytes())
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{file}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{file}: not valid JSON, the file is truncated or corrupted ({error})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{file}: not a unet_fast checkpoint state (expected a JSON object with an integer 'step')")
    files = state.get("files", {})
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str) for v in files.values()
    ):
        raise CheckpointError(f"{file}: the 'files' entry must map file names to their 'bytes' and 'sha256'")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"{file}: the keys {missing} are missing (expected a state written by 'unet-fast train')")
    return state


def _read_tensors(file: Path, expected: dict | None, device: str) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file, after checking it against its recorded size and SHA-256."""
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (the checkpoint's {STATE} refers to it)")
    data = file.read_bytes()
    if data[8:9] != b"{" and data.startswith(PICKLE_MAGIC):
        raise CheckpointError(f"{file}: a pickle (torch.save) file, refused: unpickling can run arbitrary code; "
                              f"checkpoints hold tensors in safetensors files only")
    if expected is not None:
        if len(data) != expected["bytes"]:
            raise CheckpointError(f"{file}: {len(data)} bytes but {expected['bytes']} were written: the file is truncated or was replaced")
        if hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise CheckpointError(f"{file}: the content does not match the SHA-256 recorded in {STATE}: the file is corrupted")
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError, OSError) as error:
        raise CheckpointError(f"{file}: not a valid safetensors file, truncated or corrupted ({error})") from None
    return {k: v.to(device) for k, v in tensors.items()}


def _older_hint(directory: Path) -> str:
    older = sorted(p.name for p in directory.parent.glob("step_*") if p.name < directory.name and (p / STATE).is_file())
    return f"; an earlier checkpoint is {directory.parent / older[-1]}" if older else ""


def load_checkpoint(path, map_location="cpu", required: tuple[str, ...] = ()) -> tuple[dict, dict | None, dict]:
    """(model state dict, optimizer state dict or None, JSON state) of a checkpoint; ``path`` as in
    :func:`find_checkpoint`, ``required`` the state keys the caller needs. ``CheckpointNotFoundError``
    (a ``FileNotFoundError``) when there is none, ``CheckpointError`` naming the file when one is
    damaged, refused or incomplete."""
    _require_safetensors()
    path = Path(path)
    directory = find_checkpoint(path)
    if directory is None:
        raise _not_found(path)
    try:
        state = read_state(directory, required)
        files = state.get("files", {})  # absent in checkpoints written before checksums
        device = str(map_location)
        model_state = _read_tensors(directory / MODEL, files.get(MODEL), device)
        optimizer_state = None
        if "optimizer" in state:
            tensors = _read_tensors(directory / OPTIMIZER, files.get(OPTIMIZER), device)
            try:
                optimizer_state = join_optimizer_state(tensors, state["optimizer"])
            except (KeyError, ValueError, TypeError, AttributeError) as error:
                raise CheckpointError(f"{directory / OPTIMIZER}: tensors do not match the optimizer entry of "
                                      f"{STATE} ({type(error).__name__}: {error})") from None
    except CheckpointError as error:
        raise CheckpointError(f"{error}{_older_hint(directory)}") from None
    return model_state, optimizer_state, state


def load_model_state(model: torch.nn.Module, model_state: dict[str, torch.Tensor], checkpoint, model_config: dict | None = None) -> None:
    """``model.load_state_dict(model_state)`` after checking names and shapes; ``CheckpointError``
    naming the checkpoint, the model configuration and each mismatch otherwise (a checkpoint of
    another depth, width or number of classes, or tensors that are not this model's)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in model_state]
    unexpected = [k for k in model_state if k not in expected]
    shapes = [f"{k} is {tuple(model_state[k].shape)} in the file but {tuple(v.shape)} in the model"
              for k, v in expected.items() if k in model_state and model_state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = ([f"{len(missing)} tensor(s) missing, e.g. {missing[0]}"] if missing else []) + (
            [f"{len(unexpected)} unexpected, e.g. {unexpected[0]}"] if unexpected else []) + shapes[:3]
        config = f" ({', '.join(f'{k}={v}' for k, v in model_config.items())})" if model_config else ""
        raise CheckpointError(f"{checkpoint}: the saved tensors are of another model configuration than the "
                              f"model built{config}: " + "; ".join(parts))
    model.load_state_dict(model_state)

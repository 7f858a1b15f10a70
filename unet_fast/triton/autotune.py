"""The tile choice of the GEMM kernels: tuned once per shape, a default that fits the device's shared
memory, never a timing inside a CUDA graph capture, and winners saved to / loaded from a JSON file.

- ``TunedKernel(kernel, tiles, key, family)``: a kernel with one tile list per operand class (the
  first tile of each being the preferred default). ``launch`` picks the tile: a pinned one (tests),
  the interpreter's under TRITON_INTERPRET=1, else the default with UNET_FAST_AUTOTUNE=0, else the
  winner for this key (tuned on first use with ``runtime.time_ms``: each tile once, the short timing).
  Inside a CUDA graph capture no tile is timed: the key's winner if known, else the default.
- ``default_tile(tiles, element_size, shared_limit)``: the first tile whose pipelined operand buffers
  fit ``shared_limit`` bytes per block (sm_86 and sm_89 allow 99 KB, sm_80 163 KB, sm_90 227 KB).
- ``export_winners(path)`` / ``load_winners(path)``: the tuned tiles as JSON, keyed by kernel and
  shape, with the device they were measured on; ``UNET_FAST_AUTOTUNE_CACHE=path`` loads such a file
  before the first launch, so later runs skip tuning. Nothing tuned ships with the package.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import torch

from unet_fast.triton.runtime import autotune_enabled, time_ms, triton_interpreting

AUTOTUNE_CACHE_ENV = "UNET_FAST_AUTOTUNE_CACHE"
CACHE_FORMAT = 1
_KERNELS: dict[str, "TunedKernel"] = {}
_LOADED: set[str] = set()


def kernel_name(kernel) -> str:
    return getattr(kernel, "__name__", None) or kernel.fn.__name__


def tile_shared_bytes(tile: dict, element_size: int) -> int:
    """Shared memory of a tile's pipelined operand buffers: ``num_stages`` copies of the
    [rows, depth] and [depth, cols] blocks (block names in that order: rows, cols, depth)."""
    rows, cols, depth = [v for k, v in tile.items() if k.startswith("BLOCK")]
    return tile["num_stages"] * (rows * depth + depth * cols) * element_size


def default_tile(tiles: list[dict], element_size: int, shared_limit: int | None) -> dict:
    """The first tile that fits ``shared_limit`` bytes per block (None: no limit), else the smallest."""
    if shared_limit is None:
        return dict(tiles[0])
    fitting = [t for t in tiles if tile_shared_bytes(t, element_size) <= shared_limit]
    return dict(fitting[0] if fitting else min(tiles, key=lambda t: tile_shared_bytes(t, element_size)))


def device_shared_limit(device: torch.device) -> int | None:
    """The opt-in shared memory per block of a CUDA device (None elsewhere)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).shared_memory_per_block_optin


def tuned_kernel(name: str) -> "TunedKernel | None":
    """The TunedKernel of a Triton function name, or None."""
    return _KERNELS.get(name)


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


ELEMENT_SIZE = {"16bit": 2, "tf32": 4, "ieee": 4}  # operand bytes per operand class


def operand_class(dtype: torch.dtype, input_precision: str) -> str:
    """Which tile list serves a dot: "16bit" (fp16/bf16 operands), "tf32" or "ieee" (fp32 operands)."""
    if dtype in (torch.float16, torch.bfloat16):
        return "16bit"
    return "tf32" if input_precision == "tf32" else "ieee"


class TunedKernel:
    """A GEMM kernel with its tile lists per operand class (see the module docstring)."""

    def __init__(self, kernel, tiles: dict, key: list[str], family: str):
        self.kernel, self.tiles, self.key, self.family = kernel, tiles, key, family
        self.name = kernel_name(kernel)
        self.winners: dict[tuple, dict] = {}  # (class, key values...) -> tile
        self._pinned = None
        _KERNELS[self.name] = self

    def fixed_tile(self, klass: str, shared_limit: int | None = None) -> dict | None:
        """The tile when not tuned: the pinned one, the interpreter's under TRITON_INTERPRET=1, the
        default (``default_tile`` for ``shared_limit``) with UNET_FAST_AUTOTUNE=0; None: tune."""
        if self._pinned is not None:
            return dict(self._pinned)
        if triton_interpreting():
            return dict(INTERPRETER_TILES[self.family])
        if autotune_enabled():
            return None
        return default_tile(self.tiles[klass], ELEMENT_SIZE[klass], shared_limit)

    @contextlib.contextmanager
    def pinned(self, tile: dict):
        """Every launch inside runs ``tile`` (one of ``tiles``' entries): the tile sweep's tests."""
        self._pinned = tile
        try:
            yield
        finally:
            self._pinned = None

    def choose_tile(self, klass: str, key: tuple, device: torch.device, run_tile) -> dict:
        """The tile for ``key``: fixed, known, the default under graph capture, or tuned now with
        ``run_tile(tile)`` timed for each tile that fits the device."""
        limit = device_shared_limit(device)
        tile = self.fixed_tile(klass, limit)
        if tile is not None:
            return tile
        _load_cache_from_environment()
        winner = self.winners.get(key)
        if winner is not None:
            return dict(winner)
        if _capturing():  # timing inside a capture would record the timing launches into the graph
            return default_tile(self.tiles[klass], ELEMENT_SIZE[klass], limit)
        size = ELEMENT_SIZE[klass]
        candidates = [t for t in self.tiles[klass] if limit is None or tile_shared_bytes(t, size) <= limit]
        candidates = candidates or [default_tile(self.tiles[klass], size, limit)]
        times = {}
        for index, candidate in enumerate(candidates):
            try:
                times[index] = time_ms(lambda: run_tile(candidate))
            except Exception as error:  # a tile that does not fit the device is not a winner
                if type(error).__name__ != "OutOfResources":
                    raise
        if not times:
            raise RuntimeError(f"{self.name}: no tile of class {klass!r} runs on {device}")
        self.winners[key] = dict(candidates[min(times, key=times.get)])
        return dict(self.winners[key])

    def launch(self, grid, *args, dtype: torch.dtype, INPUT_PRECISION: str, **constexprs) -> None:
        klass = operand_class(dtype, INPUT_PRECISION)
        named = dict(zip(getattr(self.kernel, "arg_names", ()), args), INPUT_PRECISION=INPUT_PRECISION, **constexprs)
        key = (klass, *(named.get(name) for name in self.key))
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))

        def run_tile(tile: dict) -> None:
            self.kernel[grid(tile)](*args, INPUT_PRECISION=INPUT_PRECISION, **constexprs, **tile)

        run_tile(self.choose_tile(klass, key, device, run_tile))


# the interpreter runs one program at a time in numpy: few, moderately sized programs are fastest
INTERPRETER_TILES = {"gemm": {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 16},
                     "wgrad": {"BLOCK_CI": 32, "BLOCK_CO": 32, "BLOCK_M": 64}}


# --- the winners as a file -------------------------------------------------------------------------

def _device_name() -> str | None:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def export_winners(path: str | os.PathLike) -> str | None:
    """Writes every kernel's tuned tiles to ``path`` (merged into the entries already there for the
    same device); returns the path, or None when nothing was tuned."""
    entries = [{"kernel": name, "key": list(key), "tile": tile}
               for name, kernel in sorted(_KERNELS.items()) for key, tile in kernel.winners.items()]
    if not entries:
        return None
    path = Path(path)
    device = _device_name()
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("device") == device:
            seen = {(e["kernel"], tuple(e["key"])) for e in entries}
            entries += [e for e in previous.get("winners", []) if (e["kernel"], tuple(e["key"])) not in seen]
    document = {"format": CACHE_FORMAT, "device": device, "winners": entries}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=1) + "\n")
    partial.replace(path)
    return str(path)


def load_winners(path: str | os.PathLike) -> int:
    """Loads tuned tiles written by ``export_winners``; returns how many were taken. ValueError for a
    file that is not such a document; a file measured on another device is ignored with a warning
    (its tiles may not fit this one)."""
    try:
        document = json.loads(Path(path).read_text())
        if document.get("format") != CACHE_FORMAT or not isinstance(document.get("winners"), list):
            raise ValueError(f"format {document.get('format')!r}, expected {CACHE_FORMAT} with a 'winners' list")
        entries = [(e["kernel"], tuple(e["key"]), dict(e["tile"])) for e in document["winners"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{AUTOTUNE_CACHE_ENV} / autotune cache {str(path)!r} is not an autotune.json "
                         f"written by unet_fast ({error})") from None
    if document.get("device") != _device_name():
        warnings.warn(f"autotune cache {str(path)!r} was measured on {document.get('device')!r}, not on "
                      f"{_device_name()!r}: ignored", stacklevel=2)
        return 0
    taken = 0
    for name, key, tile in entries:
        kernel = _KERNELS.get(name)
        if kernel is not None and key and key[0] in kernel.tiles and tile in kernel.tiles[key[0]]:
            kernel.winners[key] = tile
            taken += 1
    return taken


def _load_cache_from_environment() -> None:
    path = os.environ.get(AUTOTUNE_CACHE_ENV, "").strip()
    if path and path not in _LOADED:
        _LOADED.add(path)
        load_winners(path)

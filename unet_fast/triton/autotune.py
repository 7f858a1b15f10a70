"""The tile choice of the GEMM kernels: tuned once per shape, a default that fits the device's shared
memory, never a timing inside a CUDA graph capture, and winners saved to / loaded from a JSON file.

- ``TunedKernel(kernel, tiles, key, family, channel_block, channels)``: a kernel with one tile list
  per operand class (the first tile of each being the preferred default), the block that tiles its
  input channels and their count from a launch's arguments. ``launch`` picks the tile: a pinned one
  (tests), the interpreter's under TRITON_INTERPRET=1, else the default with UNET_FAST_AUTOTUNE=0,
  else the winner for this key (tuned on first use with ``runtime.time_ms``: each tile once, the
  short timing). Inside a CUDA graph capture no tile is timed: the key's winner if known, else the
  default.
- ``suitable_tiles(tiles, element_size, shared_limit, channel_block, channels, extra_operand)``: the
  tiles whose pipelined operand buffers fit ``shared_limit`` bytes per block (sm_86 and sm_89 allow
  99 KB, sm_80 163 KB, sm_90 227 KB) and whose channel block suits ``channels`` (the 1-channel first
  layer takes the narrowest); ``default_tile``: the first of them. The runtime (default, capture and
  tuning candidates) and ``unet_fast.tools.aot_check`` both choose with them.
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


def tile_shared_bytes(tile: dict, element_size: int, extra_operand: str | None = None) -> int:
    """Shared memory of a tile's pipelined operand buffers: ``num_stages - 1`` copies (the loads the
    pipeliner keeps in flight) of the [rows, depth] and [depth, cols] blocks (block names in that
    order: rows, cols, depth), and of the ``extra_operand`` block ("rows" or "cols") once more. Within
    a few KB of reduction scratch of what Triton allocates (``aot_check`` reads the compiled size)."""
    rows, cols, depth = [v for k, v in tile.items() if k.startswith("BLOCK")]
    extra = {None: 0, "rows": rows * depth, "cols": depth * cols}[extra_operand]
    return max(tile["num_stages"] - 1, 1) * (rows * depth + depth * cols + extra) * element_size


def suitable_tiles(tiles: list[dict], element_size: int, shared_limit: int | None, channel_block: str | None = None,
                   channels: int | None = None, extra_operand: str | None = None) -> list[dict]:
    """The tiles that fit ``shared_limit`` bytes per block (None: no limit), else the smallest one;
    given ``channels``, of those the ones whose ``channel_block`` is at most ``channels`` rounded up
    to a power of two, else the ones with the narrowest: a block wider than the layer's channels
    computes masked zeros, and its larger fragments spill (the 1-channel first layer's 128-wide ones
    do). The default tile is the first; autotuning times them all."""
    def size(tile):
        return tile_shared_bytes(tile, element_size, extra_operand)

    fitting = [t for t in tiles if shared_limit is None or size(t) <= shared_limit] or [min(tiles, key=size)]
    if channels is not None:
        narrowest = min(t[channel_block] for t in fitting)
        padded = 1 << max(channels - 1, 0).bit_length()
        fitting = [t for t in fitting if t[channel_block] <= max(padded, narrowest)]
    return [dict(t) for t in fitting]


def default_tile(tiles: list[dict], element_size: int, shared_limit: int | None, channel_block: str | None = None,
                 channels: int | None = None, extra_operand: str | None = None) -> dict:
    """The first of ``suitable_tiles``."""
    return suitable_tiles(tiles, element_size, shared_limit, channel_block, channels, extra_operand)[0]


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

    def __init__(self, kernel, tiles: dict, key: list[str], family: str, channel_block: str | None = None,
                 channels=None, doubled_operand: tuple[str, str] | None = None):
        """``channel_block``: the block size (a key of every tile) that tiles the input channels;
        ``channels(named)``: their count from a launch's arguments by name (without them the tile
        choice ignores the channel count); ``doubled_operand``: (flag, "rows" or "cols"), the operand
        block that launches with that constexpr flag set load a second time (a ReLU mask's y)."""
        self.kernel, self.tiles, self.key, self.family = kernel, tiles, key, family
        self.channel_block, self.channels, self.doubled_operand = channel_block, channels, doubled_operand
        self.name = kernel_name(kernel)
        self.winners: dict[tuple, dict] = {}  # (class, key values...) -> tile
        self._pinned = None
        _KERNELS[self.name] = self

    def named_arguments(self, args: tuple, **constexprs) -> dict:
        """A launch's arguments by name: the kernel's positional ones and the constexprs."""
        return dict(zip(getattr(self.kernel, "arg_names", ()), args), **constexprs)

    def tile_channels(self, named: dict) -> int | None:
        """The channel count the default tile is chosen for: the launch's (``channels``), capped at
        the widest channel block of any of the tiles (wider layers all choose alike); None without
        ``channels``."""
        if self.channels is None:
            return None
        widest = max(tile[self.channel_block] for tiles in self.tiles.values() for tile in tiles)
        return min(max(self.channels(named), 1), widest)

    def suitable_tiles(self, klass: str, shared_limit: int | None, channels: int | None = None,
                       flags: dict | None = None) -> list[dict]:
        """``suitable_tiles`` of ``klass``'s tiles for a per-block shared-memory limit, a channel count
        (``tile_channels``) and a launch's constexpr ``flags`` (or all its arguments by name)."""
        extra = None
        if self.doubled_operand is not None and (flags or {}).get(self.doubled_operand[0]):
            extra = self.doubled_operand[1]
        return suitable_tiles(self.tiles[klass], ELEMENT_SIZE[klass], shared_limit, self.channel_block, channels, extra)

    def default_tile(self, klass: str, shared_limit: int | None, channels: int | None = None,
                     flags: dict | None = None) -> dict:
        """The first of ``suitable_tiles``: the tile without tuning."""
        return self.suitable_tiles(klass, shared_limit, channels, flags)[0]

    def fixed_tile(self, klass: str, shared_limit: int | None = None, channels: int | None = None,
                   flags: dict | None = None) -> dict | None:
        """The tile when not tuned: the pinned one, the interpreter's under TRITON_INTERPRET=1, the
        default (``default_tile``) with UNET_FAST_AUTOTUNE=0; None: tune."""
        if self._pinned is not None:
            return dict(self._pinned)
        if triton_interpreting():
            return dict(INTERPRETER_TILES[self.family])
        if autotune_enabled():
            return None
        return self.default_tile(klass, shared_limit, channels, flags)

    @contextlib.contextmanager
    def pinned(self, tile: dict):
        """Every launch inside runs ``tile`` (one of ``tiles``' entries): the tile sweep's tests."""
        self._pinned = tile
        try:
            yield
        finally:
            self._pinned = None

    def choose_tile(self, klass: str, key: tuple, device: torch.device, run_tile, named: dict) -> dict:
        """The tile for ``key``: fixed, known, the default under graph capture, or tuned now with
        ``run_tile(tile)`` timed for each of the ``suitable_tiles`` for the device and the launch's
        arguments ``named``."""
        limit = device_shared_limit(device)
        channels = self.tile_channels(named)
        tile = self.fixed_tile(klass, limit, channels, named)
        if tile is not None:
            return tile
        _load_cache_from_environment()
        winner = self.winners.get(key)
        if winner is not None:
            return dict(winner)
        candidates = self.suitable_tiles(klass, limit, channels, named)
        if _capturing():  # timing inside a capture would record the timing launches into the graph
            return candidates[0]
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
        named = self.named_arguments(args, INPUT_PRECISION=INPUT_PRECISION, **constexprs)
        key = (klass, *(named.get(name) for name in self.key))
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))

        def run_tile(tile: dict) -> None:
            self.kernel[grid(tile)](*args, INPUT_PRECISION=INPUT_PRECISION, **constexprs, **tile)

        run_tile(self.choose_tile(klass, key, device, run_tile, named))


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

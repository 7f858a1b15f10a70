"""The GEMM kernels' tile choice (unet_fast.triton.autotune): default by shared memory, tuning once per
shape, never inside a CUDA graph capture, and the winners written to and read from autotune.json."""
import json

import pytest
import torch

from unet_fast.triton import autotune
from unet_fast.triton.autotune import AUTOTUNE_CACHE_ENV, TunedKernel, default_tile, export_winners, load_winners
from unet_fast.triton.conv3x3_relu_tiles import GEMM_TILES, WGRAD_TILES
from unet_fast.triton.runtime import AUTOTUNE_ENV

TILES = {klass: [{"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3},
                 {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}]
         for klass in ("16bit", "tf32", "ieee")}


class FakeKernel:
    """Stands in for a @triton.jit function: records each launch's tile."""

    arg_names = ["x", "M"]

    def __init__(self, name):
        self.__name__ = name
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append(kwargs["BLOCK_M"])


@pytest.fixture
def gpu_like(monkeypatch):
    """Tuning enabled, not interpreting, an 'x' on the CPU (no shared-memory limit), timings fake."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv(AUTOTUNE_ENV, "1")
    monkeypatch.delenv(AUTOTUNE_CACHE_ENV, raising=False)
    timed = []

    def fake_time(fn):
        fn()
        timed.append(1)
        return 2.0 if len(timed) == 1 else 1.0  # the second tile wins

    monkeypatch.setattr(autotune, "time_ms", fake_time)
    return timed


def _launch(tuned, m):
    tuned.launch(lambda tile: (1,), torch.zeros(1), m, dtype=torch.float16, INPUT_PRECISION="ieee")


def test_tunes_each_shape_once_and_keeps_the_fastest(gpu_like):
    tuned = TunedKernel(FakeKernel("fake_tune_kernel"), TILES, ["M"], "gemm")
    _launch(tuned, 1000)
    assert len(gpu_like) == 2 and tuned.kernel.launches == [128, 64, 64]  # two timed, then the winner
    _launch(tuned, 1000)
    assert len(gpu_like) == 2 and tuned.kernel.launches[-1] == 64
    assert tuned.winners == {("16bit", 1000): TILES["16bit"][1]}


def test_no_tuning_inside_a_cuda_graph_capture(gpu_like, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    tuned = TunedKernel(FakeKernel("fake_capture_kernel"), TILES, ["M"], "gemm")
    _launch(tuned, 1000)
    assert gpu_like == [] and tuned.kernel.launches == [128] and tuned.winners == {}  # the default, untimed
    tuned.winners[("16bit", 2000)] = TILES["16bit"][1]
    _launch(tuned, 2000)
    assert gpu_like == [] and tuned.kernel.launches[-1] == 64  # a known winner is used


def _shared_bytes(tile, element_size):
    """By hand: num_stages buffers of the [rows, depth] and [depth, cols] operand blocks."""
    names = [k for k in tile if k.startswith("BLOCK")]
    rows, cols, depth = (tile[n] for n in names)
    return tile["num_stages"] * (rows * depth + depth * cols) * element_size


@pytest.mark.parametrize("limit", [64 * 1024, 99 * 1024, 163 * 1024, 227 * 1024])
@pytest.mark.parametrize("tiles, klass, size", [(GEMM_TILES, "16bit", 2), (GEMM_TILES, "tf32", 4), (WGRAD_TILES, "16bit", 2)])
def test_default_tile_is_the_first_that_fits_the_shared_memory(tiles, klass, size, limit):
    chosen = default_tile(tiles[klass], size, limit)
    fitting = [t for t in tiles[klass] if _shared_bytes(t, size) <= limit]
    assert chosen == (fitting[0] if fitting else min(tiles[klass], key=lambda t: _shared_bytes(t, size)))
    assert default_tile(tiles[klass], size, None) == tiles[klass][0]


def test_default_tile_without_autotune_reads_the_limit(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv(AUTOTUNE_ENV, "0")
    tuned = TunedKernel(FakeKernel("fake_default_kernel"), TILES, ["M"], "gemm")
    assert tuned.fixed_tile("16bit", None) == TILES["16bit"][0]
    assert tuned.fixed_tile("16bit", 64 * 1024) == TILES["16bit"][1]  # 96 KB of buffers do not fit 64 KB


def test_winners_round_trip_through_the_file_and_the_environment(gpu_like, tmp_path, monkeypatch):
    tuned = TunedKernel(FakeKernel("fake_file_kernel"), TILES, ["M"], "gemm")
    _launch(tuned, 4096)
    path = tmp_path / "autotune.json"
    assert export_winners(path) == str(path)
    document = json.loads(path.read_text())
    assert {"kernel": "fake_file_kernel", "key": ["16bit", 4096], "tile": TILES["16bit"][1]} in document["winners"]
    tuned.winners.clear()
    assert load_winners(path) >= 1 and tuned.winners[("16bit", 4096)] == TILES["16bit"][1]
    tuned.winners.clear()
    monkeypatch.setenv(AUTOTUNE_CACHE_ENV, str(path))
    before = len(gpu_like)
    _launch(tuned, 4096)
    assert len(gpu_like) == before and tuned.kernel.launches[-1] == 64  # loaded, not tuned again


def test_bad_or_foreign_autotune_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 99}')
    with pytest.raises(ValueError, match="bad.json.*not an autotune.json"):
        load_winners(bad)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"format": 1, "device": "Some Other GPU", "winners": []}))
    with pytest.warns(UserWarning, match="Some Other GPU"):
        assert load_winners(foreign) == 0

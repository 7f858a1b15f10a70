"""The GEMM kernels' tile choice (unet_fast.triton.autotune): default by shared memory, tuning once per
shape, never inside a CUDA graph capture, and the winners written to and read from autotune.json."""
import json

import pytest
import torch

from unet_fast.triton import autotune
from unet_fast.triton.autotune import AUTOTUNE_CACHE_ENV, TunedKernel, default_tile, export_winners, load_winners
from unet_fast.triton.conv3x3_relu_tiles import GEMM_TILES, WGRAD_TILES, narrower_source_channels
from unet_fast.triton.runtime import AUTOTUNE_ENV

TILES = {klass: [{"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3},
                 {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}]
         for klass in ("16bit", "tf32", "ieee")}


class FakeKernel:
    """Stands in for a @triton.jit function: records each launch's tile."""

    arg_names = ["x", "M", "C0", "C1"]

    def __init__(self, name):
        self.__name__ = name
        self.launches = []
        self.tiles = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.launches.append(kwargs["BLOCK_M"])
            self.tiles.append({k: v for k, v in kwargs.items() if k.startswith("BLOCK") or k.startswith("num_")})
        return run


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


def _shared_bytes(tile, element_size, masked_block=None):
    """By hand: num_stages - 1 buffers in flight of the [rows, depth] and [depth, cols] operand blocks
    (and of the ReLU mask's y, shaped like one of them). aot_check reads what Triton 3.8 allocated:
    122880 B for the bf16 dgrad tile 128x64x64 at 4 stages with its mask, 3 * (2 + 1 + 2) * 8 KB."""
    names = [k for k in tile if k.startswith("BLOCK")]
    rows, cols, depth = (tile[n] for n in names)
    blocks = {"rows": rows * depth, "cols": depth * cols}
    return (tile["num_stages"] - 1) * (rows * depth + depth * cols + blocks.get(masked_block, 0)) * element_size


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
    assert tuned.fixed_tile("16bit", 60 * 1024) == TILES["16bit"][1]  # 64 KB of buffers do not fit 60 KB


SM86_SHARED = 101376  # bytes per block on sm_86 / sm_89
SM80_SHARED = 166912


@pytest.mark.parametrize("limit", [None, SM86_SHARED, SM80_SHARED])
def test_a_one_channel_layer_gets_the_narrowest_channel_block(limit):
    # the first layer (C_in = 1, K = 9): a 64-deep K block or a 128-row channel block would be
    # masked zeros, and the 128x128 tiles spill on sm_86 (aot_check); the table's narrow tiles fit
    forward = default_tile(GEMM_TILES["16bit"], 2, limit, "BLOCK_K", 1)
    assert forward == {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 16, "num_warps": 4, "num_stages": 4}
    assert default_tile(GEMM_TILES["tf32"], 4, limit, "BLOCK_K", 1)["BLOCK_K"] == 16
    assert default_tile(WGRAD_TILES["16bit"], 2, limit, "BLOCK_CI", 1)["BLOCK_CI"] == 32
    assert default_tile(WGRAD_TILES["tf32"], 4, limit, "BLOCK_CI", 1)["BLOCK_CI"] == 32
    # three channels (RGB) round up to the same narrowest block
    assert default_tile(GEMM_TILES["16bit"], 2, limit, "BLOCK_K", 3) == forward


@pytest.mark.parametrize("limit", [None, SM86_SHARED, SM80_SHARED])
@pytest.mark.parametrize("tiles, klass, size, block", [(GEMM_TILES, "16bit", 2, "BLOCK_K"), (GEMM_TILES, "tf32", 4, "BLOCK_K"),
                                                       (WGRAD_TILES, "16bit", 2, "BLOCK_CI"), (WGRAD_TILES, "ieee", 4, "BLOCK_CI")])
def test_default_tile_for_wide_layers_is_the_first_that_fits(tiles, klass, size, block, limit):
    # channels at least the widest block: the channel count changes nothing
    widest = max(t[block] for t in tiles[klass])
    for channels in (widest, 4 * widest):
        assert default_tile(tiles[klass], size, limit, block, channels) == default_tile(tiles[klass], size, limit)


@pytest.mark.parametrize("limit", [SM86_SHARED, SM80_SHARED])
@pytest.mark.parametrize("channels", [1, 16, 48, 64, 100, 128, 512])
def test_default_tile_fits_the_shared_memory_and_the_channels(channels, limit):
    for tiles, size, block in ((GEMM_TILES["16bit"], 2, "BLOCK_K"), (WGRAD_TILES["16bit"], 2, "BLOCK_CI"),
                               (GEMM_TILES["tf32"], 4, "BLOCK_K"), (WGRAD_TILES["tf32"], 4, "BLOCK_CI")):
        chosen = default_tile(tiles, size, limit, block, channels)
        assert chosen in tiles and _shared_bytes(chosen, size) <= limit
        # no narrower block would waste less: the block is within 2x of the channels, or the narrowest
        narrowest = min(t[block] for t in tiles if _shared_bytes(t, size) <= limit)
        assert chosen[block] < 2 * channels or chosen[block] == narrowest, (chosen, channels)


@pytest.mark.parametrize("limit", [SM86_SHARED, SM80_SHARED])
def test_a_relu_masked_gradient_counts_its_second_operand(limit):
    from unet_fast.triton.conv3x3_relu_backward import DGRAD, WGRAD

    for kernel, block, size, klass in ((DGRAD, "rows", 2, "16bit"), (WGRAD, "cols", 2, "16bit"), (DGRAD, "rows", 4, "tf32"),
                                       (WGRAD, "cols", 4, "tf32")):
        for channels in (64, 128):
            masked = kernel.default_tile(klass, limit, channels, {"MASK_RELU": True})
            assert _shared_bytes(masked, size, block) <= limit
            plain = kernel.default_tile(klass, limit, channels, {"MASK_RELU": False})
            assert _shared_bytes(plain, size) <= limit
            assert kernel.tiles[klass].index(plain) <= kernel.tiles[klass].index(masked)
    # on sm_86, the tf32 dgrad's first tile fits only without the mask (96 KB, with it 120 KB)
    first = DGRAD.tiles["tf32"][0]
    if limit == SM86_SHARED:
        assert DGRAD.default_tile("tf32", limit, 128, {"MASK_RELU": False}) == first
        assert DGRAD.default_tile("tf32", limit, 128, {"MASK_RELU": True}) != first


def test_launch_chooses_the_default_for_the_layers_channels(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv(AUTOTUNE_ENV, "0")
    tuned = TunedKernel(FakeKernel("fake_channels_kernel"), GEMM_TILES, ["M"], "gemm",
                        channel_block="BLOCK_K", channels=narrower_source_channels)
    for c0, c1, has_skip in ((0, 1, False), (64, 64, True), (64, 1, True), (0, 256, False)):
        tuned.launch(lambda tile: (1,), torch.zeros(1), 1000, c0, c1, dtype=torch.bfloat16, INPUT_PRECISION="ieee",
                     HAS_SKIP=has_skip)
    assert [t["BLOCK_K"] for t in tuned.kernel.tiles] == [16, 64, 16, 64]
    assert tuned.kernel.tiles[1] == tuned.kernel.tiles[3] == GEMM_TILES["16bit"][0]


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

"""Tile sampling: valid origins, class-balanced oversampling, resumable state; the training tile
that fits the data set."""
import numpy as np
import pytest
import torch

pytest.importorskip("scipy")  # unet_fast.data

from unet_fast import shapes
from unet_fast.data import Tile, TileSampler, fit_tile_size
from unet_fast.errors import DataError


def _rare_label():
    label = np.zeros((100, 120), dtype=np.int64)
    label[80:84, 10:14] = 1  # a rare class in one corner
    return label


def _contains_rare(tile: Tile, size=20) -> bool:
    """Whether the window overlaps the rare block [80, 84) x [10, 14) of sample 0."""
    return tile.index == 0 and tile.top < 84 and tile.top + size > 80 and tile.left < 14 and tile.left + size > 10


def test_uniform_origins_are_valid_and_cover_the_range():
    sampler = TileSampler([torch.zeros(30, 40, dtype=torch.int64), np.zeros((25, 25), dtype=np.int64)], (10, 20), seed=1)
    tiles = [sampler.sample() for _ in range(3000)]
    for t in tiles:
        h, w = (30, 40) if t.index == 0 else (25, 25)
        assert 0 <= t.top <= h - 10 and 0 <= t.left <= w - 20
    first = [t for t in tiles if t.index == 0]
    # Sample 0 has 21 x 21 = 441 origins, sample 1 16 x 6 = 96: drawn in that ratio.
    assert abs(len(first) / len(tiles) - 441 / 537) < 0.03
    assert {t.top for t in first} == set(range(21)) and {t.left for t in first} == set(range(21))


def test_class_balanced_sampling_oversamples_the_rare_class():
    labels = [_rare_label(), np.zeros((60, 60), dtype=np.int64)]
    uniform = TileSampler(labels, 20, seed=0)
    balanced = TileSampler(labels, 20, num_classes=2, class_balanced=True, seed=0)
    rate_uniform = np.mean([_contains_rare(uniform.sample()) for _ in range(2000)])
    rate_balanced = np.mean([_contains_rare(balanced.sample()) for _ in range(2000)])
    # The rare class is in p ~ 3% of windows; balancing draws those windows with total weight 1/2.
    assert rate_uniform < 0.1 and 0.4 < rate_balanced < 0.6
    assert balanced.class_window_fraction[0] == 1.0


def test_tile_larger_than_the_image_has_origin_zero():
    sampler = TileSampler([np.zeros((8, 8), dtype=np.int64)], 16, class_balanced=True)
    assert next(iter(sampler)) == Tile(0, 0, 0)


def test_state_dict_resumes_the_same_stream():
    sampler = TileSampler([_rare_label()], 16, class_balanced=True, seed=3)
    sampler.sample()
    state = sampler.state_dict()
    expected = [sampler.sample() for _ in range(5)]
    other = TileSampler([_rare_label()], 16, class_balanced=True, seed=99)
    other.load_state_dict(state)
    assert [other.sample() for _ in range(5)] == expected


@pytest.mark.parametrize(
    "args,kwargs",
    [
        (([], 8), {}),
        (([np.zeros((4, 4, 4))], 8), {}),
        (([np.zeros((8, 8), dtype=np.int64)], 0), {}),
        (([np.zeros((8, 8), dtype=np.int64)], (4, 4, 4)), {}),
        (([np.full((8, 8), 3)], 4), {"class_balanced": True, "num_classes": 2}),
        (([np.zeros((8, 8), dtype=np.int64)], 4), {"class_balanced": True, "grid_step": 0}),
    ],
)
def test_bad_arguments(args, kwargs):
    with pytest.raises(ValueError):
        TileSampler(*args, **kwargs)


def _largest_fitting_tile(tile_size, smallest_side, depth, padding):
    """Every input size up to tile_size, tried one by one."""
    fitting = [n for n in range(1, tile_size + 1) if shapes.is_valid_input_size(n, depth, padding)
               and shapes.output_size(n, depth, padding) <= smallest_side]
    return max(fitting, default=None)


@pytest.mark.parametrize("depth, padding", [(5, "valid"), (3, "valid"), (4, "same")])
def test_fit_tile_size_is_the_largest_valid_tile_whose_output_fits(depth, padding):
    rng = np.random.default_rng(depth)
    for _ in range(40):
        sizes = [(f"img{i}", tuple(int(v) for v in rng.integers(8, 700, 2))) for i in range(int(rng.integers(1, 4)))]
        tile_size = int(rng.integers(shapes.valid_input_size(1, depth, padding), 700))
        side = min(min(hw) for _, hw in sizes)
        expected = _largest_fitting_tile(tile_size, side, depth, padding)
        if expected is None:
            with pytest.raises(DataError, match="smaller than the .* output window of the smallest valid tile"):
                fit_tile_size(tile_size, sizes, depth, padding)
            continue
        tile, note = fit_tile_size(tile_size, sizes, depth, padding)
        assert tile == expected
        requested = shapes.largest_valid_input_size(tile_size, depth, padding)
        assert (note is None) == (tile == requested)
        if note is not None:
            smallest = min(sizes, key=lambda item: min(item[1]))[0]
            assert f"training image {smallest} " in note and f"{tile} px tiles" in note


def test_the_paper_tile_on_small_images_adapts_with_a_note():
    tile, note = fit_tile_size(572, [("a", (512, 512)), ("small", (300, 420))])
    # Depth 5 valid tiles are 188 + 16k with outputs 184 px smaller: 476 -> 292 fits 300, 492 -> 308 does not.
    assert tile == 476 and shapes.output_size(476) == 292 and shapes.output_size(492) == 308
    assert note is not None and "small (300x420)" in note


def test_trainer_adapts_the_default_tile_to_small_images(tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    from unet_fast.train import TrainConfig, train
    from unet_fast.train.config import DEFAULT_TILE_SIZE

    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "labels").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 52), dtype=np.uint8)).save(tmp_path / "data" / "images" / "a.png")
    Image.fromarray((rng.random((40, 52)) > 0.5).astype(np.uint8)).save(tmp_path / "data" / "labels" / "a.png")
    summary = train(TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "run"), steps=1, base_channels=2,
                                depth=3, device="cpu", progress=False, augment=False))
    assert summary["steps"] == 1
    expected = _largest_fitting_tile(DEFAULT_TILE_SIZE, 40, 3, "valid")
    assert f"training uses {expected} px tiles" in capsys.readouterr().err

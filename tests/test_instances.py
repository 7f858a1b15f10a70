"""Segments from probability maps: scipy's labelling as the reference for connected components,
hand-made shapes for the watershed, bad arguments, and `unet-fast predict --segments`."""
import numpy as np
import pytest

ndimage = pytest.importorskip("scipy.ndimage")
pytest.importorskip("skimage")

from unet_fast.instances import segment  # noqa: E402


def _same_partition(a, b):
    """True when two label images induce the same segments (ids may differ), 0 matching 0."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def _random_probability(seed, shape=(40, 36)):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    return 1.0 / (1.0 + np.exp(-4.0 * field / field.std()))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("connectivity", [4, 8])
def test_connected_components_match_scipy_and_drop_small_segments(seed, connectivity):
    probability = _random_probability(seed)
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    reference, count = ndimage.label(probability >= 0.6, structure)
    segments = segment(probability, "cc", threshold=0.6, connectivity=connectivity)
    assert segments.dtype == np.uint32 and segments.max() == count
    assert _same_partition(segments, reference)
    sizes = np.bincount(reference.ravel())
    big = np.where(sizes[reference] >= 20, reference, 0)
    filtered = segment(probability, "cc", threshold=0.6, connectivity=connectivity, min_size=20)
    assert _same_partition(filtered, big)
    assert filtered.max() == np.count_nonzero(sizes[1:] >= 20)  # renumbered 1..n
    boundary = segment(1.0 - probability, "cc", kind="boundary", threshold=0.6, connectivity=connectivity)
    np.testing.assert_array_equal(boundary, segments)


def test_diagonal_neighbours_join_only_under_8_connectivity():
    cells = np.zeros((6, 6))
    cells[1:3, 1:3] = cells[3:5, 3:5] = 1.0
    assert segment(cells, "cc", connectivity=4).max() == 2
    assert segment(cells, "cc", connectivity=8).max() == 1


def _two_touching_discs():
    yy, xx = np.mgrid[:40, :60]
    discs = ((yy - 20) ** 2 + (xx - 20) ** 2 < 12**2) | ((yy - 20) ** 2 + (xx - 40) ** 2 < 12**2)
    depth = ndimage.distance_transform_edt(discs)
    # Cell probability >= 0.55 on the discs, 1 at the centres, about 0.8 at the neck between them.
    return (0.55 + 0.45 * depth / depth.max()) * discs


@pytest.mark.parametrize("seeds", ["distance", "cores"])
def test_the_watershed_splits_cells_joined_by_a_neck(seeds):
    probability = _two_touching_discs()
    mask = probability >= 0.5
    assert segment(probability, "cc").max() == 1
    segments = segment(probability, "watershed", seeds=seeds, core_threshold=0.9, min_distance=5)
    assert segments.dtype == np.uint32 and segments.max() == 2
    np.testing.assert_array_equal(segments > 0, mask)  # every cell pixel is in a segment, no other
    left, right = segments[20, 20], segments[20, 40]
    assert {left, right} == {1, 2}
    for ids in (left, right):  # each segment is one 4-connected piece
        assert ndimage.label(segments == ids)[1] == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "otsu"}, "method must be one of cc, watershed"),
        ({"connectivity": 6}, "connectivity must be 4 or 8"),
        ({"threshold": 1.5}, r"threshold must lie in \[0, 1\]"),
        ({"min_size": -1}, "min_size must be an integer >= 0"),
        ({"kind": "membrane"}, "kind must be 'cell' or 'boundary'"),
        ({"method": "watershed", "seeds": "random"}, "seeds must be one of distance, cores"),
        ({"method": "watershed", "min_distance": 0}, "min_distance must be an integer >= 1"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        segment(np.full((8, 8), 0.7), **kwargs)


def test_bad_probability_maps_raise():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        segment(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match=r"finite values in \[0, 1\]"):
        segment(np.full((8, 8), 2.0))


def test_predict_writes_segments_next_to_the_class_map(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    Image = pytest.importorskip("PIL.Image")
    from unet_fast.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--out", str(run), "--steps", "1", "--base-channels", "2",
                 "--depth", "2", "--tile-size", "44", "--synthetic-images", "2", "--synthetic-size", "48",
                 "--val-images", "1", "--device", "cpu", "--no-progress"]) == 0
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 34), dtype=np.uint8)).save(images / "a.png")
    out = tmp_path / "pred"
    for method in ("cc", "watershed"):
        assert main(["predict", "--checkpoint", str(run), "--input", str(images), "--out", str(out), "--probs",
                     "--segments", "--segments-method", method, "--device", "cpu"]) == 0
        segments = tifffile.imread(out / "a_segments.tif")
        probs = tifffile.imread(out / "a_probs.tif")
        assert segments.dtype == np.uint32 and segments.shape == (30, 34)
        np.testing.assert_array_equal(segments, segment(probs[1], method))

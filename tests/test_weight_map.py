"""The border weight map against a slow reference: one scipy distance transform per cell."""
import math

import numpy as np
import pytest
import torch
ndimage = pytest.importorskip("scipy.ndimage")

from unet_fast.data import synthetic_em_sample
from unet_fast.weight_map import (
    border_distances,
    class_balance_weights,
    cutoff_distance,
    label_cells,
    weight_map,
)


def reference_distances(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d1, d2 by a full-image Euclidean distance transform per cell (inf where fewer cells exist)."""
    per_cell = [ndimage.distance_transform_edt(cells != cell) for cell in np.unique(cells[cells > 0])]
    per_cell += [np.full(cells.shape, np.inf)] * 2
    ordered = np.sort(np.stack(per_cell), axis=0)
    return ordered[0], ordered[1]


def reference_weight_map(labels, w0=10.0, sigma=5.0, num_classes=2):
    cells, _ = ndimage.label(labels == 1)
    d1, d2 = reference_distances(cells)
    counts = np.bincount(labels.ravel(), minlength=num_classes)
    w_c = labels.size / (np.count_nonzero(counts) * np.maximum(counts, 1))
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    return w_c[labels] + np.where(cells == 0, border, 0.0)


@pytest.fixture(scope="module")
def small_sample():
    _, labels, instances = synthetic_em_sample(size=128, seed=3, cell_size=24)
    return labels, instances


def test_distances_match_scipy_within_the_cutoff(small_sample):
    _, instances = small_sample
    ref1, ref2 = reference_distances(instances)
    radius = 12.5
    d1, d2 = border_distances(torch.from_numpy(instances), radius)
    for ours, ref in ((d1.numpy(), ref1), (d2.numpy(), ref2)):
        near = ref <= radius
        # sqrt of exact integer squared distances, in float32: a few ulps of values <= 181.
        np.testing.assert_allclose(ours[near], ref[near], rtol=0, atol=1e-5)
        assert np.isinf(ours[~near]).all()


def test_distances_without_cutoff_are_exact_everywhere(small_sample):
    _, instances = small_sample
    ref1, ref2 = reference_distances(instances)
    d1, d2 = border_distances(instances.astype(np.int32), 1000.0)  # int32 input, cutoff beyond the image
    np.testing.assert_allclose(d1.numpy(), ref1, atol=1e-5)
    np.testing.assert_allclose(d2.numpy(), ref2, atol=1e-5)


def test_two_cells_and_no_cells():
    cells = np.zeros((9, 12), dtype=np.int64)
    cells[2:7, 1:4] = 7  # ids need not be consecutive
    cells[3:5, 8:11] = 3
    d1, d2 = border_distances(cells, 100.0)
    # Between the cells on row 3: column 5 is 2 px from cell 7 (col 3) and 3 px from cell 3 (col 8).
    assert d1[3, 5] == 2 and d2[3, 5] == 3
    assert d1[2, 2] == 0 and d2[2, 2] == pytest.approx(math.hypot(1, 6))
    d1, d2 = border_distances(np.zeros((2, 5, 5), dtype=np.int64), 10.0)
    assert d1.shape == (2, 5, 5) and torch.isinf(d1).all() and torch.isinf(d2).all()


def test_weight_map_matches_the_reference_formula(small_sample):
    labels, _ = small_sample
    ours = weight_map(torch.from_numpy(labels)).numpy()
    # The cutoff may drop at most `tolerance` (1e-6) per pixel; float32 arithmetic adds ~1e-6 on values <= ~12.
    np.testing.assert_allclose(ours, reference_weight_map(labels), rtol=0, atol=1e-5)
    assert ours.dtype == np.float32


def test_border_term_is_zero_inside_cells_and_large_in_narrow_gaps():
    labels = np.ones((20, 21), dtype=np.int64)
    labels[:, 10] = 0  # a 1-px membrane between two cells: d1 = d2 = 1
    w = weight_map(labels, class_weights=None).numpy()
    assert np.allclose(w[:, 10], 1 + 10 * math.exp(-4 / 50))
    assert np.all(w[:, [0, 9, 11, 20]] == 1)


def test_instances_argument_gives_the_same_as_components(small_sample):
    labels, instances = small_sample
    from_labels = weight_map(labels)
    from_instances = weight_map(labels, instances=instances * 5 + 2 * (instances > 0))  # relabelled ids
    torch.testing.assert_close(from_labels, from_instances, rtol=0, atol=0)
    assert (label_cells(labels).numpy() > 0).sum() == (instances > 0).sum()


def test_batch_equals_items_and_class_weights(small_sample):
    labels, _ = small_sample
    batch = np.stack([labels, 1 - labels])
    w = weight_map(torch.from_numpy(batch), class_weights=[0.5, 2.0], w0=0)
    expected = np.where(batch == 1, 2.0, 0.5)
    np.testing.assert_array_equal(w.numpy(), expected)
    balanced = class_balance_weights(batch, 2)
    assert torch.allclose(balanced.mean(dim=(1, 2)), torch.ones(2))
    torch.testing.assert_close(weight_map(batch)[1], weight_map(batch[1]))


def test_cutoff_distance_bounds_the_dropped_term():
    radius = cutoff_distance(10.0, 5.0, 1e-6)
    assert 10.0 * math.exp(-(radius**2) / 50) == pytest.approx(1e-6)


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(labels=np.zeros((4, 4), dtype=np.float32)), TypeError),
        (dict(labels=[[0, 1]]), TypeError),
        (dict(labels=np.zeros((1, 1, 4, 4), dtype=np.int64)), ValueError),
        (dict(labels=np.full((4, 4), 2)), ValueError),
        (dict(labels=np.zeros((4, 4), dtype=np.int64), num_classes=1), ValueError),
        (dict(labels=np.zeros((4, 4), dtype=np.int64), class_weights=[1.0]), ValueError),
        (dict(labels=np.zeros((4, 4), dtype=np.int64), class_weights="inverse"), ValueError),
        (dict(labels=np.zeros((4, 4), dtype=np.int64), class_weights=[1.0, -2.0]), ValueError),
        (dict(labels=np.zeros((4, 4), dtype=np.int64), class_weights=[1.0, float("nan")]), ValueError),
        (dict(labels=np.zeros((4, 4), dtype=np.int64), class_weights=[float("inf"), 1.0]), ValueError),
        (dict(labels=np.zeros((4, 4), dtype=np.int64), sigma=0), ValueError),
        (dict(labels=np.zeros((4, 4), dtype=np.int64), instances=np.zeros((4, 5), dtype=np.int64)), ValueError),
        (dict(labels=np.zeros((4, 4), dtype=np.int64), foreground=2), ValueError),
    ],
)
def test_bad_inputs_raise(kwargs, error):
    with pytest.raises(error):
        weight_map(**kwargs)


def test_class_balance_rejects_values_outside_the_classes():
    with pytest.raises(ValueError, match="outside the classes"):
        class_balance_weights(np.array([[0, -1]]), 2)


def test_benchmark_runs_and_agrees_with_scipy(tmp_path):
    import json

    from unet_fast.benchmark.ops import border_distances as bench
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = bench.main(["--size", "96", "--cell-size", "24", "--repeats", "1", "--json", str(tmp_path / "r.json")])
        assert torch.get_num_threads() == 2  # the benchmark's single thread does not leak out
    finally:
        torch.set_num_threads(threads)
    assert result["cells"] > 5 and result["max_abs_difference"] < 1e-5
    assert json.loads((tmp_path / "r.json").read_text())["speedup"] == result["speedup"]


@pytest.mark.gpu
def test_cuda_labels_give_a_cuda_map_matching_the_scipy_reference(small_sample):
    # Against the independent scipy formula (not the CPU path of the same code): a batch of two
    # label maps, the second with the classes swapped, and per-class weights given as a CUDA tensor.
    labels, _ = small_sample
    batch = np.stack([labels, 1 - labels])
    on_gpu = weight_map(torch.from_numpy(batch).cuda())
    assert on_gpu.is_cuda and on_gpu.dtype == torch.float32 and on_gpu.shape == batch.shape
    for item in range(2):
        np.testing.assert_allclose(on_gpu[item].cpu().numpy(), reference_weight_map(batch[item]), rtol=0, atol=1e-5)
    fixed = weight_map(torch.from_numpy(labels).cuda(), class_weights=torch.tensor([0.5, 2.0], device="cuda"), w0=0)
    assert fixed.is_cuda
    np.testing.assert_array_equal(fixed.cpu().numpy(), np.where(labels == 1, 2.0, 0.5).astype(np.float32))

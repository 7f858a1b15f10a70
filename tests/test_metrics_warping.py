"""The warping error: hand-made topological cases, and the C++ warp against a slow direct
implementation written here (simple points found by scipy's labelling of the 3x3 neighbourhood)."""
from collections import deque

import numpy as np
import pytest
import torch

ndimage = pytest.importorskip("scipy.ndimage")
from unet_fast import _ext  # noqa: E402

if _ext._C is None:
    pytest.skip("the compiled extension is unavailable", allow_module_level=True)

from unet_fast.metrics import warping_error  # noqa: E402
from unet_fast.ops.simple_point_warp import simple_point_warp  # noqa: E402

FOUR = ndimage.generate_binary_structure(2, 1)
EIGHT = np.ones((3, 3), dtype=bool)
FOUR_NEIGHBOURS = [(0, 1), (1, 0), (1, 2), (2, 1)]
RING = [(y, x) for y in range(3) for x in range(3) if (y, x) != (1, 1)]


def _ring_counts(padded, r, c):
    """(cell components 4-adjacent to the centre, boundary components) in the 8-neighbourhood of
    pixel (r, c) of the unpadded map: cells 4-, boundary 8-connected, the centre left out."""
    patch = padded[r : r + 3, c : c + 3].astype(bool)
    cells, boundary = patch.copy(), ~patch
    cells[1, 1] = boundary[1, 1] = False
    cell_labels = ndimage.label(cells, FOUR)[0]
    boundary_labels = ndimage.label(boundary, EIGHT)[0]
    n_cells = len({cell_labels[p] for p in FOUR_NEIGHBOURS} - {0})
    n_boundary = len({boundary_labels[p] for p in RING} - {0})
    return n_cells, n_boundary


def reference_warp(target, prediction):
    """The documented algorithm, directly: a FIFO of disagreeing pixels in raster order, a simple
    pixel flips and queues its disagreeing neighbours; then each disagreement is classified."""
    height, width = target.shape
    padded = np.pad(target.astype(np.uint8), 1)  # outside the image is boundary
    disagrees = lambda r, c: padded[r + 1, c + 1] != prediction[r, c]  # noqa: E731
    queue = deque((r, c) for r in range(height) for c in range(width) if disagrees(r, c))
    queued = set(queue)
    while queue:
        r, c = queue.popleft()
        queued.discard((r, c))
        if _ring_counts(padded, r, c) != (1, 1):
            continue
        padded[r + 1, c + 1] ^= 1
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                y, x = r + dy, c + dx
                if 0 <= y < height and 0 <= x < width and (y, x) not in queued and disagrees(y, x):
                    queue.append((y, x))
                    queued.add((y, x))
    classes = np.zeros((height, width), dtype=np.uint8)
    for r in range(height):
        for c in range(width):
            if disagrees(r, c):
                n_cells, n_boundary = _ring_counts(padded, r, c)
                if padded[r + 1, c + 1]:  # cell -> boundary
                    classes[r, c] = 4 if n_cells == 0 else 5 if n_boundary == 0 else 1
                else:
                    classes[r, c] = 3 if n_cells == 0 else 6 if n_boundary == 0 else 2
    return padded[1:-1, 1:-1], classes


def _topology(cells):
    """Numbers of 4-connected cell components and 8-connected boundary components (outside included)."""
    padded = np.pad(cells.astype(bool), 1)
    return ndimage.label(padded, FOUR)[1], ndimage.label(~padded, EIGHT)[1]


def _random_pair(seed, shape=(18, 22)):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    target = (field > np.quantile(field, 0.35)).astype(np.uint8)
    shifted = ndimage.shift(field, (rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5)), order=1, mode="nearest")
    prediction = (shifted + 0.3 * rng.standard_normal(shape) > np.quantile(field, 0.35)).astype(np.uint8)
    return target, prediction


@pytest.mark.parametrize("seed", range(8))
def test_warp_matches_the_slow_reference_and_keeps_the_topology(seed):
    target, prediction = _random_pair(seed)
    warped, classes = (t[0].numpy() for t in simple_point_warp(torch.from_numpy(target)[None],
                                                               torch.from_numpy(prediction)[None]))
    ref_warped, ref_classes = reference_warp(target, prediction)
    np.testing.assert_array_equal(warped, ref_warped)
    np.testing.assert_array_equal(classes, ref_classes)
    # Independent of the order of flips: the warp keeps every component and hole, and every
    # remaining disagreement is exactly a pixel the classes mark.
    assert _topology(warped) == _topology(target)
    np.testing.assert_array_equal(classes > 0, warped != prediction)
    assert np.count_nonzero(warped != prediction) <= np.count_nonzero(target != prediction)


def _two_cells(width=12, height=10, line=5):
    cells = np.ones((height, width), dtype=np.int64)
    cells[:, line] = 0
    return cells


def test_a_boundary_shifted_by_one_pixel_has_no_topological_error():
    result = warping_error(_two_cells(line=6), _two_cells(line=5))
    assert result == {"error": 0.0, "splits": 0, "mergers": 0}


@pytest.mark.parametrize("thickness", [1, 2])
def test_an_extra_boundary_line_across_a_cell_is_one_split(thickness):
    target = np.ones((10, 12), dtype=np.int64)
    pred = target.copy()
    pred[4 : 4 + thickness, :] = 0
    result = warping_error(pred, target)
    assert (result["splits"], result["mergers"]) == (1, 0)
    assert 0 < result["error"] <= thickness / target.size


def test_two_cells_merged_through_a_gap_is_one_merger():
    target = _two_cells()
    pred = target.copy()
    pred[4:6, 5] = 1  # a two-pixel gap in the membrane
    result = warping_error(pred, target)
    assert (result["splits"], result["mergers"]) == (0, 1)
    assert 0 < result["error"] <= 2 / target.size


def test_a_hole_filled_or_opened_is_an_error_but_no_split_or_merger():
    with_hole = np.ones((9, 9), dtype=np.int64)
    with_hole[3:5, 3:5] = 0  # a 2x2 boundary island inside the cell
    filled = np.ones_like(with_hole)
    as_op_input = lambda a: torch.from_numpy(a.astype(np.uint8))[None]  # noqa: E731
    # Filled: the island shrinks by simple flips to its last pixel, a hole deletion.
    assert warping_error(filled, with_hole) == {"error": 1 / with_hole.size, "splits": 0, "mergers": 0}
    _, classes = simple_point_warp(as_op_input(with_hole), as_op_input(filled))
    assert np.count_nonzero(classes.numpy() == 6) == 1 and np.count_nonzero(classes.numpy()) == 1
    # Opened: no island pixel is simple inside a solid cell, so all four are hole additions.
    assert warping_error(with_hole, filled) == {"error": 4 / with_hole.size, "splits": 0, "mergers": 0}
    _, classes = simple_point_warp(as_op_input(filled), as_op_input(with_hole))
    np.testing.assert_array_equal(classes.numpy()[0], np.where(with_hole == 0, 5, 0))


def test_batches_pool_the_error_and_sum_the_events_and_thresholds_apply():
    target = np.stack([np.ones((10, 12), dtype=np.int64), _two_cells()])
    pred = target.copy()
    pred[0, 4, :] = 0
    pred[1, 4:6, 5] = 1
    single = [warping_error(p, t) for p, t in zip(pred, target)]
    batch = warping_error(pred, target)
    assert batch["splits"] == 1 and batch["mergers"] == 1
    assert batch["error"] == pytest.approx(np.mean([s["error"] for s in single]))
    probs = np.where(pred == 1, 0.9, 0.1)
    assert warping_error(probs, target, threshold=0.5) == batch
    assert warping_error(np.where(target == 1, 2, 0), np.where(target == 1, 2, 0), foreground=2)["error"] == 0.0


def test_the_op_refuses_bad_inputs_and_has_a_fake():
    ok = torch.zeros(1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="target must be an \\(N, H, W\\) uint8"):
        simple_point_warp(ok[0], ok[0])
    with pytest.raises(ValueError, match="prediction must be an \\(N, H, W\\) uint8"):
        simple_point_warp(ok, ok.float())
    with pytest.raises(ValueError, match="differs"):
        simple_point_warp(ok, torch.zeros(1, 4, 5, dtype=torch.uint8))
    target, prediction = (torch.from_numpy(a)[None] for a in _random_pair(0, (8, 9)))
    torch.library.opcheck(torch.ops.unet_fast.simple_point_warp.default, (target, prediction))

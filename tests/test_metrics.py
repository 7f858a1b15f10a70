"""Metrics on small hand-computed cases."""
import numpy as np
import pytest
import torch

pytest.importorskip("scipy")  # unet_fast.metrics

from unet_fast.metrics import (
    adapted_rand_error_segments,
    foreground_dice,
    foreground_iou,
    pixel_error,
    rand_error,
    segmentation_metrics,
)

# Two cells side by side, separated by a membrane column: 4x2 pixels each.
TRUTH = np.array(
    [
        [1, 1, 0, 1, 1],
        [1, 1, 0, 1, 1],
        [1, 1, 0, 1, 1],
        [1, 1, 0, 1, 1],
    ]
)


def test_pixel_iou_dice_by_hand():
    pred = TRUTH.copy()
    pred[0, 2] = 1  # one membrane pixel called cell
    pred[3, 0] = 0  # one cell pixel called membrane
    assert pixel_error(pred, TRUTH) == pytest.approx(2 / 20)
    # |P&T| = 15, |P| = 16, |T| = 16, |P|T| = 17.
    assert foreground_iou(pred, TRUTH) == pytest.approx(15 / 17)
    assert foreground_dice(pred, TRUTH) == pytest.approx(30 / 32)
    assert foreground_iou(np.zeros((2, 2), int), np.zeros((2, 2), int)) == 1.0


def test_rand_error_is_zero_for_a_perfect_segmentation_even_with_other_ids():
    assert rand_error(TRUTH, TRUTH) == 0.0
    assert adapted_rand_error_segments(TRUTH * 7, TRUTH * 3) == 0.0


def test_rand_error_of_a_merge_by_hand():
    merged = np.ones_like(TRUTH)  # membrane missed: one segment of 16 counted pixels
    # n_ij = 8, 8: sum n_ij^2 = 128; predicted: 16^2 = 256; true: 8^2 + 8^2 = 128.
    precision, recall = 128 / 256, 128 / 128
    expected = 1 - 2 * precision * recall / (precision + recall)  # = 1/3
    assert rand_error(merged, TRUTH) == pytest.approx(expected)
    assert expected == pytest.approx(1 / 3)


def test_rand_error_of_a_split_and_of_predicted_membrane_singletons():
    split = TRUTH.copy()
    split[2, :] = 0  # a membrane row cuts each cell into 4 px (rows 0-1) and 2 px (row 3); 4 singletons
    # Counted pixels: the 16 true-cell pixels. Pairs: 2 x (4^2 + 2^2) + 4 singletons = 44;
    # predicted: the same 44; true: 2 x 8^2 = 128.
    precision, recall = 44 / 44, 44 / 128
    assert rand_error(split, TRUTH) == pytest.approx(1 - 2 * precision * recall / (precision + recall))


def test_batches_average_per_image_and_accept_tensors():
    merged = np.ones_like(TRUTH)
    pred = torch.from_numpy(np.stack([TRUTH, merged]))
    target = torch.from_numpy(np.stack([TRUTH, TRUTH]))
    assert rand_error(pred, target) == pytest.approx((0 + 1 / 3) / 2)
    metrics = segmentation_metrics(pred, target)
    assert set(metrics) == {"pixel_error", "foreground_iou", "foreground_dice", "rand_error"}
    assert metrics["pixel_error"] == pytest.approx(4 / 40)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shape"):
        pixel_error(TRUTH, TRUTH[:, :3])
    with pytest.raises(TypeError, match="integer"):
        rand_error(TRUTH.astype(float), TRUTH)
    with pytest.raises(TypeError, match="pred"):
        pixel_error(TRUTH.tolist(), TRUTH)


@pytest.mark.gpu
def test_cuda_tensors_give_the_hand_computed_values():
    # The merge of test_rand_error_of_a_merge_by_hand and the two flipped pixels of
    # test_pixel_iou_dice_by_hand, as a CUDA batch: pooled pixel counts, per-image Rand errors.
    flipped = TRUTH.copy()
    flipped[0, 2], flipped[3, 0] = 1, 0
    pred = torch.from_numpy(np.stack([np.ones_like(TRUTH), flipped])).cuda()
    target = torch.from_numpy(np.stack([TRUTH, TRUTH])).cuda()
    metrics = segmentation_metrics(pred, target)
    assert metrics["pixel_error"] == pytest.approx((4 + 2) / 40)
    # |P&T| = 16 + 15, |P| = 20 + 16, |T| = 32, |P|T| = 20 + 17
    assert metrics["foreground_iou"] == pytest.approx(31 / 37)
    assert metrics["foreground_dice"] == pytest.approx(2 * 31 / (36 + 32))
    # flipped: (0, 2) joins both cells into one segment of 15 counted pixels (7 + 8), (3, 0) is a
    # singleton; sum n_ij^2 = 49 + 64 + 1, predicted 15^2 + 1, true 8^2 + 8^2
    precision, recall = 114 / 226, 114 / 128
    flipped_error = 1 - 2 * precision * recall / (precision + recall)
    assert metrics["rand_error"] == pytest.approx((1 / 3 + flipped_error) / 2)

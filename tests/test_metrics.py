"""Pixel and segment metrics: hand-computed cases, scikit-image as the reference, thresholds."""
import numpy as np
import pytest
import torch

pytest.importorskip("scipy")  # unet_fast.metrics

from unet_fast.metrics import (
    adapted_rand_error_segments,
    best_over_thresholds,
    foreground_dice,
    foreground_iou,
    get_metric,
    pixel_error,
    rand_error,
    rand_scores,
    segmentation_metrics,
    variation_of_information,
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
    with pytest.raises(TypeError, match="integer class ids .*threshold"):
        rand_error(TRUTH.astype(float), TRUTH)
    with pytest.raises(TypeError, match="float probability"):
        rand_error(TRUTH, TRUTH, threshold=0.5)
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\]"):
        pixel_error(TRUTH.astype(np.float32), TRUTH, threshold=1.5)
    with pytest.raises(ValueError, match="NaN"):
        pixel_error(np.full(TRUTH.shape, np.nan), TRUTH, threshold=0.5)
    with pytest.raises(ValueError, match="unknown metric 'rnd'.*rand"):
        get_metric("rnd")
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


def test_rand_and_info_scores_of_a_merge_and_a_split_by_hand():
    merged = rand_scores(np.ones_like(TRUTH), TRUTH)
    # One predicted segment over two true cells of 8: nothing split, everything merged.
    # H(S) = 0 -> info_split = 1; H(T) = 1 bit, I = 0 -> info_merge = 0.
    assert merged["rand_split"] == pytest.approx(1.0) and merged["rand_merge"] == pytest.approx(0.5)
    assert merged["v_rand"] == pytest.approx(2 / 3)
    assert (merged["info_split"], merged["info_merge"], merged["v_info"]) == pytest.approx((1.0, 0.0, 0.0))
    halves = np.where(np.arange(5) % 3 == 0, 3, TRUTH)  # columns 0 and 3 become class 3
    # Foreground = class 1: columns 1 and 4 (4 px each) are segments; columns 0 and 3 are predicted
    # boundary inside true cells, 8 singletons. n = 16; H(T) = 1 bit; H(S) = 2 x (4/16) log2 4 +
    # 8 x (1/16) log2 16 = 1 + 2 = 3 bits; every predicted segment lies in one true cell, so
    # H(S, T) = H(S), I = H(T) = 1: info_split = 1/3, info_merge = 1.
    split = rand_scores(halves, TRUTH)
    assert (split["info_split"], split["info_merge"]) == pytest.approx((1 / 3, 1.0))
    assert split["v_info"] == pytest.approx(0.5)
    # Rand: sum n_ij^2 = 2 x 16 + 8 = 40 = sum s_i^2; sum t_j^2 = 128.
    assert (split["rand_split"], split["rand_merge"]) == pytest.approx((40 / 128, 1.0))
    assert rand_error(halves, TRUTH) == pytest.approx(1 - split["v_rand"])
    assert variation_of_information(halves, TRUTH) == pytest.approx((2.0, 0.0))  # H(S|T) = 3 - 1


def _blobs(rng, shape, cells_fraction):
    """A random cell map: smoothed noise thresholded at the given foreground fraction."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    return (field > np.quantile(field, 1 - cells_fraction)).astype(np.int64)


def _noisy_prediction(rng, truth):
    """Cells grown by two pixels (closing thin membranes: merges) with 5% of pixels flipped (splits)."""
    from scipy import ndimage

    grown = ndimage.binary_dilation(truth, ndimage.generate_binary_structure(2, 1), iterations=2).astype(np.int64)
    return np.where(rng.random(truth.shape) < 0.05, 1 - grown, grown)


def _reference_segments(pred, truth):
    """skimage's inputs: 4-connected segments, predicted boundary inside true cells as singletons.

    skimage scores every label of the test image as a segment, label 0 included; our convention
    makes each predicted boundary pixel its own segment, so those pixels get fresh unique ids.
    """
    from skimage.measure import label

    true_segments = label(truth, connectivity=1)
    pred_segments = label(pred, connectivity=1)
    singles = (pred_segments == 0) & (true_segments > 0)
    pred_segments[singles] = pred_segments.max() + 1 + np.arange(np.count_nonzero(singles))
    return pred_segments, true_segments


@pytest.mark.parametrize("seed", range(6))
def test_rand_scores_match_skimage_adapted_rand_error(seed):
    from skimage.metrics import adapted_rand_error

    rng = np.random.default_rng(seed)
    truth = _blobs(rng, (48, 40), 0.7)
    pred = _noisy_prediction(rng, truth)
    pred_segments, true_segments = _reference_segments(pred, truth)
    _, precision, recall = adapted_rand_error(true_segments, pred_segments, ignore_labels=(0,))
    # skimage counts pairs of distinct pixels (sum n^2 - n) and divides by the true image's pair sum
    # for its "precision", by the test image's for its "recall" (its code, whatever its comments
    # say); the challenge counts ordered pairs including self-pairs (sum n^2). Undo: with N counted
    # pixels and A = sum t_j^2 - N from the true segment sizes, skimage's pair sums are
    # P = precision A and B = P / recall.
    sizes = np.unique(true_segments[true_segments > 0], return_counts=True)[1].astype(np.float64)
    n = sizes.sum()
    a = float(np.sum(sizes**2)) - n
    p = precision * a
    b = p / recall
    ours = rand_scores(pred, truth)
    assert ours["rand_split"] == pytest.approx((p + n) / (a + n), rel=1e-12)
    assert ours["rand_merge"] == pytest.approx((p + n) / (b + n), rel=1e-12)
    assert 0.0 < ours["v_rand"] < 1.0


@pytest.mark.parametrize("seed", range(6))
def test_variation_of_information_matches_skimage(seed):
    # The direction convention checked by hand first: a true cell cut in two by the prediction is a
    # split of 1 bit for half of the pixels.
    from skimage.metrics import variation_of_information as skimage_voi

    assert skimage_voi(np.array([[1, 1, 2, 2]]), np.array([[1, 2, 3, 3]])) == pytest.approx([0.5, 0.0])
    rng = np.random.default_rng(100 + seed)
    truth = _blobs(rng, (40, 48), 0.55)
    pred = _noisy_prediction(rng, truth)
    pred_segments, true_segments = _reference_segments(pred, truth)
    # skimage: image0 is the true image (ignore_labels act on it); in bits (log2), it returns
    # [H(image1 | image0), H(image0 | image1)] = [split, merge] for image1 the prediction.
    h_pred_given_true, h_true_given_pred = skimage_voi(true_segments, pred_segments, ignore_labels=(0,))
    split, merge = variation_of_information(pred, truth)
    assert split == pytest.approx(h_pred_given_true, rel=1e-9, abs=1e-12)
    assert merge == pytest.approx(h_true_given_pred, rel=1e-9, abs=1e-12)
    assert split > 0 and merge > 0


def test_foreground_selects_the_cell_class_of_a_multi_class_map():
    three = np.where(TRUTH == 1, 2, TRUTH)  # cells are class 2
    assert rand_scores(three, three, foreground=2)["v_rand"] == 1.0
    assert rand_error(np.where(three == 0, 2, three), three, foreground=2) == pytest.approx(1 / 3)


def test_probability_maps_with_a_threshold_and_the_best_over_thresholds():
    probs = np.where(TRUTH == 1, 0.8, 0.3).astype(np.float32)
    probs[0, 2] = 0.6  # one membrane pixel between the two thresholds: merges the cells at 0.5
    assert pixel_error(probs, TRUTH, threshold=0.5) == pytest.approx(1 / 20)
    assert rand_error(probs, TRUTH, threshold=0.5) == pytest.approx(rand_error(np.where(probs >= 0.5, 1, 0), TRUTH))
    assert rand_error(probs, TRUTH, threshold=0.7) == 0.0
    best = best_over_thresholds("rand", probs, TRUTH, [0.2, 0.5, 0.7, 0.9])
    assert best["threshold"] == 0.7 and best["value"] == 0.0
    assert best["values"][1] > 0 and best["values"][0] > 0  # 0.2: everything is cell
    assert best_over_thresholds("dice", probs, TRUTH, [0.5, 0.7])["threshold"] == 0.7  # higher is better
    with pytest.raises(ValueError, match="empty"):
        best_over_thresholds("rand", probs, TRUTH, [])

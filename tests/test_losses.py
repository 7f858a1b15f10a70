"""Losses against their direct formulas, written out with explicit softmax / log."""
import pytest
import torch

from unet_fast.losses import SegmentationLoss, dice_loss, weighted_cross_entropy


def _inputs(n=2, k=3, h=5, w=6, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, h, w, generator=g, dtype=dtype)
    target = torch.randint(0, k, (n, h, w), generator=g)
    weights = torch.rand(n, h, w, generator=g, dtype=dtype) * 5 + 0.1
    return logits, target, weights


def direct_cross_entropy(logits, target):
    """-log softmax at the true class, one pixel at a time from the definition."""
    probs = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
    return -probs.gather(1, target[:, None]).squeeze(1).log()


def test_weighted_mean_sum_and_none_match_the_formula():
    logits, target, weights = _inputs()
    class_weights = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    combined = weights * class_weights[target]
    ce = direct_cross_entropy(logits, target)
    # float64 throughout: agreement to rounding error.
    kwargs = dict(class_weights=class_weights)
    torch.testing.assert_close(weighted_cross_entropy(logits, target, weights, reduction="none", **kwargs), combined * ce)
    torch.testing.assert_close(weighted_cross_entropy(logits, target, weights, reduction="sum", **kwargs), (combined * ce).sum())
    expected_mean = (combined * ce).sum() / combined.sum()
    torch.testing.assert_close(weighted_cross_entropy(logits, target, weights, **kwargs), expected_mean)


def test_without_weights_equals_torch_cross_entropy():
    logits, target, _ = _inputs(dtype=torch.float32)
    expected = torch.nn.functional.cross_entropy(logits, target)
    torch.testing.assert_close(weighted_cross_entropy(logits, target), expected)


def test_half_precision_logits_are_computed_in_float32():
    logits, target, weights = _inputs(dtype=torch.float32)
    loss = weighted_cross_entropy(logits.bfloat16(), target, weights.float())
    assert loss.dtype == torch.float32
    reference = weighted_cross_entropy(logits.bfloat16().float(), target, weights.float())
    torch.testing.assert_close(loss, reference)


def test_gradient_flows_and_matches_the_formula():
    logits, target, weights = _inputs()
    logits.requires_grad_(True)
    weighted_cross_entropy(logits, target, weights).backward()
    ours = logits.grad.clone()
    logits.grad = None
    ((weights * direct_cross_entropy(logits, target)).sum() / weights.sum()).backward()
    torch.testing.assert_close(ours, logits.grad)


def test_dice_matches_the_formula_and_is_zero_for_a_confident_perfect_prediction():
    logits, target, _ = _inputs()
    probs = torch.softmax(logits, 1)
    one_hot = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).double()
    dice = (2 * (probs * one_hot).sum((0, 2, 3)) + 1) / (probs.sum((0, 2, 3)) + one_hot.sum((0, 2, 3)) + 1)
    torch.testing.assert_close(dice_loss(logits, target), 1 - dice.mean())
    weights = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(dice_loss(logits, target, class_weights=weights), 1 - (weights * dice).sum() / 4)
    torch.testing.assert_close(dice_loss(logits, target, include_background=False), 1 - dice[1:].mean())
    perfect = one_hot * 100.0
    assert dice_loss(perfect, target) < 1e-6


def test_segmentation_loss_mixes_the_terms():
    logits, target, weights = _inputs()
    loss = SegmentationLoss(ce_weight=1.0, dice_weight=0.5)(logits, target, weights)
    torch.testing.assert_close(loss, weighted_cross_entropy(logits, target, weights) + 0.5 * dice_loss(logits, target))


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda l, t, w: (l[0], t, w), ValueError, "logits"),
        (lambda l, t, w: (l, t.float(), w), TypeError, "target"),
        (lambda l, t, w: (l, t[:, 1:], w), ValueError, "target"),
        (lambda l, t, w: (l, t, w[:, 1:]), ValueError, "weight_map"),
        (lambda l, t, w: (l, t + 5, w), ValueError, "class ids"),
        (lambda l, t, w: (l.long(), t, w), TypeError, "floating"),
        (lambda l, t, w: (l, t, -w), ValueError, "weight_map"),
        (lambda l, t, w: (l, t, w.index_fill(1, torch.tensor([0]), float("nan"))), ValueError, "weight_map"),
        (lambda l, t, w: (l, t, w.index_fill(1, torch.tensor([0]), float("inf"))), ValueError, "weight_map"),
        (lambda l, t, w: (l, t, torch.ones_like(t)), TypeError, "weight_map"),
    ],
)
def test_bad_inputs_raise_clear_errors(make, error, match):
    with pytest.raises(error, match=match):
        weighted_cross_entropy(*make(*_inputs()))


def test_target_larger_than_output_hints_at_cropping():
    logits, _, _ = _inputs(h=4, w=4)
    with pytest.raises(ValueError, match="center-crop"):
        weighted_cross_entropy(logits, torch.zeros(2, 8, 8, dtype=torch.int64))


def test_bad_options_raise():
    logits, target, weights = _inputs()
    with pytest.raises(ValueError, match="reduction"):
        weighted_cross_entropy(logits, target, reduction="avg")
    with pytest.raises(ValueError, match="class_weights"):
        weighted_cross_entropy(logits, target, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="sum to 0"):
        dice_loss(logits, target, class_weights=[1.0, 0.0, 0.0], include_background=False)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    logits, target, weights = _inputs(dtype=torch.float32, h=33, w=35)
    for fn in (
        lambda l, t, w: weighted_cross_entropy(l, t, w, class_weights=[1.0, 2.0, 0.5]),
        lambda l, t, w: dice_loss(l, t),
    ):
        # Different reduction orders only: float32 rounding.
        torch.testing.assert_close(fn(logits.cuda(), target.cuda(), weights.cuda()).cpu(), fn(logits, target, weights))


def test_segmentation_loss_dice_class_weights_apply_to_dice_only():
    logits, target, weights = _inputs()
    c = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    loss = SegmentationLoss(dice_weight=0.5, dice_class_weights=c)(logits, target, weights)
    expected = weighted_cross_entropy(logits, target, weights) + 0.5 * dice_loss(logits, target, class_weights=c)
    torch.testing.assert_close(loss, expected)

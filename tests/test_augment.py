"""ElasticAugment: parameter distributions, determinism, windows, and agreement with elastic_warp."""
import math

import pytest
import torch

from unet_fast.augment import ElasticAugment, apply_parameters, draw_parameters, elastic_augment
from unet_fast.ops import elastic_warp

OFF = dict(sigma=0.0, rotation=0.0, flip=False, contrast=None, brightness=None, gamma=None)


def _batch(n=3, size=(40, 44), classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 2, *size, generator=g)
    label = torch.randint(1, classes + 1, (n, *size), generator=g)
    weight = torch.rand(n, *size, generator=g) * 5 + 1
    return image, label, weight


def test_same_seed_same_result_different_seed_different():
    image, label, weight = _batch()
    aug = ElasticAugment()
    first = aug(image, label, weight, generator=torch.Generator().manual_seed(7))
    again = aug(image, label, weight, generator=torch.Generator().manual_seed(7))
    other = aug(image, label, weight, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_parameters_follow_the_documented_ranges():
    n = 4000
    p = draw_parameters(n, grid=3, sigma=10.0, rotation=30.0, scale=(0.8, 1.25), shift=5.0, flip=True,
                        contrast=(0.8, 1.2), brightness=(-0.1, 0.1), gamma=(0.8, 1.25),
                        generator=torch.Generator().manual_seed(0))
    assert p.displacement.shape == (n, 2, 3, 3) and p.displacement.dtype == torch.float32
    # N(0, 10^2): 72000 draws put the sample std within 1% and the mean within 0.2 px (> 5 sigma).
    assert abs(p.displacement.std().item() - 10.0) < 0.1 and abs(p.displacement.mean().item()) < 0.2
    m = p.affine[:, :, :2].double()
    zoom = torch.linalg.det(m).abs().rsqrt()  # M = R(angle) diag(flips) / zoom
    assert zoom.min() >= 0.8 - 1e-5 and zoom.max() <= 1.25 + 1e-5
    assert 0.45 < (torch.linalg.det(m) < 0).double().mean() < 0.55  # exactly one flip half the time
    unflipped = draw_parameters(n, rotation=30.0, flip=False, generator=torch.Generator().manual_seed(1)).affine
    angle = torch.atan2(unflipped[:, 1, 0].double(), unflipped[:, 0, 0].double())
    assert angle.abs().max() <= math.radians(30.0) + 1e-5 and angle.abs().max() > math.radians(29.0)
    flips_only = draw_parameters(n, rotation=0.0, flip=True, generator=torch.Generator().manual_seed(2)).affine
    assert set(flips_only[:, 0, 0].tolist()) == {-1.0, 1.0} and set(flips_only[:, 1, 1].tolist()) == {-1.0, 1.0}
    assert 0.45 < (flips_only[:, 0, 0] < 0).double().mean() < 0.55
    assert p.affine[:, :, 2].abs().max() <= 5.0
    contrast, brightness, gamma = p.intensity.unbind(1)
    assert 0.8 <= contrast.min() and contrast.max() <= 1.2
    assert -0.1 <= brightness.min() and brightness.max() <= 0.1
    assert 0.8 - 1e-6 <= gamma.min() and gamma.max() <= 1.25 + 1e-6
    assert abs(gamma.log().mean().item()) < 0.01  # log-uniform on a range symmetric in log: centred on 1


def test_switched_off_components_are_absent_and_draws_stay_aligned():
    p = draw_parameters(5, **OFF, generator=torch.Generator().manual_seed(3))
    assert p.affine is None and p.intensity is None and torch.equal(p.displacement, torch.zeros(5, 2, 3, 3))
    # A fixed number of draws per sample: turning rotation off leaves the field and gray values alone.
    on = draw_parameters(5, generator=torch.Generator().manual_seed(3))
    off = draw_parameters(5, rotation=0.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(on.displacement, off.displacement) and torch.equal(on.intensity, off.intensity)


def test_everything_off_returns_the_input_exactly():
    image, label, weight = _batch()
    out, label_out, weight_out = ElasticAugment(**OFF)(image, label, weight)
    assert torch.equal(out, image) and torch.equal(label_out, label) and torch.equal(weight_out, weight)


def test_labels_stay_in_their_class_set_and_weights_in_their_range():
    image, label, weight = _batch(classes=4)
    _, label_out, weight_out = ElasticAugment(scale=(0.7, 1.4), shift=8.0)(
        image, label, weight, generator=torch.Generator().manual_seed(1))
    assert set(label_out.unique().tolist()) <= set(label.unique().tolist())
    assert weight_out.min() >= weight.min() - 1e-6 and weight_out.max() <= weight.max() + 1e-6


def test_equals_elastic_warp_with_the_drawn_parameters():
    image, label, weight = _batch()
    aug = ElasticAugment(interpolation="bicubic", scale=(0.9, 1.1))
    got = aug(image, label, weight, generator=torch.Generator().manual_seed(5))
    p = aug.draw(3, torch.Generator().manual_seed(5))
    expected = elastic_warp(image, p.displacement, label=label, weight=weight, affine=p.affine,
                            intensity=p.intensity, interpolation="bicubic", padding_mode="reflection")
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    functional = elastic_augment(image, label, weight, generator=torch.Generator().manual_seed(5),
                                 interpolation="bicubic", scale=(0.9, 1.1))
    assert all(torch.equal(a, b) for a, b in zip(got, functional))


def test_gray_values_follow_contrast_gamma_brightness():
    image = torch.full((4, 1, 16, 16), 0.25)
    aug = ElasticAugment(contrast=(0.5, 1.5), brightness=(-0.2, 0.2), gamma=(0.5, 2.0))
    out, _, _ = aug(image, generator=torch.Generator().manual_seed(2))
    c, b, g = aug.draw(4, torch.Generator().manual_seed(2)).intensity.double().unbind(1)
    expected = (c * 0.25**g + b)[:, None, None, None].expand_as(out)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)  # a constant warps to itself


def test_training_tile_window_and_centre_crops():
    image, label, weight = _batch(n=2, size=(64, 60))
    aug = ElasticAugment(shift=4.0)
    full = aug(image, label, weight, generator=torch.Generator().manual_seed(9))
    tile = aug(image, label, weight, out_size=(40, 36), generator=torch.Generator().manual_seed(9))
    for whole, part in zip(full, tile):
        assert torch.equal(part, whole[..., 12:52, 12:48])  # centred window = crop of the full warp
    big = aug(image, label, weight, out_size=(92, 88), generator=torch.Generator().manual_seed(9))
    assert big[0].shape == (2, 2, 92, 88) and big[1].shape == (2, 92, 88)
    assert torch.equal(big[1][:, 14:78, 14:74], full[1])  # mirrored context around the same warp
    assert torch.equal(aug(image, label, out_size=(40, 36), offset=(0, 0),
                           generator=torch.Generator().manual_seed(9))[1], full[1][:, :40, :36])


@pytest.mark.parametrize("settings,error,match", [
    (dict(sigma=-1.0), ValueError, "sigma"),
    (dict(grid=0), ValueError, "grid"),
    (dict(rotation=float("nan")), ValueError, "rotation"),
    (dict(contrast=(1.2, 0.8)), ValueError, "contrast"),
    (dict(gamma=(0.0, 1.0)), ValueError, "gamma"),
    (dict(scale=1.1), TypeError, "scale"),
    (dict(flip="yes"), TypeError, "flip"),
    (dict(interpolation="cubic"), ValueError, "interpolation"),
    (dict(padding_mode="mirror"), ValueError, "padding_mode"),
])
def test_bad_settings_raise_at_construction(settings, error, match):
    with pytest.raises(error, match=match):
        ElasticAugment(**settings)


def test_bad_calls_raise():
    image, label, _ = _batch()
    aug = ElasticAugment()
    with pytest.raises(ValueError, match="image must be"):
        aug(image[0])
    with pytest.raises(ValueError, match="label must have shape"):
        aug(image, label[:, :5])
    with pytest.raises(ValueError, match="batch of 2"):
        apply_parameters(image, draw_parameters(2))
    with pytest.raises(TypeError, match="out_size"):
        aug(image, out_size=572)


@pytest.mark.gpu
def test_cuda_matches_cpu_for_the_same_seed():
    image, label, weight = _batch(n=4, size=(70, 66))
    aug = ElasticAugment(interpolation="bicubic", scale=(0.8, 1.2), shift=3.0)
    cpu = aug(image, label, weight, out_size=(80, 72), generator=torch.Generator().manual_seed(11))
    gpu = aug(image.cuda(), label.cuda(), weight.cuda(), out_size=(80, 72), generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=0, atol=1e-5 * image.abs().max().item())
    torch.testing.assert_close(gpu[2].cpu(), cpu[2], rtol=0, atol=1e-5 * weight.abs().max().item())
    assert (gpu[1].cpu() == cpu[1]).float().mean() > 0.999  # equal except at sampling ties

"""Overlap-tile inference against whole-image passes of the reference U-Net.

Models get Kaiming-initialised weights and random biases so that every output pixel depends on its
whole receptive field (a default-initialised tiny net is nearly constant and would hide tiling
errors). Tolerance 1e-4 on probabilities in float32: a tile and the whole image compute each output
pixel from the same inputs with the same kernels, and only the convolution's summation order may
differ with the tensor size (errors ~1e-6 observed).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unet_fast import shapes
from unet_fast.inference import context_margin, mirror_pad, predict_tiled
from tests.inference_helpers import kaiming_unet

ATOL = 1e-4


def numpy_reflect(image: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Mirror padding of both spatial axes by numpy (repeats the reflection for small images; a
    size-1 axis can only be repeated)."""
    padded = image.numpy()
    for axis in (-2, -1):
        widths = [(0, 0)] * image.dim()
        widths[axis] = (before, after)
        padded = np.pad(padded, widths, mode="reflect" if image.shape[axis] > 1 else "edge")
    return torch.from_numpy(padded)


def whole_pass(model, image, margin, padding="valid"):
    """Probabilities of one model pass over the mirror-padded image, extended with zeros on the
    bottom/right to a valid size (those pixels reach no output inside the image), cropped to (H, W)."""
    height, width = image.shape[-2:]
    padded = numpy_reflect(image, margin, margin)
    depth = model.depth
    full_h = shapes.valid_input_size(padded.shape[-2], depth, padding)
    full_w = shapes.valid_input_size(padded.shape[-1], depth, padding)
    padded = F.pad(padded, (0, full_w - padded.shape[-1], 0, full_h - padded.shape[-2]))
    with torch.no_grad():
        probs = model(padded).softmax(dim=1)
    offset = margin - shapes.border(depth, padding)
    return probs[..., offset : offset + height, offset : offset + width]


@pytest.mark.parametrize(
    "depth, size, tile_size",
    [
        (3, (60, 92), 80),   # padded 100 x 132 is a valid size; several tiles on both axes
        (5, (260, 276), 300),  # the paper's depth: padded 444 x 460 valid, tiles of 284
    ],
)
def test_tiled_equals_one_pass_when_padded_image_is_valid(depth, size, tile_size):
    model = kaiming_unet(depth=depth, base_channels=4 if depth == 3 else 2)
    border = shapes.border(depth)
    assert all(shapes.is_valid_input_size(s + 2 * border, depth) for s in size)
    image = torch.randn(2, 1, *size)
    probs, labels = predict_tiled(model, image, tile_size=tile_size, batch_size=3)
    # The plain torch reflect padding is the whole-image reference.
    with torch.no_grad():
        expected = model(F.pad(image, (border,) * 4, mode="reflect")).softmax(dim=1)
    assert probs.shape == (2, 3, *size) and labels.shape == (2, *size)
    torch.testing.assert_close(probs, expected, atol=ATOL, rtol=0)
    assert torch.equal(labels, probs.argmax(dim=1))


@pytest.mark.parametrize("size", [(37, 53), (5, 3), (1, 9), (23, 1)])
def test_odd_and_small_images(size):
    """Any size works; images smaller than the border reflect repeatedly (numpy's reflect)."""
    model = kaiming_unet(num_classes=2)
    image = torch.randn(1, 1, *size)
    probs, labels = predict_tiled(model, image, tile_size=64)
    expected = whole_pass(model, image, shapes.border(3))
    assert probs.shape == (1, 2, *size) and labels.shape == (1, *size)
    torch.testing.assert_close(probs, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, *size), atol=1e-6, rtol=0)


def test_three_dim_input_and_batch_size_independence():
    model = kaiming_unet(in_channels=2)
    image = torch.randn(2, 45, 70)
    probs, labels = predict_tiled(model, image, tile_size=60, batch_size=1)
    batched, batched_labels = predict_tiled(model, image.unsqueeze(0), tile_size=60, batch_size=16)
    assert probs.shape == (3, 45, 70) and labels.shape == (45, 70) and labels.dtype == torch.int64
    torch.testing.assert_close(probs, batched[0], atol=1e-6, rtol=0)
    assert torch.equal(labels, batched_labels[0])


@pytest.mark.parametrize("up_mode", ["transpose", "bilinear"])
def test_same_padding_models_stitch_exactly(up_mode):
    """"same" models keep only tile centres beyond the zero padding's reach: equal to one pass."""
    model = kaiming_unet(padding="same", up_mode=up_mode)
    margin = context_margin(3, "same", up_mode)
    image = torch.randn(1, 1, 75, 130)
    probs, _ = predict_tiled(model, image, tile_size=2 * margin + 24)
    torch.testing.assert_close(probs, whole_pass(model, image, margin, "same"), atol=ATOL, rtol=0)


def test_valid_bilinear_models_stitch_exactly():
    """Bilinear up-sampling clamps at each tile's map edges (align_corners=False): tiles keep only
    centres beyond that reach, so the stitched map equals one pass (it differed by 0.2 at seams)."""
    model = kaiming_unet(up_mode="bilinear")
    margin = context_margin(3, "valid", "bilinear")
    assert margin > shapes.border(3)
    image = torch.randn(1, 1, 60, 92)
    probs, _ = predict_tiled(model, image, tile_size=2 * margin + 24)
    torch.testing.assert_close(probs, whole_pass(model, image, margin), atol=ATOL, rtol=0)


def test_model_mode_restored_and_dropout_off():
    model = kaiming_unet(dropout=0.5).train()
    image = torch.randn(1, 1, 30, 30)
    first, _ = predict_tiled(model, image)
    second, _ = predict_tiled(model, image)
    assert model.training
    assert torch.equal(first, second)


# The 8 symmetries of the square written out independently of the implementation's table.
SYMMETRIES = [
    (lambda x: x, lambda x: x),
    (lambda x: x.flip(-1), lambda x: x.flip(-1)),
    (lambda x: x.flip(-2), lambda x: x.flip(-2)),
    (lambda x: x.transpose(-1, -2), lambda x: x.transpose(-1, -2)),
    (lambda x: x.flip(-1).flip(-2), lambda x: x.flip(-1).flip(-2)),
    (lambda x: x.transpose(-1, -2).flip(-1), lambda x: x.flip(-1).transpose(-1, -2)),
    (lambda x: x.transpose(-1, -2).flip(-2), lambda x: x.flip(-2).transpose(-1, -2)),
    (lambda x: x.flip(-1).flip(-2).transpose(-1, -2), lambda x: x.transpose(-1, -2).flip(-2).flip(-1)),
]


def test_tta_is_the_average_over_flips_and_rotations():
    """For a square image with a valid padded size, TTA equals the mean of whole-image passes over
    the 8 transformed images, each transformed back."""
    model = kaiming_unet()
    border = shapes.border(3)
    image = torch.randn(1, 1, 60, 60)
    expected = torch.zeros(1, 3, 60, 60)
    with torch.no_grad():
        for forward, backward in SYMMETRIES:
            padded = F.pad(forward(image), (border,) * 4, mode="reflect")
            expected += backward(model(padded).softmax(dim=1)) / len(SYMMETRIES)
    probs, labels = predict_tiled(model, image, tile_size=80, tta=True)
    torch.testing.assert_close(probs, expected, atol=ATOL, rtol=0)
    plain, _ = predict_tiled(model, image, tile_size=80)
    assert (probs - plain).abs().max() > 1e-3  # a random net is not symmetric: TTA changes the answer


def test_tta_is_equivariant_for_rectangular_images():
    """TTA(g(x)) == g(TTA(x)) for every symmetry g, also when rotation swaps height and width (each
    transformed image is tiled in its own frame, so every tile grid stays valid)."""
    model = kaiming_unet(depth=3)
    image = torch.randn(1, 1, 41, 66)
    probs, _ = predict_tiled(model, image, tile_size=64, tta=True)
    for forward, _ in SYMMETRIES:
        transformed, _ = predict_tiled(model, forward(image), tile_size=64, tta=True)
        torch.testing.assert_close(transformed, forward(probs), atol=1e-5, rtol=0)


def test_mirror_pad_matches_numpy_reflect():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    for before, after in ((2, 3), (7, 20), (0, 11)):
        for dim in (-1, -2):
            widths = [(0, 0)] * 4
            widths[dim] = (before, after)
            expected = np.pad(x.numpy(), widths, mode="reflect")
            assert np.array_equal(mirror_pad(x, before, after, dim).numpy(), expected)


def test_context_margin_covers_the_receptive_field():
    """The same-padding margin is at least the measured reach of a tile edge's zero padding."""
    model = kaiming_unet(padding="same", depth=3, num_classes=2).double()
    image = torch.randn(1, 1, 4 * 40, 4 * 40, dtype=torch.float64)
    with torch.no_grad():
        full = model(image)
        tile = model(image[..., 40:120, 40:120])
    margin = context_margin(3, "same")
    inner = slice(margin, 80 - margin)
    torch.testing.assert_close(tile[..., inner, inner], full[..., 40:120, 40:120][..., inner, inner])


def test_errors_name_the_problem():
    model = kaiming_unet()
    image = torch.randn(1, 1, 30, 30)
    with pytest.raises(TypeError, match="model"):
        predict_tiled(torch.nn.Conv2d(1, 1, 1), image)
    with pytest.raises(TypeError, match="model"):
        predict_tiled("net", image)
    with pytest.raises(TypeError, match="floating point"):
        predict_tiled(model, torch.zeros(1, 1, 30, 30, dtype=torch.uint8))
    with pytest.raises(TypeError, match="image"):
        predict_tiled(model, np.zeros((1, 30, 30), dtype=np.float32))
    with pytest.raises(ValueError, match="channel"):
        predict_tiled(model, torch.randn(2, 30, 30))
    with pytest.raises(ValueError, match="shape"):
        predict_tiled(model, torch.randn(30, 30))
    with pytest.raises(ValueError, match="tile_size=40 is too small.*smallest usable tile is 44"):
        predict_tiled(model, image, tile_size=40)
    with pytest.raises(ValueError, match="batch_size"):
        predict_tiled(model, image, batch_size=0)
    with pytest.raises(TypeError, match="tta"):
        predict_tiled(model, image, tta=1)

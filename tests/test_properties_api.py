"""Property tests (hypothesis) of the public non-op functions against independent references:
``weight_map`` against a brute-force formula, ``predict_tiled`` against one pass of the model over the
whole mirror-padded image. Shapes, dtypes, memory layouts and values (NaN, large) are drawn."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, strategies as st

pytest.importorskip("scipy")

from tests.reliability import counted, examples
from unet_fast import shapes
from unet_fast.inference import predict_tiled
from unet_fast.reference import UNet
from unet_fast.weight_map import weight_map


def brute_force_weight_map(labels: np.ndarray, num_classes, w0, sigma, class_weights) -> np.ndarray:
    """Eq. 2 of the paper by its definition, per (H, W) map: 4-connected cells by flood fill, d1 and
    d2 as the smallest pixel-to-pixel distances to the two nearest cells, no cutoff."""
    height, width = labels.shape
    cells = np.zeros(labels.shape, dtype=np.int64)
    for start in zip(*np.nonzero(labels == 1)):
        if cells[start]:
            continue
        cells[start] = cells.max() + 1
        stack = [start]
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < height and 0 <= nx < width and labels[ny, nx] == 1 and not cells[ny, nx]:
                    cells[ny, nx] = cells[start]
                    stack.append((ny, nx))
    if class_weights == "balanced":
        counts = np.bincount(labels.ravel(), minlength=num_classes)
        w_c = labels.size / (np.count_nonzero(counts) * np.maximum(counts, 1))
    elif class_weights is None:
        w_c = np.ones(num_classes)
    else:
        w_c = np.asarray(class_weights, dtype=np.float64)
    weights = w_c[labels].astype(np.float64)
    ys, xs = np.mgrid[:height, :width]
    per_cell = [np.sqrt(((ys[..., None] - ys[cells == c]) ** 2 + (xs[..., None] - xs[cells == c]) ** 2)).min(-1)
                for c in range(1, cells.max() + 1)]
    if len(per_cell) >= 2:
        d = np.sort(np.stack(per_cell), axis=0)
        border = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
        weights += np.where(cells == 0, border, 0.0)
    return weights


@st.composite
def label_maps(draw):
    num_classes = draw(st.integers(2, 3))
    shape = (draw(st.integers(0, 2)), draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    values = draw(st.lists(st.integers(0, num_classes - 1), min_size=math.prod(shape), max_size=math.prod(shape)))
    labels = np.asarray(values, dtype=draw(st.sampled_from([np.uint8, np.int32, np.int64]))).reshape(shape)
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided", "numpy"]))
    return num_classes, labels, layout


@examples(ci=40)
@given(label_maps(), st.floats(0, 20), st.floats(0.5, 8),
       st.sampled_from(["balanced", None, "explicit"]))
@counted("weight_map")
def test_weight_map_matches_the_formula(case, w0, sigma, class_weights):
    num_classes, labels, layout = case
    if class_weights == "explicit":
        class_weights = [0.5 + c for c in range(num_classes)]
    if layout == "numpy":
        given_labels = labels
    else:
        tensor = torch.from_numpy(labels)
        if layout == "transposed":  # a non-contiguous view of the same map
            tensor = tensor.transpose(1, 2).contiguous().transpose(1, 2)
        elif layout == "strided":  # every other column of a twice-wider map
            wide = torch.zeros(*labels.shape[:2], 2 * labels.shape[2], dtype=tensor.dtype)
            wide[..., ::2] = tensor
            tensor = wide[..., ::2]
        given_labels = tensor
    got = weight_map(given_labels, num_classes=num_classes, w0=w0, sigma=sigma, class_weights=class_weights)
    assert got.shape == labels.shape and got.dtype == torch.float32
    expected = [brute_force_weight_map(item, num_classes, w0, sigma, class_weights) for item in labels]
    expected = torch.from_numpy(np.stack(expected) if expected else np.zeros(labels.shape)).float()
    # The cutoff drops at most the default tolerance (1e-6) per pixel; fp32 rounds w_c + w0 * exp(..)
    # (<= about 3 * 20) to 2**-23 relative, exp and the distances each add a few ulps: 1e-5 relative.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1.5e-6)


def kaiming_unet(depth: int, num_classes: int = 2, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(in_channels=1, num_classes=num_classes, base_channels=2, depth=depth)
    for parameter in model.parameters():
        if parameter.dim() > 1:
            torch.nn.init.kaiming_normal_(parameter, nonlinearity="relu")
        else:
            torch.nn.init.normal_(parameter, std=0.1)
    return model.eval()


MODELS = {depth: kaiming_unet(depth) for depth in (2, 3)}


def one_pass(model: UNet, image: torch.Tensor) -> torch.Tensor:
    """Softmax of one model pass over the image mirror-padded (numpy's reflect, repeated for small
    images) by the valid convolutions' border, zero-extended on the bottom/right to a valid size
    (those pixels reach no output inside the image), cropped to the image."""
    border = shapes.border(model.depth)
    height, width = image.shape[-2:]
    array = image.double().numpy()
    for axis in (-2, -1):
        widths = [(0, 0)] * array.ndim
        widths[axis] = (border, border)
        array = np.pad(array, widths, mode="reflect" if array.shape[axis] > 1 else "edge")
    padded = torch.from_numpy(array).float()
    full = [shapes.valid_input_size(s, model.depth) for s in padded.shape[-2:]]
    padded = F.pad(padded, (0, full[1] - padded.shape[-1], 0, full[0] - padded.shape[-2]))
    with torch.no_grad():
        return model(padded).softmax(dim=1)[..., :height, :width]


@st.composite
def images(draw):
    shape = (draw(st.integers(1, 2)), 1, draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    image = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    image *= draw(st.sampled_from([1.0, 1e-30, 1e3]))  # plain, subnormal-range products, large
    if draw(st.booleans()):
        image[0, 0, draw(st.integers(0, shape[2] - 1)), draw(st.integers(0, shape[3] - 1))] = float("nan")
    layout = draw(st.sampled_from(["contiguous", "channels_last", "strided", "expanded"]))
    if layout == "channels_last":
        image = image.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        image = torch.cat([image, image], dim=-1)[..., ::2]
    elif layout == "expanded" and shape[0] == 2:
        image = image[:1].expand(shape)  # a zero-stride batch dimension
    return image


@examples(ci=12)
@given(images(), st.sampled_from([2, 3]), st.integers(0, 60), st.integers(1, 5))
@example(image=torch.full((1, 1, 3, 2), float("nan")), depth=2, extra=0, batch_size=1)
@counted("predict_tiled")
def test_predict_tiled_equals_one_pass(image, depth, extra, batch_size):
    model = MODELS[depth]
    smallest = shapes.valid_input_size(1, depth)
    probs, labels = predict_tiled(model, image, tile_size=smallest + extra, batch_size=batch_size)
    expected = one_pass(model, image)
    assert probs.shape == expected.shape and labels.shape == (image.shape[0], *image.shape[-2:])
    # Both sum the same fp32 products, in other orders where a tile differs from the whole pass:
    # error ~ sqrt(#terms) * 2**-24 relative at each layer; probabilities are <= 1, 1e-4 is ~ 20x that.
    torch.testing.assert_close(probs, expected, atol=1e-4, rtol=0, equal_nan=True)
    finite = probs.isfinite().all(dim=1)
    assert torch.equal(labels[finite], probs.argmax(dim=1)[finite])


def test_predict_tiled_rejects_an_empty_batch():
    with pytest.raises(ValueError, match="non-empty"):
        predict_tiled(MODELS[2], torch.zeros(0, 1, 8, 8), tile_size=64)

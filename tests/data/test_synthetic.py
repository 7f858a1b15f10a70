"""The embedded synthetic EM data set: determinism, formats, exact labels."""
import numpy as np
import pytest
import torch
ndimage = pytest.importorskip("scipy.ndimage")

from unet_fast.data import SyntheticEMDataset, make_synthetic_em, synthetic_em_sample


@pytest.fixture(scope="module")
def sample():
    return synthetic_em_sample(size=192, seed=5, index=1, cell_size=32)


def test_formats():
    images, labels, instances = make_synthetic_em(2, size=64, seed=1, cell_size=16, return_instances=True)
    assert images.shape == (2, 1, 64, 64) and images.dtype == torch.float32
    assert labels.shape == (2, 64, 64) and labels.dtype == torch.int64
    assert instances.shape == (2, 64, 64) and instances.dtype == torch.int64
    assert 0 <= images.min() and images.max() <= 1
    assert set(labels.unique().tolist()) == {0, 1}
    assert len(make_synthetic_em(1, size=32, cell_size=16)) == 2


def test_deterministic_by_seed_and_independent_of_count():
    a_images, a_labels = make_synthetic_em(2, size=64, seed=7, cell_size=16)
    b_images, b_labels = make_synthetic_em(3, size=64, seed=7, cell_size=16)
    assert torch.equal(a_images, b_images[:2]) and torch.equal(a_labels, b_labels[:2])
    c_images, _ = make_synthetic_em(2, size=64, seed=8, cell_size=16)
    assert not torch.equal(a_images, c_images)
    assert not torch.equal(a_images[0], a_images[1])


def test_cells_are_separated_and_instances_are_their_components(sample):
    _, labels, instances = sample
    assert np.array_equal(labels, (instances > 0).astype(np.int64))
    components, count = ndimage.label(labels == 1)  # 4-connectivity
    assert count == instances.max()
    assert np.array_equal(components, instances)  # both numbered in raster order
    # About (192 / 32)^2 cells, each at least a few pixels.
    assert 20 <= count <= 80
    assert np.bincount(instances.ravel())[1:].min() >= 1


def test_membrane_is_thin_and_dark(sample):
    image, labels, _ = sample
    membrane_fraction = np.mean(labels == 0)
    assert 0.05 < membrane_fraction < 0.35  # ISBI 2012: about 0.22
    assert image[labels == 0].mean() < image[labels == 1].mean() - 0.1


def test_dataset_interface():
    data = SyntheticEMDataset(3, size=48, seed=2, cell_size=16)
    image, label = data[1]
    assert len(data) == 3 and data.num_classes == 2 and data.in_channels == 1
    assert image.shape == (1, 48, 48) and label.shape == (48, 48)
    assert data.names[0] == "synthetic_000" and data.instances.shape == (3, 48, 48)


@pytest.mark.parametrize(
    "args,kwargs,error",
    [((0,), {}, ValueError), ((1.5,), {}, TypeError), ((1, 8), {}, ValueError), ((1, 64), {"cell_size": 2}, ValueError)],
)
def test_bad_arguments(args, kwargs, error):
    with pytest.raises(error):
        make_synthetic_em(*args, **kwargs)

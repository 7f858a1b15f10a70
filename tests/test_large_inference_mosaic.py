"""The synthetic EM mosaic writer (large test and benchmark images, tile by tile) and streaming's
progress bar and optional-dependency handling."""
import subprocess
import sys

import numpy as np
import pytest
import torch

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")
pytest.importorskip("scipy")

from tests.inference_helpers import kaiming_unet
from unet_fast.data import synthetic_em_sample, write_synthetic_mosaic
from unet_fast.inference import predict_large


def dihedral_images(image: np.ndarray) -> list[np.ndarray]:
    return [np.rot90(f, k) for f in (image, image[:, ::-1]) for k in range(4)]


def test_mosaic_is_deterministic_tiled_and_made_of_synthetic_samples(tmp_path):
    write_synthetic_mosaic(tmp_path / "a.tif", 100, 75, seed=3, tile=32, distinct=2, labels_path=tmp_path / "l.zarr")
    write_synthetic_mosaic(tmp_path / "b.zarr", 100, 75, seed=3, tile=32, distinct=2)
    write_synthetic_mosaic(tmp_path / "c.tif", 100, 75, seed=4, tile=32, distinct=2)
    with tifffile.TiffFile(tmp_path / "a.tif") as tiff:
        assert tiff.is_bigtiff and tiff.pages.first.is_tiled and tiff.pages.first.tilelength == 32
        image = tiff.asarray()
    assert image.shape == (100, 75) and image.dtype == np.uint8
    assert np.array_equal(zarr.open_array(str(tmp_path / "b.zarr"), mode="r")[...], image)
    assert not np.array_equal(tifffile.imread(tmp_path / "c.tif"), image)
    labels = zarr.open_array(str(tmp_path / "l.zarr"), mode="r")[...]
    assert set(np.unique(labels)) == {0, 1}
    candidates = []
    for index in range(2):
        sample, sample_labels, _ = synthetic_em_sample(32, 3, index)
        candidates += [(np.round(i * 255).astype(np.uint8), l) for i, l in
                       zip(dihedral_images(sample), dihedral_images(sample_labels))]
    for top, left in [(0, 0), (32, 64), (96, 32)]:  # full, right-edge and bottom-edge tiles
        tile = image[top : top + 32, left : left + 32]
        h, w = tile.shape
        assert any(np.array_equal(tile, c[:h, :w]) and np.array_equal(labels[top : top + h, left : left + w], cl[:h, :w])
                   for c, cl in candidates)


def test_mosaic_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="multiple of 16"):
        write_synthetic_mosaic(tmp_path / "a.tif", 64, 64, tile=40)
    with pytest.raises(ValueError, match=".tif/.tiff or .zarr"):
        write_synthetic_mosaic(tmp_path / "a.png", 64, 64)


def test_progress_bar_shows_tiles_rate_and_megapixels(tmp_path, capsys):
    predict_large(kaiming_unet(), np.zeros((90, 90), np.uint8), tmp_path / "o.zarr", tile_size=80, progress=True)
    err = capsys.readouterr().err
    assert "9/9" in err and "tile/s" in err and "MP/s" in err


def test_import_stays_light_and_missing_zarr_names_the_extra(monkeypatch, tmp_path):
    code = "import sys, unet_fast.inference; assert 'zarr' not in sys.modules and 'tifffile' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    monkeypatch.setitem(sys.modules, "zarr", None)
    with pytest.raises(ImportError, match=r"pip install 'unet-fast\[io\]'"):
        predict_large(kaiming_unet(), torch.zeros(40, 40).numpy(), tmp_path / "o.zarr", progress=False)

"""ImageFolderDataset: formats, normalisation, 0/255 masks, stacks, and errors naming the file."""
from pathlib import Path

import numpy as np
import pytest
import torch

tifffile = pytest.importorskip("tifffile")
Image = pytest.importorskip("PIL.Image")
pytest.importorskip("scipy")  # unet_fast.data

from unet_fast.data import ImageFolderDataset, read_image, read_label

ISBI = Path(__file__).resolve().parents[3] / "shared" / "data" / "isbi2012"


def _dirs(root: Path) -> tuple[Path, Path]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    return root / "images", root / "labels"


def _label(h=6, w=7, values=(0, 1)):
    return np.resize(np.array(values, dtype=np.uint8), h * w).reshape(h, w)


def test_png_8_and_16_bit_gray_and_rgb(tmp_path):
    images, labels = _dirs(tmp_path)
    gray8 = np.arange(42, dtype=np.uint8).reshape(6, 7) * 6
    gray16 = np.arange(42, dtype=np.uint16).reshape(6, 7) * 1500
    Image.fromarray(gray8).save(images / "a.png")
    Image.fromarray(gray16).save(images / "b.png")
    Image.fromarray(_label()).save(labels / "a.png")
    Image.fromarray(_label() * 255).save(labels / "b.png")  # binary 0/255 mask
    data = ImageFolderDataset(tmp_path)
    assert data.names == ["a", "b"] and data.in_channels == 1 and len(data) == 2
    image, label = data[0]
    assert image.dtype == torch.float32 and image.shape == (1, 6, 7)
    np.testing.assert_allclose(image[0].numpy(), gray8 / 255, rtol=1e-6)
    np.testing.assert_allclose(data[1][0][0].numpy(), gray16 / 65535, rtol=1e-6)
    assert torch.equal(label, torch.from_numpy(_label().astype(np.int64)))
    assert torch.equal(data[1][1], label)  # 255 -> 1

    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    Image.fromarray(rgb, mode="RGBA").save(tmp_path / "rgba.png")
    (page,) = read_image(tmp_path / "rgba.png")
    np.testing.assert_allclose(page, np.moveaxis(rgb[..., :3], -1, 0) / 255, rtol=1e-6)


def test_tiff_stacks_rgb_and_multiclass_labels(tmp_path):
    images, labels = _dirs(tmp_path)
    stack = np.random.default_rng(1).integers(0, 65536, (5, 6, 7), dtype=np.uint16)
    tifffile.imwrite(images / "stack.tif", stack)
    tifffile.imwrite(labels / "stack.tiff", np.stack([_label(values=(0, 1, 2))] * 5))
    data = ImageFolderDataset(tmp_path, num_classes=3)
    assert len(data) == 5 and data.names[2] == "stack[2]"
    np.testing.assert_allclose(data[3][0][0].numpy(), stack[3] / 65535, rtol=1e-6)
    assert set(data[4][1].unique().tolist()) == {0, 1, 2}

    rgb = np.random.default_rng(2).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    for name in ("rgb.tif", "planar.tif"):
        (page,) = read_image(tmp_path / name)
        np.testing.assert_allclose(page, np.moveaxis(rgb, -1, 0) / 255, rtol=1e-6)


def test_minmax_normalisation_and_float_images(tmp_path):
    twelve_bit = (np.arange(42, dtype=np.uint16).reshape(6, 7) * 90 + 100)
    tifffile.imwrite(tmp_path / "a.tif", twelve_bit)
    (page,) = read_image(tmp_path / "a.tif", normalize="minmax")
    assert page.min() == 0 and page.max() == 1
    tifffile.imwrite(tmp_path / "f.tif", np.full((4, 4), 0.25, dtype=np.float32))
    assert read_image(tmp_path / "f.tif")[0].max() == 0.25
    tifffile.imwrite(tmp_path / "g.tif", np.full((4, 4), 3.0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"g\.tif.*minmax"):
        read_image(tmp_path / "g.tif")


@pytest.mark.parametrize(
    "setup,match",
    [
        ("missing_labels_dir", "labels"),
        ("unmatched", r"without a label: \['c.png'\]"),
        ("size", r"a\.png is 6x7.*labels.a\.png is 5x7"),
        ("values", r"a\.png: label values \[7\]"),
        ("unreadable", r"a\.png: cannot read"),
        ("suffix", r"notes\.txt: unsupported"),
        ("pages", "5 pages"),
        ("channels", "channel"),
        ("duplicate", "share the stem"),
    ],
)
def test_errors_name_the_file(tmp_path, setup, match):
    images, labels = _dirs(tmp_path)
    gray = np.zeros((6, 7), dtype=np.uint8)
    Image.fromarray(gray).save(images / "a.png")
    Image.fromarray(_label()).save(labels / "a.png")
    if setup == "missing_labels_dir":
        for f in labels.iterdir():
            f.unlink()
        labels.rmdir()
    elif setup == "unmatched":
        Image.fromarray(gray).save(images / "c.png")
    elif setup == "size":
        Image.fromarray(_label(h=5)).save(labels / "a.png")
    elif setup == "values":
        Image.fromarray(_label(values=(0, 7))).save(labels / "a.png")
    elif setup == "unreadable":
        (images / "a.png").write_bytes(b"not a png")
    elif setup == "suffix":
        (images / "notes.txt").write_text("hi")
    elif setup == "pages":
        tifffile.imwrite(images / "s.tif", np.zeros((5, 6, 7), dtype=np.uint8), photometric="minisblack")
        tifffile.imwrite(labels / "s.tif", np.zeros((4, 6, 7), dtype=np.uint8), photometric="minisblack")
    elif setup == "channels":
        Image.fromarray(np.zeros((6, 7, 3), dtype=np.uint8)).save(images / "b.png")
        Image.fromarray(_label()).save(labels / "b.png")
    elif setup == "duplicate":
        tifffile.imwrite(images / "a.tif", gray)
    with pytest.raises(ValueError, match=match):
        ImageFolderDataset(tmp_path)


def test_label_reader_rejects_color_labels(tmp_path):
    color = np.zeros((4, 4, 3), dtype=np.uint8)
    color[0, 0] = (1, 0, 0)
    Image.fromarray(color).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match="single-channel"):
        read_label(tmp_path / "c.png")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        ImageFolderDataset(tmp_path, num_classes=1)
    with pytest.raises(ValueError, match="normalize"):
        ImageFolderDataset(tmp_path, normalize="zscore")


@pytest.mark.skipif(not ISBI.is_dir(), reason="ISBI 2012 data not present")
def test_isbi2012_loads_out_of_the_box():
    data = ImageFolderDataset(ISBI)
    assert len(data) == 30 and data.in_channels == 1 and data.num_classes == 2
    image, label = data[0]
    assert image.shape == (1, 512, 512) and label.shape == (512, 512)
    assert set(label.unique().tolist()) == {0, 1}
    assert 0.6 < label.float().mean() < 0.9  # mostly cell (1), membrane (0) about 22%


def test_palette_png_gives_colors_for_images_and_indices_for_labels(tmp_path):
    indices = _label(values=(0, 1, 2))
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * 759)
    palette.save(tmp_path / "p.png")
    (label,) = read_label(tmp_path / "p.png", num_classes=3)
    np.testing.assert_array_equal(label, indices)
    (image,) = read_image(tmp_path / "p.png")
    assert image.shape == (3, 6, 7)
    np.testing.assert_allclose(image[:, indices == 1].T, np.tile([200 / 255, 10 / 255, 10 / 255], ((indices == 1).sum(), 1)), rtol=1e-6)


def _png_bytes(array) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiff_bytes(array) -> bytes:
    import io

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


NOISE = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)  # incompressible: a long pixel stream


@pytest.mark.parametrize(
    "where, content, match",
    [
        ("images", _png_bytes(NOISE)[: len(_png_bytes(NOISE)) // 2], r"a\.png: cannot read"),  # truncated PNG
        ("labels", _png_bytes(NOISE)[:40], r"a\.png: cannot read"),  # cut inside the header chunk
        ("images", b"", r"a\.png: the file is empty"),
        ("labels", b"", r"a\.png: the file is empty"),
    ],
)
def test_truncated_and_empty_pngs_name_the_file(tmp_path, where, content, match):
    from unet_fast.errors import DataError

    images, labels = _dirs(tmp_path)
    Image.fromarray(NOISE).save(images / "a.png")
    Image.fromarray((NOISE > 127).astype(np.uint8)).save(labels / "a.png")
    (tmp_path / where / "a.png").write_bytes(content)
    with pytest.raises(DataError, match=match) as error:
        ImageFolderDataset(tmp_path)
    assert str(tmp_path / where / "a.png") in str(error.value)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_tiff_names_the_file(tmp_path, keep):
    from unet_fast.errors import DataError

    data = _tiff_bytes(NOISE)
    (tmp_path / "t.tif").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match=r"t\.tif: cannot read"):
        read_image(tmp_path / "t.tif")


@pytest.mark.parametrize("layout", ["empty root", "empty images and labels", "only hidden files"])
def test_empty_data_folder_names_the_folder(tmp_path, layout):
    from unet_fast.errors import DataError

    if layout != "empty root":
        images, _ = _dirs(tmp_path)
        if layout == "only hidden files":
            (images / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(DataError, match="images") as error:
        ImageFolderDataset(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_label_values_outside_the_classes_and_size_mismatch_name_both_files(tmp_path):
    images, labels = _dirs(tmp_path)
    Image.fromarray(NOISE).save(images / "a.png")
    Image.fromarray(np.full((64, 64), 2, np.uint8)).save(labels / "a.png")
    with pytest.raises(ValueError, match=r"labels.a\.png: label values \[2\] are outside the classes \[0, 1\]"):
        ImageFolderDataset(tmp_path, num_classes=2)
    assert len(ImageFolderDataset(tmp_path, num_classes=3)) == 1
    Image.fromarray(np.zeros((64, 63), np.uint8)).save(labels / "a.png")
    with pytest.raises(ValueError, match=r"images.a\.png is 64x64 \(HxW\) but its label .*labels.a\.png is 64x63"):
        ImageFolderDataset(tmp_path)

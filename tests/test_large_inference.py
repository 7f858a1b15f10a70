"""Streamed overlap-tile prediction (predict_large) against in-memory predict_tiled.

Tolerances: predict_large computes each output pixel from the same aligned tile inputs as
predict_tiled, so in float32 only the convolutions' summation order differs (errors ~1e-6). Stored
probabilities are float16: rounding to nearest moves a value in [0, 1] by at most half a unit in the
last place, 2**-12 below 1, hence ATOL = 2**-12 plus the float32 margin. Labels agree except where
predict_tiled's two largest probabilities tie within that float32 margin.
"""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")
zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

from unet_fast import shapes
from tests.inference_helpers import kaiming_fast_unet, kaiming_unet, one_thread  # noqa: F401 (fixture)
from unet_fast.inference import predict_large, predict_tiled

FP32_MARGIN = 1e-5
ATOL = 2**-12 + FP32_MARGIN


def tiled_reference(model, image: np.ndarray, **kwargs):
    """predict_tiled's (K, H, W) probabilities and (H, W) labels of a (C, H, W) float image."""
    probs, labels = predict_tiled(model, torch.from_numpy(image), **kwargs)
    return probs.numpy(), labels.numpy()


def assert_matches(store_group, probs: np.ndarray, labels: np.ndarray) -> None:
    stored = store_group["probs"][...].astype(np.float32)
    np.testing.assert_allclose(stored, probs, atol=ATOL, rtol=0)
    top2 = np.sort(probs, axis=-3)[..., -2:, :, :]
    tie = (top2[..., 1, :, :] - top2[..., 0, :, :]) < FP32_MARGIN
    differ = store_group["labels"][...] != labels
    assert not (differ & ~tie).any()


@pytest.mark.parametrize(
    "kind, size, tile_size, tta",
    [
        ("reference", (130, 150), 100, False),  # 3 x 3 chunks of 60; sizes not multiples of them
        ("fast", (130, 150), 100, False),
        ("reference", (70, 45), 80, True),  # TTA on a rectangle: rotated frames tile their own grids
        ("fast", (70, 45), 80, True),
        ("reference", (7, 5), 80, True),  # smaller than the border (20): repeated reflection
        ("fast", (1, 3), 64, False),  # a one-pixel row is repeated
    ],
)
def test_streamed_equals_in_memory(kind, size, tile_size, tta, tmp_path):
    model = (kaiming_unet if kind == "reference" else kaiming_fast_unet)()
    image = np.random.default_rng(1).random(size, dtype=np.float32)
    probs, labels = tiled_reference(model, image[None], tile_size=tile_size, tta=tta)
    summary = predict_large(model, image, tmp_path / "out.zarr", tile_size=tile_size, tta=tta, probs=True,
                            batch_size=3, progress=False)
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert group["labels"].shape == size and group["probs"].shape == (3, *size)
    assert group["labels"].dtype == np.uint8 and group["probs"].dtype == np.float16
    assert_matches(group, probs, labels)
    assert summary["chunks"] == group["done"].shape[1] * group["done"].shape[2]
    assert group.attrs["unet_fast"]["complete"] is True


def test_chunks_align_with_output_tiles(tmp_path):
    model = kaiming_unet()
    predict_large(model, np.zeros((100, 70), np.uint8), tmp_path / "o.zarr", tile_size=80, probs=True,
                  progress=False)
    # Depth 3: 80 is a valid tile; it keeps 80 - 2 * 20 = 40 px, a multiple of the pool period 4,
    # so each chunk is one tile's kept output.
    kept = shapes.largest_valid_input_size(80, 3) - 2 * shapes.border(3)
    group = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert kept == 40 and group["labels"].chunks == (kept, kept) and group["probs"].chunks == (3, kept, kept)
    assert group["done"].shape == (1, 3, 2) and group["done"][...].all()
    assert group["labels"].compressors  # compressed


def test_integer_sources_are_normalised_like_training_and_stacks_run_per_slice(tmp_path):
    model = kaiming_unet(num_classes=2)
    stack = np.random.default_rng(2).integers(0, 65536, (2, 45, 38), dtype=np.uint16)
    predict_large(model, stack, tmp_path / "s.zarr", tile_size=80, probs=True, layout="ZYX", progress=False)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert group["labels"].shape == (2, 45, 38) and group["probs"].shape == (2, 2, 45, 38)
    for z in range(2):
        probs, labels = tiled_reference(model, (stack[z] / 65535).astype(np.float32)[None], tile_size=80)
        stored = {"probs": group["probs"][z], "labels": group["labels"][z]}
        assert_matches(stored, probs, labels)


def test_rgb_and_channel_first_layouts(tmp_path):
    model = kaiming_unet(in_channels=3, num_classes=2)
    rgb = np.random.default_rng(3).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    probs, labels = tiled_reference(model, (np.moveaxis(rgb, -1, 0) / 255).astype(np.float32), tile_size=80)
    predict_large(model, rgb, tmp_path / "rgb.zarr", tile_size=80, probs=True, progress=False)
    assert_matches(zarr.open_group(str(tmp_path / "rgb.zarr"), mode="r"), probs, labels)
    planar = np.ascontiguousarray(np.moveaxis(rgb, -1, 0))  # (3, H, W): channels, given the model
    predict_large(model, planar, tmp_path / "planar.zarr", tile_size=80, probs=True, progress=False)
    assert_matches(zarr.open_group(str(tmp_path / "planar.zarr"), mode="r"), probs, labels)


def test_ambiguous_layout_asks_for_channel_axis(tmp_path):
    model = kaiming_unet()
    with pytest.raises(ValueError, match="channel_axis"):
        predict_large(model, np.zeros((3, 40, 40), np.uint8), tmp_path / "a.zarr", progress=False)
    with pytest.raises(ValueError, match="3 channel"):  # told they are channels: the model takes 1
        predict_large(model, np.zeros((3, 40, 40), np.uint8), tmp_path / "a.zarr", channel_axis=0, progress=False)


def test_file_sources(tmp_path):
    """Tiled and strip TIFF stacks, Zarr arrays, OME-Zarr images and NumPy memmaps read lazily."""
    model = kaiming_unet(num_classes=2)
    stack = np.random.default_rng(4).integers(0, 256, (2, 50, 70), dtype=np.uint8)
    expected = [tiled_reference(model, (s / 255).astype(np.float32)[None], tile_size=80) for s in stack]
    tifffile.imwrite(tmp_path / "tiled.tif", stack, tile=(32, 32), compression="zlib")
    tifffile.imwrite(tmp_path / "strips.tif", stack, rowsperstrip=8)
    zarr.create_array(str(tmp_path / "in.zarr"), data=stack, chunks=(1, 32, 32))
    ome = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    ome.create_array("0", data=stack[0], chunks=(32, 32))
    ome.create_array("1", data=stack[0, ::2, ::2])
    ome.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "y", "type": "space"},
                                                            {"name": "x", "type": "space"}],
                                 "datasets": [{"path": "0"}, {"path": "1"}]}]
    memmap = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.uint8, shape=stack.shape)
    memmap[:] = stack
    for name, source in [("tiled", tmp_path / "tiled.tif"), ("strips", tmp_path / "strips.tif"),
                         ("zarr", str(tmp_path / "in.zarr")), ("memmap", memmap)]:
        predict_large(model, source, tmp_path / f"{name}.zarr", tile_size=80, probs=True, layout="ZYX",
                      progress=False)
        group = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r")
        for z, (probs, labels) in enumerate(expected):
            assert_matches({"probs": group["probs"][z], "labels": group["labels"][z]}, probs, labels)
    predict_large(model, tmp_path / "ome.zarr", tmp_path / "ome_out.zarr", tile_size=80, probs=True,
                  progress=False)
    assert_matches(zarr.open_group(str(tmp_path / "ome_out.zarr"), mode="r"), *expected[0])


def test_bigtiff_labels_output(tmp_path):
    model = kaiming_unet(num_classes=2)
    image = np.random.default_rng(5).integers(0, 256, (270, 44), dtype=np.uint8)  # two TIFF tile rows
    _, labels = tiled_reference(model, (image / 255).astype(np.float32)[None], tile_size=80)
    out = tmp_path / "labels.tif"
    predict_large(model, image, out, tile_size=80, progress=False)
    with tifffile.TiffFile(out) as tiff:
        assert tiff.is_bigtiff and tiff.pages.first.is_tiled
        written = tiff.asarray()
    assert written.dtype == np.uint8
    assert (written != labels).mean() < 1e-3  # ties only (the probabilities are checked above)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]  # no partial store left


def test_existing_outputs_are_refused_resumed_or_overwritten(tmp_path):
    model = kaiming_unet(num_classes=2)
    image = np.zeros((50, 50), np.uint8)
    out = tmp_path / "o.zarr"
    predict_large(model, image, out, tile_size=80, progress=False)
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        predict_large(model, image, out, tile_size=80, progress=False)
    assert predict_large(model, image, out, tile_size=80, resume=True, progress=False)["tiles"] == 0
    with pytest.raises(ValueError, match="tta"):
        predict_large(model, image, out, tile_size=80, tta=True, resume=True, progress=False)
    assert predict_large(model, image, out, tile_size=80, overwrite=True, progress=False)["tiles"] > 0
    (tmp_path / "labels.tif").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        predict_large(model, image, tmp_path / "labels.tif", tile_size=80, progress=False)


def test_errors_name_the_problem(tmp_path):
    model = kaiming_unet(num_classes=2)
    image = np.random.default_rng(6).integers(0, 256, (64, 512), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "whole.tif", image, tile=(32, 32), compression="zlib")
    data = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match="cut.tif.*truncated"):
        predict_large(model, tmp_path / "cut.tif", tmp_path / "cut.zarr", tile_size=80, progress=False)
    assert not zarr.open_group(str(tmp_path / "cut.zarr"), mode="r").attrs["unet_fast"]["complete"]
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match="junk.tif"):
        predict_large(model, tmp_path / "junk.tif", tmp_path / "j.zarr", progress=False)
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        predict_large(model, tmp_path / "missing.tif", tmp_path / "m.zarr", progress=False)
    with pytest.raises(ValueError, match="3 channel.*takes 1"):
        predict_large(model, np.zeros((40, 40, 3), np.uint8), tmp_path / "c.zarr", progress=False)
    with pytest.raises(ValueError, match="labels only"):
        predict_large(model, image, tmp_path / "p.tif", probs=True, progress=False)
    with pytest.raises(ValueError, match=".zarr store or a .tif"):
        predict_large(model, image, tmp_path / "out.png", progress=False)
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        predict_large(model, np.full((40, 40), 2.0, np.float32), tmp_path / "f.zarr", progress=False)
    with pytest.raises(ValueError, match="tile_size=30 is too small"):
        predict_large(model, image, tmp_path / "t.zarr", tile_size=30, progress=False)


def test_a_full_disk_is_reported_and_nothing_is_recorded_done(tmp_path, monkeypatch):
    import errno

    model = kaiming_unet(num_classes=2)
    out = tmp_path / "o.zarr"
    predict_large(model, np.zeros((50, 50), np.uint8), out, tile_size=80, progress=False)  # creates the store

    def no_space(self, selection, value):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr.Array, "__setitem__", no_space)
    with pytest.raises(OSError, match="o.zarr: the disk is full.*--resume"):
        predict_large(model, np.zeros((50, 50), np.uint8), out, tile_size=80, overwrite=True, progress=False)
    monkeypatch.undo()
    group = zarr.open_group(str(out), mode="r")
    assert not group["done"][...].any() and not group.attrs["unet_fast"]["complete"]


class ReadRecorder:
    """A minimal array-like (shape, dtype, slicing only) that records which threads read it."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.readers: set[int] = set()

    def __getitem__(self, index):
        import threading

        self.readers.add(threading.get_ident())
        return self.array[index]


def test_any_array_like_is_read_in_the_background_thread(tmp_path):
    import threading

    model = kaiming_unet(num_classes=2)
    image = np.random.default_rng(7).integers(0, 256, (90, 70), dtype=np.uint8)
    source = ReadRecorder(image)
    predict_large(model, source, tmp_path / "o.zarr", tile_size=80, probs=True, progress=False)
    assert_matches(zarr.open_group(str(tmp_path / "o.zarr"), mode="r"),
                   *tiled_reference(model, (image / 255).astype(np.float32)[None], tile_size=80))
    assert source.readers and threading.get_ident() not in source.readers  # read ahead, off the model's thread


def test_channels_last_batches_and_bf16_autocast(tmp_path):
    model = kaiming_fast_unet(num_classes=2)
    image = np.random.default_rng(8).random((90, 70), dtype=np.float32)
    probs, labels = tiled_reference(model, image[None], tile_size=80)
    predict_large(model.to(memory_format=torch.channels_last), image, tmp_path / "cl.zarr", tile_size=80,
                  probs=True, channels_last=True, progress=False)
    assert_matches(zarr.open_group(str(tmp_path / "cl.zarr"), mode="r"), probs, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # predict_tiled's tiles under the same autocast
        bf16_probs, _ = tiled_reference(model.to(memory_format=torch.contiguous_format), image[None], tile_size=80)
    predict_large(model, image, tmp_path / "bf16.zarr", tile_size=80, probs=True, amp="bf16", progress=False)
    stored = zarr.open_group(str(tmp_path / "bf16.zarr"), mode="r")["probs"][...].astype(np.float32)
    assert np.abs(bf16_probs - probs).max() > 1e-3  # autocast really ran in bf16
    # The same bf16 tiles, batched differently: a logit of order 1 may move by one bf16 rounding (2**-8).
    np.testing.assert_allclose(stored, bf16_probs, atol=ATOL + 2**-8, rtol=0)


def test_more_than_256_classes_give_uint16_labels(tmp_path):
    model = kaiming_unet(num_classes=300, base_channels=2, depth=2)
    final_bias = [p for p in model.parameters() if p.shape == (300,)][-1]
    with torch.no_grad():
        final_bias[256:] += 3.0  # classes past 8 bits win at many pixels
    image = np.random.default_rng(9).random((30, 20), dtype=np.float32)
    probs, labels = tiled_reference(model, image[None], tile_size=64)
    predict_large(model, image, tmp_path / "o.zarr", tile_size=64, probs=True, progress=False)
    group = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert group["labels"].dtype == np.uint16 and labels.max() > 255
    assert_matches(group, probs, labels)


def test_minmax_normalisation_matches_the_training_loader(tmp_path):
    from unet_fast.data.folder import normalize_image

    model = kaiming_unet(num_classes=2)
    rng = np.random.default_rng(10)  # 12-bit-like data in 16-bit pixels, a different range per slice
    stack = np.stack([rng.integers(1000, 5000, (600, 40)), rng.integers(0, 300, (600, 40))]).astype(np.uint16)
    predict_large(model, stack, tmp_path / "s.zarr", tile_size=80, probs=True, layout="ZYX", normalize="minmax",
                  progress=False)  # 600 rows: the min/max pass reads several bands
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    for z in range(2):
        expected = tiled_reference(model, normalize_image(stack[z], "slice", "minmax"), tile_size=80)
        assert_matches({"probs": group["probs"][z], "labels": group["labels"][z]}, *expected)
    with pytest.raises(ValueError, match="normalize"):  # resumed with another normalisation
        predict_large(model, stack, tmp_path / "s.zarr", tile_size=80, probs=True, layout="ZYX", resume=True,
                      progress=False)
    with pytest.raises(ValueError, match="normalize must be one of"):
        predict_large(model, stack, tmp_path / "x.zarr", normalize="percentile", progress=False)

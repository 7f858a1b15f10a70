"""`unet-fast predict` streaming into Zarr, resuming after a kill, and torchrun scale-out."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")
zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")
pytest.importorskip("scipy")
pytest.importorskip("safetensors")

from tests.inference_helpers import one_thread  # noqa: F401 (fixture)
from unet_fast.cli import main
from unet_fast.inference import predict_large
from unet_fast.predict_command import _share_of_inputs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained run (depth 3, 2 channels) to predict with."""
    run = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--data", "synthetic", "--out", str(run), "--steps", "1", "--base-channels", "2",
                 "--depth", "3", "--tile-size", "60", "--synthetic-images", "2", "--synthetic-size", "64",
                 "--val-images", "1", "--device", "cpu", "--no-progress"]) == 0
    return run


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def test_predict_into_zarr_groups_per_stem(run_dir, tmp_path, capsys):
    from unet_fast.train import load_model

    rng = np.random.default_rng(0)
    images = {name: rng.integers(0, 256, (70, 90), dtype=np.uint8) for name in ("a", "b")}
    for name, image in images.items():
        tifffile.imwrite(tmp_path / f"{name}.tif", image, tile=(32, 32))
    out = tmp_path / "pred.zarr"
    argv = ["predict", "--checkpoint", str(run_dir), "--input", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"),
            "--out", str(out), "--probs", "--tile-size", "80", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    model = load_model(run_dir, "cpu")
    root = zarr.open_group(str(out), mode="r")
    for name, image in images.items():
        predict_large(model, image, tmp_path / f"{name}_api.zarr", tile_size=80, probs=True, progress=False)
        expected = zarr.open_group(str(tmp_path / f"{name}_api.zarr"), mode="r")
        assert np.array_equal(root[name]["labels"][...], expected["labels"][...])
        assert np.array_equal(root[name]["probs"][...], expected["probs"][...])
    capsys.readouterr()
    assert main(argv) == 2  # exists: refused with a message, no traceback
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and "Traceback" not in err
    assert main(argv + ["--resume"]) == 0
    assert main(["predict", "--checkpoint", str(run_dir), "--input", str(tmp_path / "a.tif"), "--out",
                 str(tmp_path / "x.zarr"), "--layout", "QQ", "--device", "cpu"]) == 2
    assert "layout 'QQ'" in capsys.readouterr().err


RESUMABLE_RUN = textwrap.dedent("""
    import sys, time, torch
    from unet_fast.inference import predict_large
    from unet_fast.train import load_model

    class Slow(torch.nn.Module):  # the trained model, slowed so that the parent can kill it midway
        def __init__(self, model):
            super().__init__()
            self.module = model  # found by the U-Net wrapper lookup, as DDP's
        def forward(self, x):
            time.sleep(0.05)
            return self.module(x)

    model = Slow(load_model(sys.argv[1], "cpu"))
    predict_large(model, sys.argv[2], sys.argv[3], tile_size=60, batch_size=1, probs=True, progress=False)
""")


def test_a_killed_run_resumes_to_the_uninterrupted_result(run_dir, tmp_path):
    from unet_fast.data import write_synthetic_mosaic
    from unet_fast.train import load_model

    source, out = tmp_path / "mosaic.tif", tmp_path / "out.zarr"
    write_synthetic_mosaic(source, 200, 180, tile=64, distinct=2)
    child = subprocess.Popen([sys.executable, "-c", RESUMABLE_RUN, str(run_dir), str(source), str(out)],
                             env=child_env())
    deadline = time.monotonic() + 120
    recorded = 0
    while recorded < 20 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            recorded = int(zarr.open_group(str(out), mode="r")["done"][...].sum())
        except Exception:  # the store is still being created
            continue
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = zarr.open_group(str(out), mode="r")["done"][...]
    assert 20 <= done.sum() < done.size, "the run was not interrupted midway"
    model = load_model(run_dir, "cpu")
    resumed = predict_large(model, source, out, tile_size=60, batch_size=1, probs=True, resume=True,
                            progress=False)
    assert resumed["chunks"] == done.size - done.sum()
    predict_large(model, source, tmp_path / "whole.zarr", tile_size=60, batch_size=1, probs=True, progress=False)
    got, want = zarr.open_group(str(out), mode="r"), zarr.open_group(str(tmp_path / "whole.zarr"), mode="r")
    assert np.array_equal(got["labels"][...], want["labels"][...])
    assert np.array_equal(got["probs"][...], want["probs"][...])
    assert got["done"][...].all() and got.attrs["unet_fast"]["complete"]


HEAVY = pytest.mark.skipif(bool(os.environ.get("UNET_FAST_SKIP_HEAVY")), reason="heavy: runs once, in the main suite")


def torchrun_predict(argv: list[str]) -> str:
    """`unet-fast predict` under torchrun, 2 CPU processes (gloo); their stdout."""
    launcher = [sys.executable, "-m", "torch.distributed.run"]  # torchrun where it is not on PATH
    result = subprocess.run([*launcher, "--standalone", "--nproc_per_node", "2", "-m", "unet_fast", *argv],
                            env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def assert_same_prediction(one, two) -> None:
    """Two Zarr prediction groups hold identical labels and probabilities, every chunk recorded done."""
    assert np.array_equal(one["labels"][...], two["labels"][...])
    np.testing.assert_array_equal(one["probs"][...], two["probs"][...])
    assert two["done"][...].all() and two.attrs["unet_fast"]["complete"]


def owners(log: str, paths) -> dict:
    """For each input path, the ranks whose `rank R: <path> -> ...` lines name it."""
    found = {str(p): [] for p in paths}
    for line in log.splitlines():
        for path in found:
            if line.startswith("rank ") and f": {path} -> " in line:
                found[path].append(int(line.split(":")[0].split()[1]))
    return found


def test_torchrun_divides_the_chunks_of_a_single_input(run_dir, tmp_path):
    from unet_fast.data import write_synthetic_mosaic

    source = tmp_path / "mosaic.zarr"
    write_synthetic_mosaic(source, 150, 130, tile=64, distinct=2)
    common = ["predict", "--checkpoint", str(run_dir), "--input", str(source), "--probs", "--tile-size", "80",
              "--batch-size", "2", "--device", "cpu", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "one.zarr")]) == 0
    log = torchrun_predict(common + ["--out", str(tmp_path / "two.zarr")])
    assert owners(log, [source]) == {str(source): [0]} and "divided among 2 ranks" in log
    one, two = zarr.open_group(str(tmp_path / "one.zarr"), mode="r"), zarr.open_group(str(tmp_path / "two.zarr"), mode="r")
    assert_same_prediction(one, two)


def small_inputs(directory: Path) -> list[Path]:
    """Two small TIFFs (predicted in memory into a directory) and a Zarr mosaic (always streamed)."""
    from unet_fast.data import write_synthetic_mosaic

    rng = np.random.default_rng(1)
    paths = [directory / "a.tif", directory / "b.tif", directory / "c.zarr"]
    for path, shape in zip(paths[:2], [(70, 90), (64, 64)]):
        tifffile.imwrite(path, rng.integers(0, 256, shape, dtype=np.uint8))
    write_synthetic_mosaic(paths[2], 100, 120, tile=64, distinct=2)
    return paths


@HEAVY
def test_torchrun_divides_whole_inputs_into_a_directory(run_dir, tmp_path):
    """3 inputs >= 2 ranks: each input whole on one rank, the files those of one process."""
    from PIL import Image

    paths = small_inputs(tmp_path)
    common = ["predict", "--checkpoint", str(run_dir), "--input", *map(str, paths), "--probs", "--tile-size", "80",
              "--device", "cpu", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    log = torchrun_predict(common + ["--out", str(tmp_path / "two")])
    assert owners(log, paths) == {str(paths[0]): [0], str(paths[1]): [1], str(paths[2]): [0]}, log
    for stem in ("a", "b"):
        for name, read in ((f"{stem}.png", lambda p: np.asarray(Image.open(p))), (f"{stem}_probs.tif", tifffile.imread)):
            assert np.array_equal(read(tmp_path / "one" / name), read(tmp_path / "two" / name)), name
    assert_same_prediction(zarr.open_group(str(tmp_path / "one" / "c.zarr"), mode="r"),
                           zarr.open_group(str(tmp_path / "two" / "c.zarr"), mode="r"))
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@HEAVY
def test_torchrun_divides_whole_inputs_into_one_store(run_dir, tmp_path):
    """2 inputs, 2 ranks: both ranks add their input's group to one .zarr store at once."""
    paths = small_inputs(tmp_path)[1:]
    common = ["predict", "--checkpoint", str(run_dir), "--input", *map(str, paths), "--probs", "--tile-size", "80",
              "--device", "cpu", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "one.zarr")]) == 0
    log = torchrun_predict(common + ["--out", str(tmp_path / "two.zarr")])
    assert owners(log, paths) == {str(paths[0]): [0], str(paths[1]): [1]}, log
    one, two = zarr.open_group(str(tmp_path / "one.zarr"), mode="r"), zarr.open_group(str(tmp_path / "two.zarr"), mode="r")
    assert sorted(two.group_keys()) == ["b", "c"]
    for stem in ("b", "c"):
        assert_same_prediction(one[stem], two[stem])


@pytest.mark.parametrize("inputs", range(1, 6))
@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_input_has_exactly_one_writer(inputs, world):
    """Each input is predicted whole by one rank, or streamed by every rank dividing its chunks."""
    paths = [Path(f"in{index}.tif") for index in range(inputs)]
    streamed = paths[::2]
    shares = [_share_of_inputs(paths, streamed, rank, world) for rank in range(world)]
    for path in paths:
        whole = [rank for rank, (alone, _) in enumerate(shares) if path in alone]
        divided = [rank for rank, (_, shared) in enumerate(shares) if path in shared]
        assert (len(whole), len(divided)) in ((1, 0), (0, world)), (path, shares)
        assert not divided or path in streamed  # an in-memory prediction cannot be divided
    if inputs >= world:  # enough inputs: no rank idle, none shares
        assert all(alone and not shared for alone, shared in shares)

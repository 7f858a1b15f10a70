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


def test_torchrun_two_processes_equal_one(run_dir, tmp_path):
    from unet_fast.data import write_synthetic_mosaic

    source = tmp_path / "mosaic.zarr"
    write_synthetic_mosaic(source, 150, 130, tile=64, distinct=2)
    common = ["predict", "--checkpoint", str(run_dir), "--input", str(source), "--probs", "--tile-size", "80",
              "--batch-size", "2", "--device", "cpu", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "one.zarr")]) == 0
    launcher = [sys.executable, "-m", "torch.distributed.run"]  # torchrun where it is not on PATH
    result = subprocess.run([*launcher, "--standalone", "--nproc_per_node", "2", "-m", "unet_fast", *common,
                             "--out", str(tmp_path / "two.zarr")], env=child_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = zarr.open_group(str(tmp_path / "one.zarr"), mode="r"), zarr.open_group(str(tmp_path / "two.zarr"), mode="r")
    assert np.array_equal(one["labels"][...], two["labels"][...])
    np.testing.assert_array_equal(one["probs"][...], two["probs"][...])
    assert two["done"][...].all()

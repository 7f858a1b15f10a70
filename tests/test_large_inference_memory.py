"""Host memory of streamed prediction does not grow with the image (a subprocess, measured by ru_maxrss).

A 10000 x 10000 uint8 tiled TIFF (the synthetic mosaic, written tile by tile) through
UNet(base_channels=2, depth=2) on CPU with probabilities: its float32 input and two-class float32
probabilities alone would be 1.2 GB; the streamed run must raise the peak RSS by less than 350 MB over
what it was after the imports and the model's creation. Heavy (minutes on 2 cores): marked slow and
skipped where UNET_FAST_SKIP_HEAVY is set (the Makefile's second run of the suite on the oldest stack).
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("zarr")
pytest.importorskip("tifffile")
pytest.importorskip("scipy")

ROOT = Path(__file__).resolve().parents[1]
SIZE = 10_000
BOUND_MB = 350

CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy, tifffile, torch, tqdm, zarr  # every import before the baseline
    import unet_fast
    from unet_fast.inference import predict_large

    torch.set_num_threads(1)
    model = unet_fast.UNet(base_channels=2, depth=2, backend="torch")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = predict_large(model, sys.argv[1], sys.argv[2], probs=True, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_mb": (after - before) / 1024, "baseline_mb": before / 1024, **summary}))
""")


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get("UNET_FAST_SKIP_HEAVY")), reason="heavy: runs once, in the main suite")
def test_peak_rss_growth_is_bounded_on_a_10k_image(tmp_path):
    import zarr

    from unet_fast.data import write_synthetic_mosaic

    source = tmp_path / "mosaic.tif"
    write_synthetic_mosaic(source, SIZE, SIZE, tile=512, distinct=2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", CHILD, str(source), str(tmp_path / "out.zarr")], env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["growth_mb"] < BOUND_MB, measured
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert out["labels"].shape == (SIZE, SIZE) and out["probs"].shape == (2, SIZE, SIZE)
    assert out["done"][...].all() and out.attrs["unet_fast"]["complete"]

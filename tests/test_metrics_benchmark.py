"""benchmarks/bench_em_report.py's logic (unet_fast.benchmark.em_report) on a tiny image folder: the report
states the split, the paper's figures and where they come from, and scores what it predicted."""
import json

import numpy as np
import pytest

for _package in ("scipy", "skimage", "safetensors", "tifffile"):
    pytest.importorskip(_package)
Image = pytest.importorskip("PIL.Image")

from unet_fast import _ext  # noqa: E402

pytestmark = pytest.mark.skipif(_ext._C is None, reason="the warping error needs the compiled extension")


@pytest.fixture
def folder(tmp_path):
    from scipy import ndimage

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(3):
        cells = ndimage.gaussian_filter(rng.standard_normal((48, 52)), 2.0) > -0.3
        image = np.where(cells, 200, 60) + rng.integers(0, 30, cells.shape)
        Image.fromarray(image.astype(np.uint8)).save(tmp_path / "images" / f"s{i}.png")
        Image.fromarray(cells.astype(np.uint8) * 255).save(tmp_path / "labels" / f"s{i}.png")
    return tmp_path


def test_report_and_speed_on_a_tiny_folder(folder, capsys):
    from unet_fast.benchmark.em_report import PAPER_TABLE_1, main

    out = folder / "isbi.json"
    assert main(["--data", str(folder), "--steps", "1", "--base-channels", "2", "--depth", "2", "--tile-size", "44",
                 "--held-out", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["split"] == {"train": ["s0", "s1"], "held_out": ["s2"]}
    assert result["paper_table_1"] == PAPER_TABLE_1 == {"warping_error": 0.000353, "rand_error": 0.0382,
                                                        "pixel_error": 0.0611}
    assert "test set" in result["note"] and "held-out training slices" in result["note"]
    assert result["training_seconds"] > 0 and result["environment"]["device_type"] == "cpu"
    ours = result["ours"]
    for key in PAPER_TABLE_1:
        assert 0.0 <= ours["at_argmax"][key] <= 1.0
        best = ours["best_threshold"][key]
        assert best["value"] <= ours["at_argmax"][key] + 1e-12  # 0.5 is among the thresholds
    assert "paper (test set)" in capsys.readouterr().out
    speed = folder / "speed.json"
    assert main(["--speed", "--data", str(folder), "--rounds", "1", "--json", str(speed)]) == 0
    timings = json.loads(speed.read_text())["timings"]
    assert {"warping_error", "rand_scores", "skimage_adapted_rand_error"} <= set(timings)


def test_a_missing_data_directory_is_a_clear_exit(tmp_path):
    from unet_fast.benchmark.em_report import main

    with pytest.raises(SystemExit, match="is not a directory"):
        main(["--data", str(tmp_path / "nothing"), "--steps", "1"])

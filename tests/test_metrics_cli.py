"""`unet-fast evaluate`: class maps and probability maps against labels, JSON/CSV/plot outputs,
and a table of user mistakes that must end with a message and exit code 2, no traceback."""
import csv
import json

import numpy as np
import pytest

for _package in ("scipy", "tifffile", "skimage"):
    pytest.importorskip(_package)
Image = pytest.importorskip("PIL.Image")
import tifffile  # noqa: E402

from unet_fast import _ext  # noqa: E402
from unet_fast.cli import main  # noqa: E402
from unet_fast.metrics import (  # noqa: E402
    best_over_thresholds,
    foreground_dice,
    pixel_error,
    rand_error,
    warping_error,
)

pytestmark = pytest.mark.skipif(_ext._C is None, reason="the warping error needs the compiled extension")


def _truth(seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((24, 28)), 1.5)
    return (field > np.quantile(field, 0.3)).astype(np.uint8)


@pytest.fixture
def folders(tmp_path):
    """labels/{a,b}.png (0 / 255 as ISBI), pred/{a,b}.png class maps, pred/{a,b}_probs.tif."""
    labels, pred = tmp_path / "labels", tmp_path / "pred"
    labels.mkdir()
    pred.mkdir()
    data = {}
    for i, stem in enumerate("ab"):
        truth = _truth(i)
        rng = np.random.default_rng(10 + i)
        cell_prob = np.clip(np.where(truth == 1, 0.7, 0.3) + rng.normal(0, 0.25, truth.shape), 0, 1).astype(np.float32)
        Image.fromarray(truth * 255).save(labels / f"{stem}.png")
        Image.fromarray((cell_prob >= 0.5).astype(np.uint8)).save(pred / f"{stem}.png")
        tifffile.imwrite(pred / f"{stem}_probs.tif", np.stack([1 - cell_prob, cell_prob]))
        data[stem] = (truth.astype(np.int64), cell_prob)
    return tmp_path, data


def test_class_maps_table_json_and_csv(folders, capsys):
    root, data = folders
    argv = ["evaluate", "--pred", str(root / "pred"), "--labels", str(root / "labels"), "--metrics", "pixel,rand,warping",
            "--json", str(root / "r.json"), "--csv", str(root / "r.csv")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "warping_error" in out and "best threshold" not in out
    result = json.loads((root / "r.json").read_text())
    assert result["metrics"] == ["pixel", "rand", "warping"]
    for row in result["images"]:
        truth, prob = data[row["image"]]
        pred = (prob >= 0.5).astype(np.int64)
        assert row["pixel"] == pytest.approx(pixel_error(pred, truth))
        assert row["rand"] == pytest.approx(rand_error(pred, truth))
        assert row["warping"] == pytest.approx(warping_error(pred, truth)["error"])
    assert result["mean"]["rand"] == pytest.approx(np.mean([r["rand"] for r in result["images"]]))
    rows = list(csv.DictReader((root / "r.csv").open()))
    assert [r["image"] for r in rows] == ["a", "b", "mean"]
    assert float(rows[0]["pixel"]) == pytest.approx(result["images"][0]["pixel"])


def test_probability_maps_report_the_best_threshold_and_plot(folders, capsys):
    root, data = folders
    thresholds = [0.3, 0.4, 0.5, 0.6, 0.7]
    assert main(["evaluate", "--pred", str(root / "pred"), "--labels", str(root / "labels"), "--probs",
                 "--metrics", "pixel,rand,dice", "--thresholds", ",".join(map(str, thresholds)),
                 "--json", str(root / "r.json"), "--plot", str(root / "t.png")]) == 0
    assert "best threshold" in capsys.readouterr().out
    result = json.loads((root / "r.json").read_text())
    truths = np.stack([data[s][0] for s in "ab"])
    probs = np.stack([data[s][1] for s in "ab"])
    for name in ("pixel", "rand"):
        # Same-size images: these batch scores are the per-image means the command picks from.
        best = best_over_thresholds(name, probs, truths, thresholds)
        assert result["best_threshold"][name] == best["threshold"]
        assert result["mean"][name] == pytest.approx(best["value"])
        np.testing.assert_allclose(result["mean_by_threshold"][name], best["values"])
    # Dice pools pixel counts over a batch, so it is checked image by image (higher is better).
    dice = [np.mean([foreground_dice(data[s][1], data[s][0], threshold=t) for s in "ab"]) for t in thresholds]
    assert result["best_threshold"]["dice"] == thresholds[int(np.argmax(dice))]
    np.testing.assert_allclose(result["mean_by_threshold"]["dice"], dice)
    assert (root / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _unmatched(root):
    Image.fromarray(np.zeros((24, 28), np.uint8)).save(root / "labels" / "c.png")


def _extra(root):
    Image.fromarray(np.zeros((24, 28), np.uint8)).save(root / "pred" / "z.png")


def _small(root):
    Image.fromarray(np.zeros((20, 28), np.uint8)).save(root / "pred" / "a.png")


def _out_of_range(root):
    tifffile.imwrite(root / "pred" / "a_probs.tif", np.full((2, 24, 28), 1.5, np.float32))


def _no_probs(root):
    for stem in "ab":
        (root / "pred" / f"{stem}_probs.tif").unlink()


@pytest.mark.parametrize(
    "change, options, message",
    [
        (None, {"--pred": "/nonexistent"}, "--pred /nonexistent is not a directory"),
        (None, {"--labels": "/nonexistent"}, "--labels /nonexistent is not a directory"),
        (_unmatched, {}, "--pred has no file for the label stem(s) c"),
        (_extra, {}, "--labels has no file for the prediction stem(s) z"),
        (None, {"--metrics": "pixel,foo"}, "unknown metric 'foo'"),
        (None, {"--metrics": ","}, "--metrics is empty"),
        (_small, {}, "is 20x28 but"),
        (None, {"--plot": "x.png"}, "need --probs"),
        (None, {"--probs": None, "--thresholds": "0.5,2"}, "--thresholds must be comma-separated numbers in [0, 1]"),
        (_no_probs, {"--probs": None}, "holds no <stem>_probs.tif"),
        (_out_of_range, {"--probs": None}, "outside [0, 1]"),
        (None, {"--foreground": "2"}, "--foreground must be a class id in [0, 2)"),
    ],
)
def test_user_mistakes_exit_2_with_a_message(folders, change, options, message, capsys):
    root, _ = folders
    if change:
        change(root)
    options = {"--pred": str(root / "pred"), "--labels": str(root / "labels"), "--metrics": "pixel", **options}
    argv = ["evaluate"] + [item for key, value in options.items() for item in ((key,) if value is None else (key, value))]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err

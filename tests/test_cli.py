"""The unet-fast command end to end on tiny settings: train -> predict -> evaluate, help, errors."""
import numpy as np
import pytest
from PIL import Image

from unet_fast.cli import main


@pytest.mark.parametrize("command", ["train", "predict", "evaluate", "demo"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--device" in capsys.readouterr().out


def test_train_predict_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--out", str(run), "--steps", "2", "--base-channels", "2",
                 "--depth", "3", "--tile-size", "60", "--synthetic-images", "2", "--synthetic-size", "64",
                 "--val-images", "1", "--device", "cpu", "--no-progress"]) == 0
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 50), dtype=np.uint8)).save(data / "images" / "a.png")
    Image.fromarray((rng.random((37, 50)) > 0.5).astype(np.uint8) * 255).save(data / "labels" / "a.png")
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run), "--input", str(data / "images"), "--out", str(out),
                 "--probs", "--tta", "--device", "cpu"]) == 0
    labels = np.asarray(Image.open(out / "a.png"))
    assert labels.shape == (37, 50) and set(np.unique(labels)) <= {0, 1}
    import tifffile

    probs = tifffile.imread(out / "a_probs.tif")
    assert probs.shape == (2, 37, 50)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(probs.argmax(axis=0), labels)
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(out), "--labels", str(data / "labels")]) == 0
    assert "rand_error" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "--checkpoint", "/nonexistent", "--input", "x.png", "--out", "o"], "does not exist"),
        (["evaluate", "--pred", "/nonexistent", "--labels", "/nonexistent"], "not a directory"),
        (["train", "--data", "/nonexistent", "--steps", "1", "--device", "cpu"], "synthetic"),
    ],
)
def test_user_errors_exit_2_without_traceback(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err

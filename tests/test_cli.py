"""The unet-fast command end to end on tiny settings: train -> predict -> evaluate, help, errors."""
import numpy as np
import pytest
for _package in ("scipy", "safetensors", "tifffile"):  # the train extra
    pytest.importorskip(_package)
Image = pytest.importorskip("PIL.Image")

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


TINY_TRAIN = ["--data", "synthetic", "--steps", "2", "--base-channels", "2", "--depth", "3", "--tile-size", "60",
              "--synthetic-images", "2", "--synthetic-size", "64", "--val-images", "1", "--device", "cpu",
              "--no-progress"]


def test_resume_uses_the_saved_configuration(tmp_path, capsys):
    """--resume needs only --out and the new step count; conflicting options are named."""
    run = str(tmp_path / "run")
    assert main(["train", "--out", run, *TINY_TRAIN]) == 0
    assert main(["train", "--out", run, "--resume", "--steps", "3", "--no-progress"]) == 0
    from unet_fast import checkpoint as ckpt

    _, _, state = ckpt.load_checkpoint(run)
    assert state["step"] == 3 and state["config"]["base_channels"] == 2
    capsys.readouterr()
    assert main(["train", "--out", run, "--resume", "--steps", "4", "--base-channels", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "base_channels=4" in err and "Traceback" not in err


def test_paper_does_not_override_typed_options(tmp_path, capsys, monkeypatch):
    import unet_fast.train as train_module

    seen = {}
    monkeypatch.setattr(train_module, "train", lambda config, started=None: seen.setdefault("config", config) and {"run_dir": "x"})
    assert main(["train", "--paper", "--out", str(tmp_path / "a"), "--steps", "7", "--device", "cpu"]) == 0
    assert seen["config"].depth == 5 and seen["config"].tile_size == 572 and seen["config"].steps == 7
    paper = seen.pop("config")
    assert (paper.optimizer, paper.momentum, paper.class_balance) == ("sgd", 0.99, True)
    assert main(["train", "--out", str(tmp_path / "c"), "--device", "cpu"]) == 0
    default = seen.pop("config")  # the short-run recipe: AdamW with cosine decay, plain cross-entropy
    assert (default.optimizer, default.lr_schedule, default.class_balance, default.w0, default.tile_size) == (
        "adamw", "cosine", False, 0.0, 572)
    with pytest.raises(SystemExit) as exit_info:  # an argparse error: usage line, exit code 2
        main(["train", "--paper", "--depth", "3", "--out", str(tmp_path / "b"), "--device", "cpu"])
    assert exit_info.value.code == 2 and "--depth 5" in capsys.readouterr().err


def test_three_class_folder_trains_and_evaluates(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(data / "images" / f"{name}.png")
        Image.fromarray(rng.integers(0, 3, (64, 64), dtype=np.uint8)).save(data / "labels" / f"{name}.png")
    run = tmp_path / "run"
    args = [a for a in TINY_TRAIN if a not in ("synthetic",)]
    args[args.index("--data") + 1:args.index("--data") + 1] = [str(data)]
    assert main(["train", "--out", str(run), *args, "--num-classes", "3"]) == 0
    from unet_fast import checkpoint as ckpt

    _, _, state = ckpt.load_checkpoint(run)
    assert state["model_config"]["num_classes"] == 3
    assert main(["evaluate", "--pred", str(data / "labels"), "--labels", str(data / "labels"), "--num-classes", "3"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(data / "labels"), "--labels", str(data / "labels")]) == 2
    assert "num_classes=2" in capsys.readouterr().err
    for foreground in ("3", "-1"):
        assert main(["evaluate", "--pred", str(data / "labels"), "--labels", str(data / "labels"),
                     "--num-classes", "3", "--foreground", foreground]) == 2
        assert "--foreground must be a class id in [0, 3)" in capsys.readouterr().err


def test_checkpoint_interval_and_val_images_are_checked(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "a"), *TINY_TRAIN, "--checkpoint-interval", "0"]) == 2
    assert "checkpoint_interval" in capsys.readouterr().err
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(data / "images" / f"{name}.png")
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(data / "labels" / f"{name}.png")
    assert main(["train", "--out", str(tmp_path / "b"), "--data", str(data), "--val-images", "2", "--steps", "1",
                 "--device", "cpu", "--no-progress"]) == 2
    assert "val_images=2" in capsys.readouterr().err


def test_missing_optional_package_is_one_line(tmp_path, capsys, monkeypatch):
    import unet_fast.train as train_module

    def missing_scipy(config, started=None):
        import scipy_that_is_not_installed  # noqa: F401

    monkeypatch.setitem(__import__("sys").modules, "scipy_that_is_not_installed", None)
    monkeypatch.setattr("unet_fast.cli.TRAIN_EXTRA_MODULES", ("scipy_that_is_not_installed",))
    monkeypatch.setattr(train_module, "train", missing_scipy)
    assert main(["train", "--out", str(tmp_path / "a"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'unet-fast[train]'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr("unet_fast.cli.TRAIN_EXTRA_MODULES", ())
    with pytest.raises(ModuleNotFoundError):  # other missing modules are bugs: keep the traceback
        main(["train", "--out", str(tmp_path / "b"), "--device", "cpu"])


@pytest.mark.parametrize("value", ["15", "0s", "ten minutes", "-1m"])
def test_bad_time_budget_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--time-budget", value, "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--time-budget" in err and "Traceback" not in err


def test_steps_and_time_budget_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / "a"), "--steps", "5", "--time-budget", "1m", "--device", "cpu"])
    assert exit_info.value.code == 2 and "not both" in capsys.readouterr().err

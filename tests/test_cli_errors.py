"""A table of bad command lines: each exits with code 2 and a message naming the problem, never a
traceback; bugs (exceptions that are not user errors) keep their traceback."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

for _package in ("scipy", "safetensors", "tifffile"):  # the train extra
    pytest.importorskip(_package)
Image = pytest.importorskip("PIL.Image")

from unet_fast import checkpoint as ckpt
from unet_fast.cli import main, user_error_message

TINY = ["--data", "synthetic", "--steps", "1", "--base-channels", "2", "--depth", "3", "--tile-size", "60",
        "--synthetic-images", "1", "--synthetic-size", "64", "--val-images", "0", "--device", "cpu", "--no-progress"]


def _folder(root: Path, image=None, label=None, name="a.png") -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    if image is not None:
        Image.fromarray(image).save(root / "images" / name)
    if label is not None:
        Image.fromarray(label).save(root / "labels" / name)
    return root


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """A trained run, damaged copies of it, and data folders with one fault each."""
    root = tmp_path_factory.mktemp("cli_errors")
    run = root / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    corrupt, other, pickled = root / "corrupt", root / "other", root / "pickled"
    for copy in (corrupt, other):
        shutil.copytree(run, copy)
    model_file = ckpt.find_checkpoint(corrupt) / ckpt.MODEL
    model_file.write_bytes(model_file.read_bytes()[:-9])
    state_file = ckpt.find_checkpoint(other) / ckpt.STATE
    state = json.loads(state_file.read_text())
    state["model_config"]["depth"] = 4
    state_file.write_text(json.dumps(state))
    pickled.mkdir()
    torch.save({"weight": torch.zeros(1)}, pickled / "model.pt")
    gray = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    binary = (gray > 127).astype(np.uint8)
    truncated = _folder(root / "truncated", gray, binary)
    png = (truncated / "images" / "a.png").read_bytes()
    (truncated / "images" / "a.png").write_bytes(png[: len(png) // 2])
    (root / "image.png").write_bytes(png)
    return dict(
        root=root, run=run, corrupt=corrupt, other=other, pickled=pickled, model_file=model_file, state_file=state_file,
        empty=_folder(root / "empty"), truncated=truncated,
        classes=_folder(root / "classes", gray, binary * 5),
        sizes=_folder(root / "sizes", gray, binary[:, :50]),
        file=root / "image.png",
    )


ARGPARSE = [  # (argv, message): argparse errors, with the usage line
    ([], "the following arguments are required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["train", "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["train", "--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["train", "--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["train", "--paper", "--depth", "3"], "--paper sets --depth 5"),
    (["train", "--momentum", "0.9"], "--momentum applies to --optimizer sgd only, not adamw"),
    (["train", "--class-weights", "1", "2", "--class-balance"], "--class-weights replaces"),
    (["predict", "--input", "x.png", "--out", "o"], "the following arguments are required: --checkpoint"),
    (["evaluate", "--pred", "p"], "the following arguments are required: --labels"),
]


@pytest.mark.parametrize("argv, message", ARGPARSE, ids=[" ".join(a) or "(nothing)" for a, _ in ARGPARSE])
def test_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "usage: unet-fast" in err and "Traceback" not in err


RUNTIME = [  # (argv with {placeholders} from the paths fixture, message with them)
    (["train", "--steps", "0"], "steps must be a positive integer, got 0"),
    (["train", "--tile-size", "10", "--depth", "3"], "tile_size 10 is too small for depth 3"),
    (["train", "--lr", "-1"], "lr must be > 0, got -1.0"),
    (["train", "--optimizer", "sgd", "--momentum", "1.5"], "momentum must be in [0, 1), got 1.5"),
    (["train", "--num-classes", "1"], "num_classes must be an integer >= 2, got 1"),
    (["train", "--checkpoint-interval", "0"], "checkpoint_interval must be a positive integer"),
    (["train", "--class-weights", "1", "2", "3"], "class_weights needs num_classes=2 values, got 3"),
    (["train", "--data", "{root}/nowhere"], "--data '{root}/nowhere' is neither 'synthetic' nor a directory"),
    (["train", "--data", "{empty}"], "{empty}/images: no images"),
    (["train", "--data", "{truncated}"], "{truncated}/images/a.png: cannot read the image"),
    (["train", "--data", "{classes}"], "{classes}/labels/a.png: label values [5] are outside the classes [0, 1]"),
    (["train", "--data", "{sizes}"], "{sizes}/images/a.png is 64x64 (HxW) but its label {sizes}/labels/a.png is 64x50"),
    (["train", "--out", "{file}/run"], "{file}"),  # an OSError about a named path
    (["train", "--out", "{run}"], "{run} already holds a training run: pass --resume"),
    (["train", "--out", "{empty}", "--resume"], "--resume: no checkpoint in {empty}"),
    (["train", "--out", "{run}", "--resume", "--base-channels", "4"], "base_channels=4 (the run used 2)"),
    (["train", "--out", "{corrupt}", "--resume", "--steps", "2"], "bytes but"),
    (["predict", "--checkpoint", "{root}/nowhere", "--input", "{file}", "--out", "{root}/o"], "checkpoint {root}/nowhere: no such file"),
    (["predict", "--checkpoint", "{corrupt}", "--input", "{file}", "--out", "{root}/o"], "{model_file}: "),
    (["predict", "--checkpoint", "{other}", "--input", "{file}", "--out", "{root}/o"], "another model configuration"),
    (["predict", "--checkpoint", "{pickled}", "--input", "{file}", "--out", "{root}/o"], "model.pt would have to be unpickled"),
    (["predict", "--checkpoint", "{run}", "--input", "{root}/nowhere.png", "--out", "{root}/o"], "--input {root}/nowhere.png does not exist"),
    (["predict", "--checkpoint", "{run}", "--input", "{empty}/images", "--out", "{root}/o"], "contains no PNG or TIFF images"),
    (["evaluate", "--pred", "{root}/nowhere", "--labels", "{empty}/labels"], "--pred {root}/nowhere is not a directory"),
    (["evaluate", "--pred", "{empty}", "--labels", "{empty}", "--foreground", "5"], "--foreground must be a class id in [0, 2)"),
]


def _fill(items, paths):
    return [item.format(**paths) for item in items]


def _with_defaults(argv):
    """Train rows run on the tiny settings; the row's own options come later, so they win."""
    return ["train", "--out", "{root}/fresh", *TINY, *argv[1:]] if argv[0] == "train" else argv


@pytest.mark.parametrize("argv, message", RUNTIME, ids=[" ".join(a) for a, _ in RUNTIME])
def test_user_errors_are_one_message_and_exit_code_2(argv, message, paths, capsys):
    capsys.readouterr()
    argv = _fill(_with_defaults(argv), paths)
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"unet-fast {argv[0]}: error: "), err
    assert message.format(**{k: str(v) for k, v in paths.items()}) in err and "Traceback" not in err


def test_corrupt_latest_is_named_with_the_earlier_good_checkpoint_on_resume(paths, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY, "--steps", "2", "--checkpoint-interval", "1"]) == 0
    latest = ckpt.find_checkpoint(run)
    (latest / ckpt.OPTIMIZER).write_bytes(b"\0" * 16)
    assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(latest / ckpt.OPTIMIZER) in err and "step_00000001" in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), *TINY[:-3], "--device", "cuda"]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


def test_bugs_keep_their_traceback(tmp_path, monkeypatch):
    """Only user errors become messages: a ValueError from a library call or an OSError without a
    file name is a bug and propagates."""
    import unet_fast.train as train_module

    def broken_train(config, started=None):
        return torch.zeros(2) @ torch.zeros(3)  # a RuntimeError from torch

    monkeypatch.setattr(train_module, "train", broken_train)
    with pytest.raises(RuntimeError):
        main(["train", "--out", str(tmp_path / "a"), "--device", "cpu"])
    monkeypatch.setattr(train_module, "train", lambda config, started=None: int("not a number"))
    with pytest.raises(ValueError, match="invalid literal"):
        main(["train", "--out", str(tmp_path / "b"), "--device", "cpu"])
    monkeypatch.setattr(train_module, "train", lambda config, started=None: np.reshape(np.zeros(3), (2, 2)))
    with pytest.raises(ValueError, match="reshape"):
        main(["train", "--out", str(tmp_path / "c"), "--device", "cpu"])
    assert user_error_message(OSError(28, "No space left on device")) is None
    assert user_error_message(OSError(28, "No space left on device", "/runs/x")) == "/runs/x: No space left on device"


SUBPROCESS = [  # a few through a real process: exit status and stderr as a shell sees them
    (["train", "--optimizer", "rmsprop"], "invalid choice"),
    (["predict", "--checkpoint", "{corrupt}", "--input", "{file}", "--out", "{root}/o", "--device", "cpu"], "{model_file}"),
    (["train", "--data", "{classes}", "--out", "{root}/sub", *TINY[2:]], "label values [5]"),
]


@pytest.mark.parametrize("argv, message", SUBPROCESS, ids=[a[0] + " " + a[1] for a, _ in SUBPROCESS])
def test_as_a_process(argv, message, paths):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-m", "unet_fast", *_fill(argv, paths)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert message.format(**{k: str(v) for k, v in paths.items()}) in done.stderr

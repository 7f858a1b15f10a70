"""The ``best`` checkpoint: the lowest validation pixel error (ties keep the earlier), kept across
--resume, and ``unet-fast predict`` using it (else the latest)."""
import shutil

import numpy as np
import pytest
import torch
pytest.importorskip("scipy")  # weight maps
load_file = pytest.importorskip("safetensors.torch").load_file
Image = pytest.importorskip("PIL.Image")

from unet_fast import checkpoint as ckpt
from unet_fast.cli import main
from unet_fast.train import TrainConfig, choose_checkpoint, load_model, train
from unet_fast.train import loop

# A constant schedule, so that a 2-step run follows the first 2 steps of a 4-step one.
TINY = dict(data="synthetic", base_channels=4, depth=3, tile_size=76, synthetic_images=3, synthetic_size=96,
            val_images=1, val_interval=1, log_interval=1, lr_schedule="constant", device="cpu", progress=False)


def scripted_validation(monkeypatch, pixel_errors):
    """Validation returns these pixel errors in turn (the model is still trained for real)."""
    errors = iter(pixel_errors)

    def fake_validate(*args):
        return dict(pixel_error=next(errors), foreground_iou=0.5, foreground_dice=0.5, rand_error=0.5)

    monkeypatch.setattr(loop, "validate", fake_validate)


def best_step(run_dir):
    _, _, state = ckpt.load_checkpoint(run_dir / ckpt.BEST)
    return state["step"]


def test_best_is_the_lowest_validation_pixel_error_and_its_weights(tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [0.3, 0.1, 0.2, 0.1])
    summary = train(TrainConfig(out=str(tmp_path / "run"), steps=4, **TINY))
    assert best_step(tmp_path / "run") == 2  # 0.1 at step 4 ties and keeps the earlier
    assert summary["best"]["step"] == 2 and summary["best"]["validation"]["pixel_error"] == 0.1
    scripted_validation(monkeypatch, [0.3, 0.1])
    train(TrainConfig(out=str(tmp_path / "two"), steps=2, **TINY))  # the same trajectory, stopped at step 2
    best = load_file(str(ckpt.find_checkpoint(tmp_path / "run" / ckpt.BEST) / "model.safetensors"))
    reference = load_file(str(tmp_path / "two" / "checkpoints" / "step_00000002" / "model.safetensors"))
    for key in reference:
        assert torch.equal(best[key], reference[key]), key
    latest = load_file(str(ckpt.find_checkpoint(tmp_path / "run") / "model.safetensors"))
    assert any(not torch.equal(best[key], latest[key]) for key in best)  # not merely the last step
    assert not (ckpt.find_checkpoint(tmp_path / "run" / ckpt.BEST) / "optimizer.safetensors").exists()


def test_resume_keeps_the_best_of_the_whole_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    scripted_validation(monkeypatch, [0.3, 0.1])
    train(TrainConfig(out=str(out), steps=2, **TINY))
    scripted_validation(monkeypatch, [0.2, 0.15])
    train(TrainConfig(out=str(out), steps=4, resume=True, **TINY))
    assert best_step(out) == 2
    scripted_validation(monkeypatch, [0.05])
    train(TrainConfig(out=str(out), steps=5, resume=True, **TINY))
    assert best_step(out) == 5


def test_no_validation_split_means_no_best(tmp_path):
    summary = train(TrainConfig(out=str(tmp_path / "run"), steps=1, **dict(TINY, val_images=0)))
    assert summary["best"] is None and not (tmp_path / "run" / ckpt.BEST).exists()
    assert choose_checkpoint(tmp_path / "run")[1] == "latest"


def test_predict_uses_best_when_the_run_has_one_else_the_latest(tmp_path, monkeypatch, capsys):
    from unet_fast.inference import predict_tiled

    run = tmp_path / "run"
    scripted_validation(monkeypatch, [0.3, 0.1, 0.2])
    train(TrainConfig(out=str(run), steps=3, **TINY))
    image = (np.random.default_rng(0).random((64, 70)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "a.png")
    tensor = torch.from_numpy(image.astype(np.float32) / 255)[None]

    def predicted(kind):
        out = tmp_path / kind
        assert main(["predict", "--checkpoint", str(run), "--input", str(tmp_path / "in"), "--out", str(out),
                     "--device", "cpu"]) == 0
        return np.asarray(Image.open(out / "a.png")), capsys.readouterr().out

    def expected(directory):
        return predict_tiled(load_model(directory), tensor)[1].numpy()

    labels, said = predicted("best")
    assert "best checkpoint" in said and "step 2" in said and "0.1000" in said
    assert np.array_equal(labels, expected(ckpt.find_checkpoint(run / ckpt.BEST)))
    shutil.rmtree(run / ckpt.BEST)
    labels, said = predicted("latest")
    assert "latest checkpoint" in said and "step 3" in said
    assert np.array_equal(labels, expected(ckpt.find_checkpoint(run)))

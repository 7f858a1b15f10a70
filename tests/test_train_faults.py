"""Training faults: non-finite steps (--on-nonfinite stop|skip, absurd learning rates), the fp16 grad
scaler across a resume, and a resumed DDP run (gloo, 2 processes) equal to the uninterrupted one."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")  # weight maps
load_file = pytest.importorskip("safetensors.torch").load_file
Image = pytest.importorskip("PIL.Image")

from unet_fast import checkpoint as ckpt
from unet_fast.cli import main
from unet_fast.losses import SegmentationLoss
from unet_fast.train import TrainConfig, loop, train
from tests.reliability import count

# Run once, in the main suite: the Makefile's second run on the oldest stack sets UNET_FAST_SKIP_HEAVY.
HEAVY = pytest.mark.skipif(bool(os.environ.get("UNET_FAST_SKIP_HEAVY")), reason="heavy: runs once, in the main suite")
TINY = ["--data", "synthetic", "--base-channels", "2", "--depth", "3", "--tile-size", "60", "--synthetic-images", "2",
        "--synthetic-size", "64", "--val-images", "0", "--log-interval", "1", "--device", "cpu", "--no-progress"]
TINY_CONFIG = dict(data="synthetic", base_channels=2, depth=3, tile_size=60, synthetic_images=2, synthetic_size=64,
                   val_images=0, log_interval=1, device="cpu", progress=False)


def _inject(monkeypatch, bad_steps: set[int], kind: str) -> None:
    """Make the loss non-finite ("loss") or only its gradients non-finite ("gradient") at ``bad_steps``
    (1-based), counting calls of the training loss."""
    calls = []

    class FaultyLoss(SegmentationLoss):
        def forward(self, logits, labels, weights=None):
            loss = super().forward(logits, labels, weights)
            calls.append(None)
            if len(calls) not in bad_steps:
                return loss
            count("faults", f"non-finite {kind} steps")
            if kind == "loss":
                return loss * float("nan")
            # sqrt'(0) = inf: the value stays finite, every gradient becomes NaN (inf * 0).
            return loss + torch.sqrt(logits.sum() * 0)

    monkeypatch.setattr(loop, "SegmentationLoss", FaultyLoss)


def _finite(run_dir: Path) -> bool:
    model_state, _, _ = ckpt.load_checkpoint(run_dir)
    return all(bool(t.isfinite().all()) for t in model_state.values())


def _image_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 44), dtype=np.uint8)).save(root / "a.png")
    return root


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_a_nonfinite_step_stops_naming_it_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys, kind):
    _inject(monkeypatch, {3}, kind)
    run = tmp_path / "run"
    code = main(["train", *TINY, "--out", str(run), "--steps", "6", "--checkpoint-interval", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "step 3:" in err and ("the loss is nan" if kind == "loss" else "the gradient of") in err
    assert "step_00000002" in err  # the kept checkpoint is named
    _, _, state = ckpt.load_checkpoint(run)
    assert state["step"] == 2 and _finite(run)
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["step"] for r in rows] == [1, 2]
    # The kept checkpoint segments an image, and the run resumes past the fault with "skip".
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run), "--input", str(_image_folder(tmp_path / "img")),
                 "--out", str(out), "--device", "cpu"]) == 0
    assert np.asarray(Image.open(out / "a.png")).shape == (40, 44)
    _inject(monkeypatch, {1}, kind)  # the resumed run's first step is step 3 again
    assert main(["train", *TINY, "--out", str(run), "--steps", "6", "--checkpoint-interval", "2", "--resume",
                 "--on-nonfinite", "skip"]) == 0
    assert json.loads((run / "metrics.json").read_text())[-1]["skipped_steps"] == 1


def test_skipped_steps_apply_no_update_and_are_counted(tmp_path, monkeypatch):
    """With skip, a bad step leaves the optimizer untouched: AdamW's step count is the good steps."""
    _inject(monkeypatch, {2, 4}, "loss")
    run = tmp_path / "run"
    summary = train(TrainConfig(out=str(run), steps=5, on_nonfinite="skip", optimizer="adamw", **TINY_CONFIG))
    assert summary["skipped_steps"] == 2
    _, optimizer_state, state = ckpt.load_checkpoint(run)
    assert {float(s["step"]) for s in optimizer_state["state"].values()} == {3.0}
    assert state["skipped_steps"] == 2 and _finite(run)
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1, 2, 2]
    assert math.isnan(rows[1]["loss"]) and math.isfinite(rows[2]["loss"])  # a window of only skipped steps


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("lr", ["1e30", "inf"])
def test_an_absurd_learning_rate_meets_the_nonfinite_path(tmp_path, capsys, optimizer, lr):
    run = tmp_path / "run"
    code = main(["train", *TINY, "--out", str(run), "--steps", "4", "--checkpoint-interval", "1",
                 "--optimizer", optimizer, "--lr", lr])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "error: step " in err and "training stopped" in err and "Lower --lr" in err
    if ckpt.find_checkpoint(run) is not None:
        assert _finite(run)


def test_an_absurd_learning_rate_with_skip_stops_at_a_nonfinite_update_or_finishes(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", *TINY, "--out", str(run), "--steps", "4", "--optimizer", "sgd", "--lr", "1e30",
                 "--on-nonfinite", "skip"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 2:
        assert "the update made" in err
    else:
        assert code == 0 and json.loads((run / "metrics.json").read_text())[-1]["skipped_steps"] >= 1


@HEAVY
def test_fp16_resume_is_exact_with_the_grad_scaler_in_the_checkpoint(tmp_path):
    config = dict(TINY_CONFIG, amp="fp16", optimizer="adamw", checkpoint_interval=1)
    train(TrainConfig(out=str(tmp_path / "whole"), steps=2, **config))
    train(TrainConfig(out=str(tmp_path / "split"), steps=1, **config))
    _, _, halfway = ckpt.load_checkpoint(tmp_path / "split")
    # The scaler has counted a good step towards growing its scale: a resume with a fresh scaler
    # would restart that count, and the final scaler states below would differ.
    assert halfway["scaler"]["_growth_tracker"] == 1
    train(TrainConfig(out=str(tmp_path / "split"), steps=2, resume=True, **config))
    whole, split = (ckpt.load_checkpoint(tmp_path / name) for name in ("whole", "split"))
    assert whole[2]["scaler"] == split[2]["scaler"]
    for key in whole[0]:
        assert torch.equal(whole[0][key], split[0][key]), key


DDP_RESUME_SCRIPT = """
import sys
from unet_fast.cli import main
root, args = sys.argv[1], sys.argv[2:]
codes = [main(["train", *args, "--out", root + "/whole", "--steps", "4"]),
         main(["train", *args, "--out", root + "/split", "--steps", "2"]),
         main(["train", *args, "--out", root + "/split", "--steps", "4", "--resume"])]
sys.exit(max(codes))
"""


@HEAVY
def test_ddp_resume_equals_the_uninterrupted_run(tmp_path):
    """torchrun, 2 gloo processes: 2 steps + resume to 4 equals 4 steps, weights and both ranks' RNG
    (constant schedule: a decay fitted to --steps differs between a 2-step and a 4-step run)."""
    script = tmp_path / "ddp_resume.py"
    script.write_text(DDP_RESUME_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               str(tmp_path), *TINY, "--optimizer", "adamw", "--checkpoint-interval", "2",
               "--lr-schedule", "constant"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    whole, split = (ckpt.load_checkpoint(tmp_path / name) for name in ("whole", "split"))
    assert whole[2]["step"] == split[2]["step"] == 4 and len(split[2]["rng"]) == 2
    assert whole[2]["rng"] == split[2]["rng"]
    for key in whole[0]:
        assert torch.equal(whole[0][key], split[0][key]), key

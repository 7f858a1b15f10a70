"""The recipe benchmark's protocol: folds of slices 00-19 that never touch 20-29, the linked fold
folders, held-out scoring against a direct count, and its argument errors."""
import json

import numpy as np
import pytest
import torch
pytest.importorskip("scipy")
Image = pytest.importorskip("PIL.Image")

from unet_fast.benchmark import recipe
from unet_fast.train import TrainConfig, train


@pytest.mark.parametrize("count", [2, 3, 5, 20])
def test_folds_partition_slices_00_to_19(count):
    parts = recipe.folds(recipe.CROSS_VALIDATION_SLICES, count)
    flat = [name for part in parts for name in part]
    assert flat == [f"{i:02d}" for i in range(20)]  # disjoint, complete, in order
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_plans_keep_20_to_29_out_of_cross_validation():
    args = recipe.build_parser().parse_args(["--time-budget", "1m", "--folds", "4", "--only", "1,3"])
    plan = recipe.plan_folds(args)
    assert [name for name, _, _ in plan] == ["fold1", "fold3"]
    for _, train_names, test_names in plan:
        assert not set(train_names) & set(test_names)
        assert sorted(train_names + test_names) == recipe.CROSS_VALIDATION_SLICES
    final = recipe.plan_folds(recipe.build_parser().parse_args(["--time-budget", "1m", "--mode", "final"]))
    assert final == [("final", recipe.CROSS_VALIDATION_SLICES, recipe.FINAL_TEST_SLICES)]


@pytest.mark.parametrize("argv, message", [
    (["--time-budget", "15"], "duration"),
    (["--time-budget", "1m", "--folds", "1"], "--folds"),
    (["--time-budget", "1m", "--only", "7"], "--only"),
    (["--time-budget", "1m", "--", "--steps", "10"], "--steps"),
    (["--time-budget", "1m", "--data", "/nonexistent"], "--data"),
])
def test_argument_errors_exit_2(argv, message, capsys, tmp_path):
    data = tmp_path / "d"
    (data / "images").mkdir(parents=True)
    if "--data" not in argv:
        argv = ["--data", str(data), *argv]
    assert recipe.main(argv) == 2
    assert message in capsys.readouterr().err


def test_score_of_a_run_on_linked_held_out_slices(tmp_path):
    rng = np.random.default_rng(0)
    source = tmp_path / "isbi"
    (source / "images").mkdir(parents=True)
    (source / "labels").mkdir()
    truths = {}
    for name in ("00", "01", "02", "03"):
        Image.fromarray(rng.integers(0, 255, (96, 96), dtype=np.uint8)).save(source / "images" / f"{name}.png")
        truths[name] = (rng.random((96, 96)) > 0.25).astype(np.uint8) * 255
        Image.fromarray(truths[name]).save(source / "labels" / f"{name}.png")
    train_dir = recipe.linked_folder(source, ["00", "01", "02"], tmp_path / "fold" / "train")
    test_dir = recipe.linked_folder(source, ["03"], tmp_path / "fold" / "test")
    assert sorted(p.name for p in (train_dir / "images").iterdir()) == ["00.png", "01.png", "02.png"]
    assert (test_dir / "labels" / "03.png").is_symlink()
    run = tmp_path / "run"
    train(TrainConfig(data=str(train_dir), out=str(run), steps=2, base_channels=4, depth=3, tile_size=76,
                      val_images=1, val_interval=1, device="cpu", progress=False))
    scores = recipe.score(run, test_dir, torch.device("cpu"))
    assert scores["checkpoint"] == "best"
    # All-"cell" is wrong exactly on the membrane pixels (label 0).
    assert scores["baseline_pixel_error"] == pytest.approx(np.mean(truths["03"] == 0))
    assert 0 <= scores["pixel_error"] <= 1 and 0 <= scores["rand_error"] <= 1
    summary = recipe.summarise([dict(scores, wall_s=1.0), dict(scores, pixel_error=scores["pixel_error"] + 0.1, wall_s=3.0)])
    assert summary["pixel_error"]["std"] == pytest.approx(0.05) and summary["wall_s"]["mean"] == 2.0
    assert "pixel_error_tta" not in scores and "pixel_error_tta" not in summary

    with_tta = recipe.score(run, test_dir, torch.device("cpu"), tta=True)
    assert {key: with_tta[key] for key in scores} == scores  # the plain scores do not change
    assert 0 <= with_tta["pixel_error_tta"] <= 1 and 0 <= with_tta["rand_error_tta"] <= 1
    assert "pixel_error_tta" in recipe.summarise([dict(with_tta, wall_s=1.0)])
    assert "pixel_error_tta" not in recipe.summarise([dict(with_tta, wall_s=1.0), dict(scores, wall_s=1.0)])


def test_a_run_stopped_after_a_fold_keeps_its_json(tmp_path, monkeypatch, capsys):
    """The JSON is written after every fold: a failing second fold leaves the first one's row, marked
    incomplete, and a message (exit 1) instead of a traceback."""
    data = tmp_path / "d"
    (data / "images").mkdir(parents=True)
    scores = dict(pixel_error=0.1, rand_error=0.2, baseline_pixel_error=0.2, baseline_rand_error=0.9, wall_s=5.0)

    def fake_fold(name, train_names, test_names, args):
        if name == "fold1":
            raise RuntimeError("fold fold1: training failed (1)")
        return dict(fold=name, train_slices=train_names, test_slices=test_names, **scores)

    monkeypatch.setattr(recipe, "run_fold", fake_fold)
    out = tmp_path / "cv.json"
    argv = ["--data", str(data), "--time-budget", "1m", "--only", "0,1", "--json", str(out)]
    assert recipe.main(argv) == 1
    assert "fold1: training failed" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["complete"] is False and [row["fold"] for row in result["folds_run"]] == ["fold0"]
    assert result["summary"]["pixel_error"]["mean"] == pytest.approx(0.1)
    monkeypatch.setattr(recipe, "run_fold", lambda name, *rest: dict(fake_fold("fold0", *rest), fold=name))
    assert recipe.main(argv[:-1] + [str(tmp_path / "all.json")]) == 0
    assert json.loads((tmp_path / "all.json").read_text())["complete"] is True

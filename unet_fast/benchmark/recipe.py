"""What the training recipe reaches on ISBI 2012 under a time budget, by cross-validation
(``benchmarks/bench_recipe.py``; options: --help).

Protocol, so that no choice of the recipe sees the reported slices:

- ``cv`` (the default): slices 00-19 are cut into ``--folds`` contiguous folds. For each fold, its
  slices are held out and the others form the training folder, whose own validation split (the
  trainer's default: its last 10 %) picks the ``best`` checkpoint. Recipes are compared on these
  folds only (mean and spread).
- ``final``: train on 00-19 and judge on 20-29, once, for the reported held-out figure.

Each fold runs ``unet-fast train --time-budget B [recipe options]`` as a subprocess, so its wall
time is the whole command (interpreter start to exit). The run's checkpoint that ``unet-fast
predict`` would use (``best``, else the latest) then segments the held-out slices by overlap-tile
prediction; pixel error and adapted Rand error (``unet_fast.metrics``) are averaged over those
slices, next to the baseline that predicts "cell" everywhere (``--tta``: also of the predictions
averaged over the 8 flips and rotations). The JSON holds per fold the held-out slices, the errors,
the wall time, the fitted and the run step counts, and the machine's load average before and after
(a loaded machine trains fewer steps in the same budget).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from unet_fast import checkpoint as ckpt
from unet_fast.benchmark.environment import describe

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "isbi2012"  # ../shared from the repo
CROSS_VALIDATION_SLICES = [f"{i:02d}" for i in range(20)]
FINAL_TEST_SLICES = [f"{i:02d}" for i in range(20, 30)]
CELL = 1  # ISBI labels: 0 membrane, 255 cell (class 1)


def folds(names: list[str], count: int) -> list[list[str]]:
    """``names`` cut into ``count`` contiguous, nearly equal folds."""
    if not 2 <= count <= len(names):
        raise ValueError(f"--folds must be in [2, {len(names)}], got {count}")
    return [names[k * len(names) // count:(k + 1) * len(names) // count] for k in range(count)]


def linked_folder(source: Path, names: list[str], target: Path) -> Path:
    """``target/images`` and ``target/labels`` holding symbolic links to ``source``'s files of these stems."""
    for sub in ("images", "labels"):
        (target / sub).mkdir(parents=True, exist_ok=True)
        files = {p.stem: p for p in (source / sub).iterdir()}
        for name in names:
            if name not in files:
                raise ValueError(f"{source / sub} has no file with the stem {name!r}")
            link = target / sub / files[name].name
            if not link.exists():
                link.symlink_to(files[name].resolve())
    return target


def score(run_dir: Path, test_dir: Path, device: torch.device, tta: bool = False) -> dict:
    """Held-out pixel / adapted Rand error of the run's predicting checkpoint and of all-"cell"; with
    ``tta`` also of the predictions averaged over the 8 flips and rotations (keys ending in _tta)."""
    from unet_fast.data import ImageFolderDataset
    from unet_fast.inference import predict_tiled
    from unet_fast.metrics import pixel_error, rand_error
    from unet_fast.train import choose_checkpoint, load_model

    directory, kind = choose_checkpoint(run_dir)
    model = load_model(directory, device)
    test = ImageFolderDataset(test_dir, num_classes=2)
    totals = {}

    def add(labels: torch.Tensor, truth: torch.Tensor, prefix: str = "", suffix: str = "") -> None:
        for metric, function in (("pixel_error", pixel_error), ("rand_error", rand_error)):
            key = f"{prefix}{metric}{suffix}"
            totals[key] = totals.get(key, 0.0) + function(labels, truth) / len(test.labels)

    for image, truth in zip(test.images, test.labels):
        add(torch.full_like(truth, CELL), truth, prefix="baseline_")
        add(predict_tiled(model, image.float().to(device))[1].cpu(), truth)
        if tta:
            add(predict_tiled(model, image.float().to(device), tta=True)[1].cpu(), truth, suffix="_tta")
    return dict(totals, checkpoint=kind, checkpoint_step=ckpt.read_state(directory)["step"])


def run_fold(name: str, train_names: list[str], test_names: list[str], args) -> dict:
    """Train on ``train_names`` within the budget, judge on ``test_names``."""
    root = Path(args.work) / name
    train_dir = linked_folder(Path(args.data), train_names, root / "train")
    test_dir = linked_folder(Path(args.data), test_names, root / "test")
    run_dir = root / "run"
    if run_dir.exists():
        raise ValueError(f"{run_dir} exists: choose another --work or remove it")
    command = [sys.executable, "-m", "unet_fast", "train", "--data", str(train_dir), "--out", str(run_dir),
               "--time-budget", args.time_budget, "--device", args.device, "--no-progress", *args.train_options]
    load_before = os.getloadavg()
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall_s = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(f"fold {name}: training failed ({result.returncode}):\n{result.stderr[-3000:]}")
    plan = json.loads((run_dir / "config.json").read_text())
    steps_run = ckpt.read_state(ckpt.find_checkpoint(run_dir))["step"]
    scores = score(run_dir, test_dir, torch.device(args.device), tta=args.tta)
    row = dict(fold=name, train_slices=train_names, test_slices=test_names, wall_s=wall_s,
               budget_s=plan["time_budget"], steps_planned=plan["steps"], steps_run=steps_run,
               load_average_before=load_before[0], load_average_after=os.getloadavg()[0], **scores)
    print(f"{name}: held-out pixel error {row['pixel_error']:.4f} (all-cell {row['baseline_pixel_error']:.4f}), "
          f"adapted Rand error {row['rand_error']:.4f} (all-cell {row['baseline_rand_error']:.4f})"
          + (f"; with TTA {row['pixel_error_tta']:.4f} / {row['rand_error_tta']:.4f}" if args.tta else "")
          + f", {steps_run} steps, {wall_s:.0f} s for a {plan['time_budget']:.0f} s budget", flush=True)
    return row


def summarise(rows: list[dict]) -> dict:
    """Mean and spread (population standard deviation, min, max) of each error over the folds."""
    summary = {}
    keys = ["pixel_error", "rand_error", "baseline_pixel_error", "baseline_rand_error", "wall_s"]
    keys += [key for key in ("pixel_error_tta", "rand_error_tta") if all(key in row for row in rows)]
    for key in keys:
        values = torch.tensor([row[key] for row in rows], dtype=torch.float64)
        summary[key] = dict(mean=values.mean().item(), std=values.std(unbiased=False).item(),
                            min=values.min().item(), max=values.max().item())
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_recipe.py", description=__doc__.split("\n\n")[0],
        epilog="Options after -- go to 'unet-fast train' (the recipe), e.g. -- --w0 10 --lr 3e-3.")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="ISBI 2012 folder (images/, labels/ 00..29)")
    parser.add_argument("--time-budget", required=True, help="per-fold budget of 'unet-fast train', e.g. 3m, 15m")
    parser.add_argument("--mode", default="cv", choices=("cv", "final"),
                        help="cv: folds of slices 00-19; final: train on 00-19, judge on 20-29")
    parser.add_argument("--folds", type=int, default=5, help="number of folds of slices 00-19 (cv)")
    parser.add_argument("--only", default=None, help="comma-separated fold indices to run (cv), e.g. 0,1")
    parser.add_argument("--work", default="runs/recipe", help="where fold folders and run directories go")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--tta", action="store_true",
                        help="also score predictions averaged over the 8 flips and rotations (predict --tta)")
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. the machine's load)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("train_options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def plan_folds(args) -> list[tuple[str, list[str], list[str]]]:
    """(name, training slices, held-out slices) per fold to run."""
    if args.mode == "final":
        return [("final", CROSS_VALIDATION_SLICES, FINAL_TEST_SLICES)]
    parts = folds(CROSS_VALIDATION_SLICES, args.folds)
    chosen = range(args.folds) if args.only is None else sorted({int(k) for k in args.only.split(",")})
    if any(not 0 <= k < args.folds for k in chosen):
        raise ValueError(f"--only takes fold indices in [0, {args.folds}), got {args.only}")
    return [(f"fold{k}", [n for n in CROSS_VALIDATION_SLICES if n not in parts[k]], parts[k]) for k in chosen]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.train_options[:1] == ["--"]:
        args.train_options = args.train_options[1:]
    if "--steps" in args.train_options or "--time-budget" in args.train_options:
        print("bench_recipe.py: error: the budget is --time-budget here; do not pass --steps or --time-budget to train",
              file=sys.stderr)
        return 2
    if not (Path(args.data) / "images").is_dir():
        print(f"bench_recipe.py: error: --data {args.data} has no images/ folder", file=sys.stderr)
        return 2
    try:
        from unet_fast.train import parse_duration

        parse_duration(args.time_budget)
        plan = plan_folds(args)
    except ValueError as error:
        print(f"bench_recipe.py: error: {error}", file=sys.stderr)
        return 2
    rows = []
    for name, train_names, test_names in plan:
        try:
            rows.append(run_fold(name, train_names, test_names, args))
        except (RuntimeError, ValueError) as error:
            print(f"bench_recipe.py: error: {error}", file=sys.stderr)
            return 1
        finally:  # after every fold, so that a long run stopped part-way keeps what it measured
            write_result(args, rows, complete=len(rows) == len(plan))
    return 0


def write_result(args, rows: list[dict], complete: bool) -> None:
    """The JSON of the folds run so far (``complete``: all planned folds), when --json is given."""
    if not args.json or not rows:
        return
    result = dict(benchmark="recipe", mode=args.mode, folds=args.folds if args.mode == "cv" else None,
                  time_budget=args.time_budget, tta=args.tta, train_options=args.train_options, note=args.note,
                  protocol=__doc__.split("\n\n")[1].strip(), environment=describe(torch.device(args.device)),
                  cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), complete=complete,
                  folds_run=rows, summary=summarise(rows))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json} ({len(rows)} fold(s){'' if complete else ', incomplete'})", flush=True)


if __name__ == "__main__":
    sys.exit(main())

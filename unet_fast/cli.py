"""The ``unet-fast`` command (also ``python -m unet_fast``): train, predict, evaluate, demo, bench.

User mistakes (a missing file, a bad option value, CUDA requested without a GPU) end with exit
code 2 and one line saying what to fix, never a traceback; bad option values and combinations are
argparse errors (usage line, exit code 2). What counts as a user mistake (:func:`user_error_message`):
a :class:`unet_fast.errors.UserError`, an ``OSError`` about a named file, and a ``ValueError``
raised by an explicit check in the package (for modules not yet raising ``UserError``). Any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import linecache
import sys
import traceback
from pathlib import Path

import unet_fast
from unet_fast.errors import UserError

PROG = "unet-fast"
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
# Import names of the packages of the optional "train" extra (pyproject.toml).
TRAIN_EXTRA_MODULES = ("scipy", "PIL", "tifffile", "safetensors", "matplotlib", "tqdm")


class UsageError(UserError):
    """A mistake in the command line the user can fix; printed without a traceback, exit code 2."""


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to run: auto (CUDA when available), cpu or cuda (default: auto)")


def _optional_bool(parser, name: str, default: bool, help: str) -> None:
    parser.add_argument(f"--{name}", dest=name.replace("-", "_"), action=argparse.BooleanOptionalAction,
                        default=default, help=help)


def _train_parser(sub) -> None:
    from unet_fast.train import DEFAULT_LR, TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train", help="train a U-Net on an image folder or the synthetic data set",
        description="Train a U-Net. Defaults are the paper's recipe (one 572 px tile per batch, elastic "
        "augmentation, cross-entropy with the border weights w0=10, sigma=5, the depth-5 network) with AdamW "
        "instead of SGD at momentum 0.99 and without the class-balancing weights, so that short runs learn "
        "(400 steps of --base-channels 16 on ISBI 2012 take 2.5 min on 2 CPU cores). --paper sets the "
        "paper's whole configuration.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default=d.data, help="'synthetic' or a directory with images/ and labels/ matched by file stem")
    p.add_argument("--num-classes", type=int, default=d.num_classes, help="classes K: label values lie in [0, K)")
    p.add_argument("--out", default=d.out, help="run directory (config, metrics, loss plot, checkpoints)")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps (batches)")
    p.add_argument("--paper", action="store_true", help="the paper's configuration: depth 5, 64 channels, 572 tiles, SGD 0.99")
    p.add_argument("--model", default=d.model, choices=("auto", "fast", "reference"),
                   help="auto: the fast model on CUDA, the reference on CPU")
    p.add_argument("--base-channels", type=int, default=d.base_channels)
    p.add_argument("--depth", type=int, default=d.depth)
    p.add_argument("--padding", default=d.padding, choices=("valid", "same"))
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--norm", default=None, choices=("batch", "instance"))
    p.add_argument("--tile-size", type=int, default=d.tile_size,
                   help="largest input tile edge: the largest valid size up to it is used")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--optimizer", default=d.optimizer, choices=("sgd", "adamw"))
    p.add_argument("--lr", type=float, default=None, help=f"learning rate (default {DEFAULT_LR})")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=("constant", "cosine", "poly"))
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--amp", default=d.amp, choices=("none", "bf16", "fp16"), help="mixed precision (fp16 uses grad scaling)")
    _optional_bool(p, "compile", d.compile, "torch.compile the model")
    _optional_bool(p, "augment", d.augment, "elastic augmentation of every tile")
    p.add_argument("--w0", type=float, default=d.w0, help="border weight amplitude")
    p.add_argument("--sigma", type=float, default=d.sigma, help="border weight width in pixels")
    _optional_bool(p, "class-balance", d.class_balance, "class-frequency balancing weights w_c")
    p.add_argument("--class-weights", type=float, nargs="+", default=None, help="explicit per-class weights instead of w_c")
    p.add_argument("--dice-weight", type=float, default=d.dice_weight, help="add this times the Dice loss")
    _optional_bool(p, "balanced-sampling", d.balanced_sampling, "oversample tiles containing rare classes")
    p.add_argument("--val-images", type=int, default=None, help="images held out for validation (default: 10%%, 1 to 3)")
    p.add_argument("--val-interval", type=int, default=d.val_interval)
    p.add_argument("--checkpoint-interval", type=int, default=None, help="default: the validation interval")
    p.add_argument("--log-interval", type=int, default=d.log_interval)
    p.add_argument("--synthetic-images", type=int, default=d.synthetic_images)
    p.add_argument("--synthetic-size", type=int, default=d.synthetic_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    _optional_bool(p, "progress", d.progress, "show the progress bar")
    _add_device(p)


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="segment images with a trained model (overlap-tile)",
                       description="Segment images by overlap-tile prediction. Writes <stem>.png with class "
                       "ids as pixel values and, with --probs, <stem>_probs.tif (float32, one page per class).")
    p.add_argument("--checkpoint", required=True, help="run directory of 'unet-fast train' or a checkpoint directory")
    p.add_argument("--input", required=True, nargs="+", help="image files (PNG/TIFF) or directories of them")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tta", action="store_true", help="average over flips and 90-degree rotations")
    p.add_argument("--probs", action="store_true", help="also write class probabilities as <stem>_probs.tif")
    p.add_argument("--tile-size", type=int, default=None, help="largest tile edge (default: the largest valid size <= 572)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    _add_device(p)


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="compare predicted label PNGs with ground truth",
                       description="Pixel error, foreground IoU / Dice and adapted Rand error of predicted "
                       "label images against ground-truth label images matched by file stem.")
    p.add_argument("--pred", required=True, help="directory of predicted label images (class ids)")
    p.add_argument("--labels", required=True, help="directory of ground-truth label images")
    p.add_argument("--foreground", type=int, default=1, help="the class whose regions are the objects (cells)")
    p.add_argument("--num-classes", type=int, default=2, help="classes K: label values lie in [0, K)")
    _add_device(p)


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="train on the synthetic data set, segment held-out images, show metrics",
                       description="Train on the embedded synthetic EM data set (full size on a GPU, a small "
                       "configuration on CPU), segment held-out images by overlap-tile, print metrics and "
                       "throughput, write overlays into a run directory.")
    p.add_argument("--out", default=None, help="run directory (default: runs/demo-<time>)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 300 on CPU, 1000 on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    _optional_bool(p, "progress", True, "show the progress bar")
    _add_device(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="The original U-Net with fused kernels: train, segment, evaluate.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _train_parser(sub)
    _predict_parser(sub)
    _evaluate_parser(sub)
    _demo_parser(sub)
    sub.add_parser("bench", help="benchmark the fast model against the reference (see 'unet-fast bench --help')", add_help=False)
    return parser


# --- commands ---------------------------------------------------------------------------------------


def _train_subparser(defaults: bool = True) -> argparse.ArgumentParser:
    """A stand-alone 'train' parser (prog "unet-fast train"); without ``defaults`` it returns only
    the options given."""
    sub = argparse.ArgumentParser(prog=PROG).add_subparsers()
    _train_parser(sub)
    train_parser = sub.choices["train"]
    if not defaults:
        for action in train_parser._actions:
            action.default = argparse.SUPPRESS
    return train_parser


def _explicit_train_options(argv: list[str]) -> set[str]:
    """The destinations of the train options given on the command line (not left at defaults)."""
    return set(vars(_train_subparser(defaults=False).parse_args(argv[1:])))


def _check_train_options(args) -> None:
    """argparse errors (exit code 2) for train options that contradict each other."""
    from unet_fast.train import PAPER

    explicit = _explicit_train_options(args.argv) - {"paper"}
    sub = _train_subparser()
    if args.paper:
        conflicts = sorted(k for k in explicit & PAPER.keys() if getattr(args, k) != PAPER[k])
        if conflicts:
            sub.error("--paper sets " + ", ".join(f"--{k.replace('_', '-')} {PAPER[k]}" for k in conflicts)
                      + "; drop --paper or the conflicting option(s)")
    if "momentum" in explicit and not (args.paper or args.resume) and args.optimizer != "sgd":
        sub.error(f"--momentum applies to --optimizer sgd only, not {args.optimizer}")
    if args.class_weights is not None and "class_balance" in explicit and args.class_balance:
        sub.error("--class-weights replaces the class-frequency weights of --class-balance: give one of them")


def _run_train(args) -> int:
    import dataclasses

    from unet_fast.train import PAPER, TrainConfig, saved_config, train

    options = {k: v for k, v in vars(args).items() if k not in ("command", "paper", "argv")}
    explicit = _explicit_train_options(args.argv) - {"paper"}
    if args.resume:
        # The saved run's configuration, with only the options typed now changed; train() rejects
        # those that would alter the run.
        saved = saved_config(args.out)
        options = {**dataclasses.asdict(saved), **{k: options[k] for k in explicit}}
    if args.paper:
        options.update(PAPER)  # _check_train_options rejected typed options that differ
    summary = train(TrainConfig(**options))
    print(f"run directory: {summary['run_dir']}")
    return 0


def _image_paths(inputs: list[str]) -> list[Path]:
    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"--input directory {path} contains no PNG or TIFF images")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise UsageError(f"--input {path} does not exist")
    stems = [p.stem for p in paths]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise UsageError(f"--input has several images with the stem(s) {', '.join(duplicates)}: outputs would overwrite each other")
    return paths


def _write_labels(path: Path, labels) -> None:
    """(H, W) class ids as an 8-bit PNG (16-bit for more than 256 classes)."""
    import numpy as np
    from PIL import Image

    array = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    Image.fromarray(array).save(path)


def _write_probabilities(path: Path, probs) -> None:
    """(K, H, W) float32 probabilities as a K-page TIFF."""
    try:
        import tifffile
    except ImportError:
        raise UsageError("--probs needs the 'tifffile' package: pip install tifffile") from None
    tifffile.imwrite(path, probs)


def _run_predict(args) -> int:
    import torch

    from unet_fast.data import read_image
    from unet_fast.inference import predict_tiled
    from unet_fast.train import load_model, resolve_device

    device = resolve_device(args.device)
    paths = _image_paths(args.input)
    model = load_model(args.checkpoint, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        pages = read_image(path)  # (C, H, W) float32 in [0, 1] per page
        for page, array in enumerate(pages):
            stem = path.stem if len(pages) == 1 else f"{path.stem}_{page:03d}"
            image = torch.from_numpy(array)
            if image.shape[0] != model.in_channels:
                raise UsageError(f"{path} has {image.shape[0]} channel(s) but the model was trained on {model.in_channels}")
            probs, labels = predict_tiled(model, image.to(device), tile_size=args.tile_size,
                                          batch_size=args.batch_size, tta=args.tta)
            _write_labels(out / f"{stem}.png", labels.cpu().numpy())
            if args.probs:
                _write_probabilities(out / f"{stem}_probs.tif", probs.cpu().numpy())
            print(f"{path} -> {out / (stem + '.png')}")
    return 0


def _run_evaluate(args) -> int:
    import torch

    from unet_fast.data import read_label
    from unet_fast.metrics import segmentation_metrics

    if args.num_classes < 2:
        raise UsageError(f"--num-classes must be >= 2, got {args.num_classes}")
    if not 0 <= args.foreground < args.num_classes:
        raise UsageError(f"--foreground must be a class id in [0, {args.num_classes}) (--num-classes "
                         f"{args.num_classes}), got {args.foreground}")
    pred_dir, label_dir = Path(args.pred), Path(args.labels)
    for name, directory in (("--pred", pred_dir), ("--labels", label_dir)):
        if not directory.is_dir():
            raise UsageError(f"{name} {directory} is not a directory")
    preds = {p.stem: p for p in pred_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_probs")}
    truths = {p.stem: p for p in label_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    common = sorted(preds.keys() & truths.keys())
    if not common:
        raise UsageError(f"no file stems in common between --pred {pred_dir} and --labels {label_dir}")
    missing = sorted(truths.keys() - preds.keys())
    if missing:
        print(f"warning: no prediction for {len(missing)} label image(s), e.g. {missing[0]}", file=sys.stderr)
    totals: dict[str, float] = {}
    columns = ("pixel_error", "foreground_iou", "foreground_dice", "rand_error")
    print(f"{'image':24s}" + "".join(f" {name:>15s}" for name in columns))
    for stem in common:
        pred = torch.from_numpy(read_label(preds[stem], args.num_classes)[0])
        truth = torch.from_numpy(read_label(truths[stem], args.num_classes)[0])
        if pred.shape != truth.shape:
            raise UsageError(f"{preds[stem]} is {tuple(pred.shape)} but {truths[stem]} is {tuple(truth.shape)}")
        scores = segmentation_metrics(pred, truth, foreground=args.foreground)
        for key, value in scores.items():
            totals[key] = totals.get(key, 0.0) + value / len(common)
        print(f"{stem:24s}" + "".join(f" {scores[name]:15.4f}" for name in columns))
    print(f"{'mean':24s}" + "".join(f" {totals[name]:15.4f}" for name in columns))
    return 0


def _run_demo(args) -> int:
    from unet_fast.demo import run_demo

    run_demo(out=args.out, steps=args.steps, seed=args.seed, device=args.device, progress=args.progress)
    return 0


def _run_bench(argv: list[str]) -> int:
    try:
        from unet_fast.benchmark import main as bench_main
    except ImportError as error:
        print(f"{PROG} bench: the benchmark suite is unavailable in this installation ({error})", file=sys.stderr)
        return 2
    return bench_main(argv)


COMMANDS = {"train": _run_train, "predict": _run_predict, "evaluate": _run_evaluate, "demo": _run_demo}


def _raised_by_a_check(error: BaseException) -> bool:
    """Whether ``error`` comes from an explicit ``raise`` statement in the package's own code."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    innermost = frames[-1]
    package = Path(unet_fast.__file__).resolve().parent
    return (Path(innermost.filename).resolve().is_relative_to(package)
            and linecache.getline(innermost.filename, innermost.lineno).lstrip().startswith("raise "))


def user_error_message(error: BaseException) -> str | None:
    """The one-line message for a user mistake (see the module docstring); None for a bug."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    if isinstance(error, ValueError) and _raised_by_a_check(error):
        return str(error)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _run_bench(argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        if args.command == "train":
            _check_train_options(args)
        return COMMANDS[args.command](args)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in TRAIN_EXTRA_MODULES:
            raise
        print(f"{PROG} {args.command}: error: the '{error.name}' package is missing: pip install 'unet-fast[train]'",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

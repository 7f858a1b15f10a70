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
from unet_fast.errors import UsageError, UserError
from unet_fast.predict_command import LARGE_IMAGE_PIXELS, run_predict

PROG = "unet-fast"
# Import names of the packages of the optional "train" extra (pyproject.toml).
TRAIN_EXTRA_MODULES = ("scipy", "PIL", "tifffile", "safetensors", "matplotlib", "tqdm", "skimage")


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to run: auto (CUDA when available), cpu or cuda (default: auto)")


def _optional_bool(parser, name: str, default: bool, help: str) -> None:
    parser.add_argument(f"--{name}", dest=name.replace("-", "_"), action=argparse.BooleanOptionalAction,
                        default=default, help=help)


_BUDGET_RULE = ("after 5 probe steps (run, then undone; the first untimed) and a timed validation, "
                "save and loss plot, N is the largest step count with N * (step + validation / val-interval "
                "+ save / checkpoint-interval) + validation + save + plot <= the time left less 5%% of the budget; the "
                "schedule's decay ends at N, the warm-up is --warmup-fraction of N; if the run slows "
                "down it stops early, in time for the final validation and save")


def _duration(text: str) -> float:
    from unet_fast.train import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except None: those options derive theirs (the help says how)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _train_parser(sub) -> None:
    from unet_fast.train import DEFAULT_LR, TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train", help="train a U-Net on an image folder or the synthetic data set",
        description="Train a U-Net. Defaults are the paper's tile, batch, elastic augmentation and depth-5 "
        "network with what short runs measured better (unet_fast.train): AdamW with a cosine decay after a 5%% "
        "warm-up, plain cross-entropy (no border or class weights: --w0 10 --class-balance give the paper's), "
        "16 channels on CPU and the paper's 64 with bf16 on CUDA. --time-budget fits the run to a duration; "
        "--paper sets the paper's whole configuration.",
        formatter_class=_DefaultsHelpFormatter,
    )
    p.add_argument("--data", default=d.data, help="'synthetic' or a directory with images/ and labels/ matched by file stem")
    p.add_argument("--num-classes", type=int, default=d.num_classes, help="classes K: label values lie in [0, K)")
    p.add_argument("--out", default=d.out, help="run directory (config, metrics, loss plot, checkpoints)")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps (batches); see --time-budget")
    p.add_argument("--time-budget", type=_duration, default=None, metavar="DURATION",
                   help="wall-clock budget for the whole command (loading, validation and the final save "
                   "included), e.g. 90s, 15m, 1h30m: instead of --steps, the step count is fitted to it: "
                   f"{_BUDGET_RULE}")
    p.add_argument("--paper", action="store_true", help="the paper's configuration: depth 5, 64 channels, 572 tiles, SGD 0.99")
    p.add_argument("--model", default=d.model, choices=("auto", "fast", "reference"),
                   help="auto: the fast model (CUDA and CPU), the reference where this build lacks it")
    p.add_argument("--base-channels", type=int, default=d.base_channels,
                   help="width of the first level (default: 64 on CUDA, the paper's; 16 on CPU)")
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
    p.add_argument("--warmup-fraction", type=float, default=d.warmup_fraction,
                   help="when --warmup-steps is 0: warm up over this fraction of the (fitted) steps")
    p.add_argument("--amp", default=d.amp, choices=("none", "bf16", "fp16"),
                   help="mixed precision (fp16 uses grad scaling; default: bf16 on CUDA devices with bf16, else none)")
    p.add_argument("--on-nonfinite", default=d.on_nonfinite, choices=("stop", "skip"),
                   help="at a NaN/Inf loss or gradient: stop (naming the step; the last checkpoint stays usable) "
                   "or skip the step and count it in the metrics")
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
                       "ids as pixel values and, with --probs, <stem>_probs.tif (float32, one page per class). "
                       f"Images over {LARGE_IMAGE_PIXELS // 2**20} Mpixels, Zarr inputs and a .zarr --out are "
                       "streamed tile by tile (bounded memory, resumable) into <stem>.zarr (labels, float16 "
                       "probs) or the given X.zarr, one group per input stem when several. Under torchrun the "
                       "ranks divide the inputs, or with fewer inputs than ranks the chunks of each.")
    p.add_argument("--checkpoint", required=True, help="run directory of 'unet-fast train' (its best checkpoint by "
                   "validation pixel error when it has one, else its latest) or a checkpoint directory")
    p.add_argument("--input", required=True, nargs="+",
                   help="image files (PNG/TIFF, BigTIFF), Zarr / OME-Zarr stores, or directories of images")
    p.add_argument("--out", required=True, help="output directory, or an X.zarr store")
    p.add_argument("--tta", action="store_true", help="average over flips and 90-degree rotations")
    p.add_argument("--probs", action="store_true", help="also write class probabilities")
    p.add_argument("--tile-size", type=int, default=None,
                   help="largest tile edge (default: the largest valid size <= 572, or <= 2048 when streaming on "
                   "CUDA, whose activations fit the free device memory)")
    p.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass (default 4; 2 when streaming on CPU)")
    p.add_argument("--amp", default=None, choices=("bf16", "fp16"), help="autocast dtype for streamed prediction")
    p.add_argument("--resume", action="store_true", help="finish an interrupted streamed prediction")
    p.add_argument("--overwrite", action="store_true", help="replace existing streamed outputs")
    p.add_argument("--layout", default=None, help="axes of the inputs, e.g. ZYX (a stack), CYX, YXC")
    p.add_argument("--channel-axis", type=int, default=None, help="the channel axis of the inputs (0 or -1)")
    _optional_bool(p, "progress", True, "show the progress bar of streamed prediction")
    p.add_argument("--segments", action="store_true", help="also write segments (uint32 ids) as <stem>_segments.tif")
    p.add_argument("--segments-method", default="cc", choices=("cc", "watershed"),
                   help="connected components of the cell map, or a seeded watershed of the boundary map")
    _add_device(p)


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score predicted class or probability maps against ground truth",
                       description="Score predictions against ground-truth label images matched by file stem: "
                       "the ISBI 2012 metrics (pixel, adapted Rand, information and warping errors), the "
                       "variation of information, foreground IoU and Dice. Prints a per-image and mean table; "
                       "with --probs, each metric at its best threshold of the foreground probability.")
    p.add_argument("--pred", required=True, help="directory of predicted class maps (<stem>.png), or of "
                   "<stem>_probs.tif with --probs (what 'unet-fast predict' writes)")
    p.add_argument("--labels", required=True, help="directory of ground-truth label images")
    p.add_argument("--probs", action="store_true", help="score <stem>_probs.tif probability maps over thresholds")
    p.add_argument("--metrics", default="all",
                   help="comma-separated metrics among pixel, rand, info, warping, voi, iou, dice, or all")
    p.add_argument("--thresholds", default=None, help="comma-separated thresholds with --probs (default 0.05 to 0.95 by 0.05)")
    p.add_argument("--json", default=None, help="also write the results as JSON to this path")
    p.add_argument("--csv", default=None, help="also write the per-image table as CSV to this path")
    p.add_argument("--plot", default=None, help="with --probs, plot each metric against the threshold (PNG)")
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
    if "time_budget" in explicit and "steps" in explicit:
        sub.error("give --steps or --time-budget, not both: the budget fits the step count")
    if "momentum" in explicit and not (args.paper or args.resume) and args.optimizer != "sgd":
        sub.error(f"--momentum applies to --optimizer sgd only, not {args.optimizer}")
    if args.class_weights is not None and "class_balance" in explicit and args.class_balance:
        sub.error("--class-weights replaces the class-frequency weights of --class-balance: give one of them")


def _run_train(args) -> int:
    import dataclasses

    from unet_fast.train import PAPER, TrainConfig, saved_config, train
    from unet_fast.train.budget import process_started

    options = {k: v for k, v in vars(args).items() if k not in ("command", "paper", "argv")}
    explicit = _explicit_train_options(args.argv) - {"paper"}
    if args.resume:
        # The saved run's configuration, with only the options typed now changed; train() rejects
        # those that would alter the run.
        saved = saved_config(args.out)
        options = {**dataclasses.asdict(saved), **{k: options[k] for k in explicit}}
        if "steps" in explicit:
            options["time_budget"] = None  # a typed step count replaces the saved run's budget
    if args.paper:
        options.update(PAPER)  # _check_train_options rejected typed options that differ
    summary = train(TrainConfig(**options), started=process_started())  # the budget covers the whole command
    print(f"run directory: {summary['run_dir']}")
    return 0


def _run_evaluate(args) -> int:
    from unet_fast import evaluate

    metrics = evaluate.parse_metrics(args.metrics)
    if not args.probs and (args.thresholds or args.plot):
        raise UsageError("--thresholds and --plot need --probs (probability maps to threshold)")
    thresholds = evaluate.parse_thresholds(args.thresholds) if args.thresholds else evaluate.DEFAULT_THRESHOLDS
    result = evaluate.evaluate_directories(args.pred, args.labels, metrics, probs=args.probs, thresholds=thresholds,
                                           num_classes=args.num_classes, foreground=args.foreground)
    print(evaluate.format_table(result))
    for path, write in ((args.json, evaluate.write_json), (args.csv, evaluate.write_csv),
                        (args.plot, evaluate.plot_thresholds)):
        if path:
            write(result, path)
            print(f"wrote {path}")
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


COMMANDS = {"train": _run_train, "predict": run_predict, "evaluate": _run_evaluate, "demo": _run_demo}


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

"""The trainer: the paper's recipe around the fast model, single device or DDP under torchrun.

Paper recipe (``--paper``): SGD with momentum 0.99, a batch of one large tile (572x572 in, 388x388
out), elastic deformation of every tile on the device, the pixel-wise weighted cross-entropy with
class-balancing weights w_c plus the border weight map (w0 = 10, sigma = 5 px), dropout 0.5, the
depth-5, 64-channel network.

Defaults: the paper's tile, batch, augmentation and depth, changed where short runs measured
better (ISBI 2012, base 16, 700 steps, judged on slices 00-03 after training on 04-19, so slices
20-29 took no part): AdamW (lr 1e-3) instead of SGD at momentum 0.99, which collapses to "cell"
everywhere in short runs; a cosine decay after a 5 % warm-up (held-out pixel error 0.109; lr 3e-3:
0.121); no class-balancing term w_c (it over-predicts membrane) and no border term (w0 = 0: 0.092
against 0.109 with the paper's w0 = 10, and the adapted Rand error fell too, 0.088 against 0.097).
Dropout 0 (0.110) and weight averaging (EMA 0.995: 0.093) did not help; without augmentation the
700-step run scored 0.086-0.089, within the spread between folds, so augmentation stays on. The
width follows the device: 16 channels on CPU, where a 64-wide step costs about 12x as long, the
paper's 64 with bf16 autocast on CUDA (``TrainConfig.resolved``). The default learning rates are
per optimizer (``DEFAULT_LR``), for the loss averaged over output pixels.

A run directory holds ``config.json``, ``metrics.csv`` / ``metrics.json`` (one row per log interval,
validation rows carry pixel error, foreground IoU / Dice and the adapted Rand error),
``loss.png`` (when matplotlib is installed), ``checkpoints/`` (see ``unet_fast.checkpoint``) and
``best/`` (the checkpoint with the lowest validation pixel error, which ``unet-fast predict`` uses);
``--resume`` continues from the latest checkpoint exactly as if never interrupted.

Layout, one job per module (each imports only those above it in this list):

- ``models``: the device choice, the model factory (fast or reference), the paper's weight
  initialisation and ``load_model`` for a trained run;
- ``nonfinite``: NaN/Inf losses, gradients and updates, and the ``--on-nonfinite stop|skip`` policy;
- ``config``: ``TrainConfig`` (every option, its default and its checks) and ``PAPER``;
- ``schedule``: the optimizer and the learning-rate schedule (warm-up, constant/cosine/poly);
- ``tiles``: the train/validation split and ``TrainingTiles``, the batches of (augmented) tiles
  with their labels and weight maps;
- ``validation``: overlap-tile predictions of the held-out images, scored;
- ``reporting``: the tqdm progress bar (plain lines off a terminal) and the run log;
- ``distributed``: the torchrun process group, the DDP wrapper, the collectives;
- ``resume``: checkpoints (the latest ones and the ``best`` by validation pixel error), the RNG
  states they carry and the checks of a resumed run;
- ``budget``: ``--time-budget``: the step count (warm-up, decay) fitted to the time measured for
  the first steps, a validation and a save, and the guard that ends a slowed-down run in time;
- ``loop``: ``train()``, which puts them together.
"""
from unet_fast.train.models import (build_model, choose_checkpoint, describe_checkpoint, fast_model_class, init_weights,
                                    load_model, resolve_device)
from unet_fast.train.config import DEFAULT_LR, PAPER, TrainConfig
from unet_fast.train.schedule import build_optimizer, learning_rate
from unet_fast.train.tiles import TrainingTiles, load_datasets
from unet_fast.train.validation import validate
from unet_fast.train.reporting import Progress, RunLog
from unet_fast.train.resume import RESUMABLE_OPTIONS, saved_config
from unet_fast.train.budget import parse_duration
from unet_fast.train.loop import train

__all__ = [
    "DEFAULT_LR", "PAPER", "RESUMABLE_OPTIONS", "Progress", "RunLog", "TrainConfig", "TrainingTiles", "build_model",
    "build_optimizer", "choose_checkpoint", "describe_checkpoint", "fast_model_class", "init_weights", "learning_rate", "load_datasets", "load_model",
    "parse_duration", "resolve_device", "saved_config", "train", "validate",
]

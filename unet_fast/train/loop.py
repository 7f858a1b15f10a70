"""The training loop: set-up, then per step the learning rate, an optimizer step on a batch of
tiles, and at their intervals a log row, validation and a checkpoint."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from unet_fast.losses import SegmentationLoss
from unet_fast.train import distributed, models
from unet_fast.train.config import TrainConfig
from unet_fast.train.reporting import Progress, RunLog, Window
from unet_fast.train.resume import TrainingState, checkpoint_to_resume
from unet_fast.train.schedule import build_optimizer, learning_rate, set_learning_rate
from unet_fast.train.tiles import TrainingTiles, load_datasets
from unet_fast.train.validation import validate, validation_line

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def train(config: TrainConfig) -> dict:
    """Run training; returns a summary dict (run_dir, steps, final loss, last validation metrics,
    seconds, rank, world_size)."""
    rank, world, device = distributed.setup(models.resolve_device(config.device))
    config = config.resolved(device)
    config.check()
    run_dir = Path(config.out)
    checkpoint = checkpoint_to_resume(config, run_dir, world, device)
    train_set, val_set = load_datasets(config)
    state = _initial_state(config, train_set, device, rank)
    start, elapsed_before = state.restore(checkpoint, rank, run_dir) if checkpoint is not None else (0, 0.0)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    log = RunLog(run_dir, start if checkpoint is not None else None)
    model = distributed.wrap(state.model, device, world)
    forward = torch.compile(model) if config.compile else model
    # The weight map holds the class weights (w_c + border term); Dice takes explicit ones directly.
    loss_fn = SegmentationLoss(dice_weight=config.dice_weight, dice_class_weights=config.class_weights)

    progress = Progress(config.steps, start, enabled=config.progress and rank == 0)
    begin = time.perf_counter() - elapsed_before  # elapsed_s counts the whole run across resumes
    window = Window()
    loss_value, last_val = float("nan"), {}
    model.train()
    for step in range(start, config.steps):
        done = step + 1
        lr = learning_rate(config, step)
        set_learning_rate(state.optimizer, lr)
        loss_value, tiles = _optimizer_step(state, forward, loss_fn, AUTOCAST_DTYPES.get(config.amp))
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"the loss became {loss_value} at step {done}: lower --lr")
        window.add(tiles * world, loss_value)
        tiles_per_second = window.tiles_per_second()
        progress.update(done, loss_value, tiles_per_second)
        row = None
        if _due(done, config.log_interval, config.steps):
            row = dict(step=done, loss=window.mean_loss(), lr=lr, tiles_per_s=tiles_per_second,
                       elapsed_s=time.perf_counter() - begin)
            progress.update(done, loss_value, tiles_per_second, log_line=True)
            window.reset()
        if val_set is not None and _due(done, config.val_interval, config.steps):
            if rank == 0:
                last_val = validate(state.model, val_set, config, device)
                row = row or dict(step=done, lr=lr, elapsed_s=time.perf_counter() - begin)
                row.update({f"val_{k}": v for k, v in last_val.items()})
                progress.message(validation_line(done, last_val))
            model.train()
        if rank == 0 and row is not None:
            log.add(row)
            log.write()
        if _due(done, config.checkpoint_interval, config.steps):
            state.save(run_dir, config, done, time.perf_counter() - begin, rank, world)
    progress.close()
    if rank == 0:
        log.write()
        log.plot()
    return dict(run_dir=str(run_dir), steps=config.steps, loss=loss_value, validation=last_val,
                seconds=time.perf_counter() - begin, rank=rank, world_size=world)


def _initial_state(config: TrainConfig, train_set, device: torch.device, rank: int) -> TrainingState:
    """The freshly initialised model (the same on every rank), its optimizer and grad scaler, the
    training tiles and the generators, seeded per rank so that ranks draw different tiles,
    augmentations and dropout masks."""
    torch.manual_seed(config.seed)
    model = models.build_model(config.model, **models.model_config(config, train_set))
    models.init_weights(model)
    model.to(device)
    optimizer = build_optimizer(config, model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    tiles = TrainingTiles(train_set, config, device, rank)
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
    torch.manual_seed(config.seed * 1000 + rank)  # dropout differs per rank
    return TrainingState(model, optimizer, scaler, tiles, generator, device)


def _optimizer_step(state: TrainingState, forward: nn.Module, loss_fn: nn.Module,
                    autocast_dtype: torch.dtype | None) -> tuple[float, int]:
    """Forward (under autocast for bf16/fp16), loss, backward and optimizer step on the next batch;
    returns (the loss, the number of tiles in the batch)."""
    tiles, labels, weights = state.tiles.batch(state.generator)
    with torch.autocast(state.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = forward(tiles)
    loss = loss_fn(logits.float(), labels, weights)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return loss.item(), tiles.shape[0]


def _due(done: int, interval: int, steps: int) -> bool:
    """Whether an every-``interval``-steps event happens after step ``done``; the last step always."""
    return done % interval == 0 or done == steps

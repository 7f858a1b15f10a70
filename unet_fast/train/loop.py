"""The training loop: set-up, then per step the learning rate, an optimizer step on a batch of
tiles, and at their intervals a log row, validation and a checkpoint."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from unet_fast import checkpoint as ckpt
from unet_fast.losses import SegmentationLoss
from unet_fast.train import budget, distributed, models, nonfinite
from unet_fast.train.config import TrainConfig
from unet_fast.train.reporting import Progress, RunLog, Window
from unet_fast.train.resume import TrainingState, best_validation_error, checkpoint_to_resume, with_saved_warmup
from unet_fast.train.schedule import build_optimizer, learning_rate, set_learning_rate
from unet_fast.train.tiles import TrainingTiles, load_datasets
from unet_fast.train.validation import validate, validation_line

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def train(config: TrainConfig, started: float | None = None) -> dict:
    """Run training; returns a summary dict (run_dir, steps, final loss, last validation metrics,
    best: step and metrics of the ``best`` checkpoint or None, seconds, rank, world_size).

    On every validation (rank 0) the model whose validation pixel error is the lowest so far
    (ties keep the earlier) is saved as the run's ``best`` checkpoint. With ``config.time_budget``
    the step count is fitted to the budget and a guard ends the run in time (``unet_fast.train.budget``);
    the budget counts from ``started`` (a ``time.perf_counter()`` reading; default: this call's start,
    so loading is included; the CLI passes the process's start)."""
    started = time.perf_counter() if started is None else started
    rank, world, device = distributed.setup(models.resolve_device(config.device))
    config = config.resolved(device)
    config.check()
    run_dir = Path(config.out)
    checkpoint = checkpoint_to_resume(config, run_dir, world, device)
    if checkpoint is not None:
        config = with_saved_warmup(config, checkpoint[2]["config"])
    train_set, val_set = load_datasets(config)
    state = _initial_state(config, train_set, device, rank)
    start, elapsed_before = state.restore(checkpoint, rank, run_dir) if checkpoint is not None else (0, 0.0)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    model = distributed.wrap(state.model, device, world)
    forward = torch.compile(model) if config.compile else model
    # The weight map holds the class weights (w_c + border term); Dice takes explicit ones directly.
    loss_fn = SegmentationLoss(dice_weight=config.dice_weight, dice_class_weights=config.class_weights)
    autocast_dtype = AUTOCAST_DTYPES.get(config.amp)
    model.train()
    deadline = None
    if config.time_budget is not None:
        deadline = budget.Deadline(config.time_budget - elapsed_before, started)
        config = _fit_to_budget(config, state, lambda: _optimizer_step(state, forward, loss_fn, autocast_dtype, world),
                                val_set, run_dir, device, rank, world, deadline, start)
        model.train()
    _write_plan(config, run_dir, rank)
    log = RunLog(run_dir, start if checkpoint is not None else None)
    best_error = best_validation_error(run_dir) if checkpoint is not None else math.inf

    progress = Progress(config.steps, start, enabled=config.progress and rank == 0)
    # elapsed_s counts the whole run across resumes; under a budget from each command's start, so
    # that a resumed run gets what its earlier commands left of the budget.
    begin = (started if deadline is not None else time.perf_counter()) - elapsed_before
    window = Window()
    loss_value, last_val = float("nan"), {}
    for step in itertools.count(start):  # not range(config.steps): a refit or the guard changes the count
        if step >= config.steps:
            break
        done = step + 1
        if deadline is not None and budget.refit_due(step, start, config.warmup_steps, config.lr_schedule == "constant"):
            steps = distributed.broadcast(
                deadline.refit(step, config.val_interval, config.checkpoint_interval) if rank == 0 else None, world)
            if steps != config.steps:
                progress.message(f"time budget: {steps} steps fit at {deadline.costs.step_s:.3f} s a step, "
                                 f"the median so far (planned {config.steps})")
                config = dataclasses.replace(config, steps=steps)
                progress.set_total(steps)
                _write_plan(config, run_dir, rank)
        if deadline is not None and done < config.steps and distributed.broadcast(
                not deadline.next_step_fits() if rank == 0 else None, world):
            progress.message(f"time budget: step {done} is the last that fits (planned {config.steps})")
            config = dataclasses.replace(config, steps=done)
        lr = learning_rate(config, step)
        set_learning_rate(state.optimizer, lr)
        step_began = time.perf_counter()
        loss_value, tiles, problem = _optimizer_step(state, forward, loss_fn, autocast_dtype, world)
        if deadline is not None:
            deadline.record_step(time.perf_counter() - step_began)
        unrecoverable = None if problem else nonfinite.nonfinite_weight(state.model)
        if unrecoverable or (problem and config.on_nonfinite == "stop"):
            progress.close()
            if rank == 0:
                log.write()
            found = ckpt.find_checkpoint(run_dir)
            problem = problem or f"the update made {unrecoverable} non-finite"
            raise nonfinite.NonFiniteError(nonfinite.stop_message(done, problem, lr, found and str(found)))
        if problem:
            state.skipped_steps += 1
            progress.message(f"step {done}: {problem}; step skipped ({state.skipped_steps} so far)")
        window.add(tiles * world, loss_value if problem is None else None)
        tiles_per_second = window.tiles_per_second()
        progress.update(done, loss_value, tiles_per_second)
        row = None
        if _due(done, config.log_interval, config.steps):
            row = dict(step=done, loss=window.mean_loss(), lr=lr, tiles_per_s=tiles_per_second,
                       elapsed_s=time.perf_counter() - begin, skipped_steps=state.skipped_steps)
            progress.update(done, loss_value, tiles_per_second, log_line=True)
            window.reset()
        if val_set is not None and _due(done, config.val_interval, config.steps):
            if rank == 0:
                validation_began = time.perf_counter()
                last_val = validate(state.model, val_set, config, device)
                if last_val["pixel_error"] < best_error:
                    best_error = last_val["pixel_error"]
                    state.save_best(run_dir, config, done, last_val)
                if deadline is not None:
                    deadline.observe(validation_s=time.perf_counter() - validation_began)
                row = row or dict(step=done, lr=lr, elapsed_s=time.perf_counter() - begin)
                row.update({f"val_{k}": v for k, v in last_val.items()})
                progress.message(validation_line(done, last_val))
            model.train()
        if rank == 0 and row is not None:
            log.add(row)
            log.write()
        if _due(done, config.checkpoint_interval, config.steps):
            save_began = time.perf_counter()
            state.save(run_dir, config, done, time.perf_counter() - begin, rank, world)
            if deadline is not None:
                deadline.observe(save_s=time.perf_counter() - save_began)
    progress.close()
    if rank == 0:
        log.write()
        log.plot()
    best = None
    if rank == 0 and math.isfinite(best_error):
        saved = ckpt.read_state(ckpt.find_checkpoint(run_dir / ckpt.BEST))
        best = dict(step=saved["step"], validation=saved["validation"])
    return dict(run_dir=str(run_dir), steps=config.steps, loss=loss_value, validation=last_val, best=best,
                seconds=time.perf_counter() - begin, rank=rank, world_size=world,
                skipped_steps=state.skipped_steps)


def _write_plan(config: TrainConfig, run_dir: Path, rank: int) -> None:
    if rank == 0:
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1))


def _fit_to_budget(config: TrainConfig, state: TrainingState, run_step, val_set, run_dir: Path,
                   device: torch.device, rank: int, world: int, deadline: budget.Deadline, start: int) -> TrainConfig:
    """``config`` with the step count (and, with ``warmup_fraction``, the warm-up) fitted to what is
    left of the budget, by the rule of ``unet_fast.train.budget``: probe steps are run and undone;
    rank 0 times a checkpoint save, a validation (with a ``best`` save) and the loss plot, fits and
    broadcasts."""
    snapshot = state.snapshot()
    step_s = budget.measure_step_s(run_step)
    plan = None
    if rank == 0:
        with tempfile.TemporaryDirectory(prefix=".budget-probe.", dir=run_dir) as scratch:
            # Saved after the probe steps, so the optimizer's buffers (Adam moments) are written too.
            save_s = budget.timed(lambda: ckpt.save_checkpoint(
                scratch, model_state=state.model.state_dict(), optimizer_state=state.optimizer.state_dict(),
                state={"budget_probe": True}, step=0))
            validation_s = 0.0
            if val_set is not None:
                validation_s = budget.timed(lambda: (validate(state.model, val_set, config, device),
                                                     state.save_best(Path(scratch), config, 0, {})))
            finish_s = budget.timed(RunLog(Path(scratch)).plot)  # the first plot imports matplotlib
        costs = budget.Costs(step_s, validation_s, save_s, finish_s)
        try:
            plan = (costs, start + deadline.fit(costs, config.val_interval, config.checkpoint_interval))
        except ValueError as error:
            plan = str(error)
    plan = distributed.broadcast(plan, world)
    state.restore_snapshot(snapshot)
    if isinstance(plan, str):
        raise ValueError(plan)
    deadline.costs, steps = plan
    warmup = config.warmup_steps
    if config.warmup_fraction > 0 and warmup == 0 and start == 0:  # a resumed run keeps its saved warm-up
        warmup = round(config.warmup_fraction * steps)
    return dataclasses.replace(config, steps=steps, warmup_steps=warmup)


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
                    autocast_dtype: torch.dtype | None, world: int) -> tuple[float, int, str | None]:
    """Forward (under autocast for bf16/fp16), loss, backward and, unless the loss or a gradient is
    non-finite on some rank, the optimizer step on the next batch; returns (the loss, the number of
    tiles in the batch, what was non-finite or None)."""
    tiles, labels, weights = state.tiles.batch(state.generator)
    with torch.autocast(state.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = forward(tiles)
    loss = loss_fn(logits.float(), labels, weights)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    problem = nonfinite.step_problem(loss, state.model, check_gradients=not state.scaler.is_enabled())
    if distributed.any_rank(problem is not None, world, state.device):
        state.optimizer.zero_grad(set_to_none=True)
        return loss.item(), tiles.shape[0], problem or "the loss or a gradient is non-finite on another rank"
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return loss.item(), tiles.shape[0], None


def _due(done: int, interval: int, steps: int) -> bool:
    """Whether an every-``interval``-steps event happens after step ``done``; the last step always."""
    return done % interval == 0 or done == steps

"""Checkpoints of a run and its exact resumption.

A checkpoint (``unet_fast.checkpoint``) holds the model, the optimizer, the fp16 grad scaler and,
per DDP rank, the RNG states (torch, the augmentation generator, the tile sampler), so that a
resumed run continues exactly as if never interrupted. Only ``RESUMABLE_OPTIONS`` may differ from
the saved configuration, and the number of processes must be the same.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from unet_fast import checkpoint as ckpt
from unet_fast.train import distributed
from unet_fast.train.config import TrainConfig

# Options a resumed run may change: they do not alter the training trajectory (on_nonfinite only
# decides what happens at a non-finite step: a run stopped by one may resume with "skip").
RESUMABLE_OPTIONS = ("steps", "out", "resume", "device", "progress", "log_interval", "val_interval",
                     "checkpoint_interval", "compile", "time_budget", "on_nonfinite")


def saved_config(run_dir) -> TrainConfig:
    """The configuration stored in the latest checkpoint of ``run_dir``; ValueError when there is none."""
    found = ckpt.find_checkpoint(run_dir)
    if found is None:
        raise ValueError(f"--resume: no checkpoint in {run_dir}; start without --resume")
    return TrainConfig.from_dict(ckpt.read_state(found, required=("config",))["config"])


def _derives_warmup(config: TrainConfig) -> bool:
    """Whether the warm-up is ``warmup_fraction`` of the steps rather than a typed ``warmup_steps``."""
    return config.warmup_steps == 0 and config.warmup_fraction > 0


def check_resume_config(config: TrainConfig, saved: dict) -> None:
    """ValueError naming every option that differs from the checkpoint's and would change the run
    (a derived warm-up is the saved run's: ``with_saved_warmup``)."""
    derived = {"warmup_steps"} if _derives_warmup(config) else set()
    conflicts = [
        f"{name}={getattr(config, name)!r} (the run used {saved[name]!r})"
        for name in saved
        if name not in RESUMABLE_OPTIONS and name not in derived and hasattr(config, name)
        and getattr(config, name) != saved[name]
    ]
    if conflicts:
        raise ValueError(
            "--resume continues the saved run, whose configuration differs in: " + ", ".join(conflicts)
            + f"; only {', '.join(RESUMABLE_OPTIONS)} may change (or start a new run with another --out)"
        )


def with_saved_warmup(config: TrainConfig, saved: dict) -> TrainConfig:
    """``config`` continuing the saved run: a warm-up derived from ``warmup_fraction`` is the one the
    run was fitted (its saved ``warmup_steps``), so that the schedule it follows does not move."""
    return dataclasses.replace(config, warmup_steps=saved["warmup_steps"]) if _derives_warmup(config) else config


def checkpoint_to_resume(config: TrainConfig, run_dir: Path, world: int, device: torch.device):
    """With ``config.resume``: the latest checkpoint of ``run_dir`` as (model state, optimizer
    state, state), after checking that it continues this run. Without: None, and ValueError when
    ``run_dir`` already holds a run (a new run never overwrites one)."""
    found = ckpt.find_checkpoint(run_dir)
    if not config.resume:
        if found is not None:
            raise ValueError(f"{run_dir} already holds a training run: pass --resume to continue it or choose another --out")
        return None
    if found is None:
        raise ValueError(f"--resume: no checkpoint in {run_dir}; start without --resume")
    checkpoint = ckpt.load_checkpoint(found, map_location=device, required=("config", "model_config", "rng", "optimizer"))
    state = checkpoint[2]
    check_resume_config(config, state["config"])
    if len(state["rng"]) != world:
        raise ValueError(
            f"--resume: the checkpoint was written by {len(state['rng'])} process(es) but this run "
            f"has {world}: resume with the same number of processes (torchrun --nproc_per_node)"
        )
    return checkpoint


@dataclass
class TrainingState:
    """What a checkpoint saves and restores: the model (not DDP-wrapped), its optimizer, the fp16
    grad scaler, the ``TrainingTiles`` (its tile sampler) and the augmentation generator."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    tiles: object
    generator: torch.Generator
    device: torch.device
    skipped_steps: int = 0  # non-finite steps dropped with --on-nonfinite skip, over the whole run

    def rng_state(self) -> dict:
        state = {"torch": ckpt.encode_rng(torch.get_rng_state()), "data": ckpt.encode_rng(self.generator.get_state()),
                 "tiles": self.tiles.state_dict()}
        if self.device.type == "cuda":
            state["cuda"] = ckpt.encode_rng(torch.cuda.get_rng_state(self.device))
        return state

    def load_rng_state(self, state: dict) -> None:
        torch.set_rng_state(ckpt.decode_rng(state["torch"]))
        self.tiles.load_state_dict(state["tiles"])
        self.generator.set_state(ckpt.decode_rng(state["data"]))
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(ckpt.decode_rng(state["cuda"]), self.device)

    def restore(self, checkpoint, rank: int, source) -> tuple[int, float]:
        """Loads a checkpoint from ``checkpoint_to_resume`` (``source``: where it is, for messages);
        returns (its step, the run's seconds so far)."""
        model_state, optimizer_state, state = checkpoint
        ckpt.load_model_state(self.model, model_state, source, self.model.config())
        self.optimizer.load_state_dict(optimizer_state)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.load_rng_state(state["rng"][rank])
        self.skipped_steps = state.get("skipped_steps", 0)
        return state["step"], state.get("elapsed_s", 0.0)

    def snapshot(self) -> tuple:
        """Copies of everything a training step changes, for :meth:`restore_snapshot`."""
        return (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict()),
                copy.deepcopy(self.scaler.state_dict()), self.rng_state())

    def restore_snapshot(self, snapshot: tuple) -> None:
        model_state, optimizer_state, scaler_state, rng = snapshot
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)
        if self.scaler.is_enabled():
            self.scaler.load_state_dict(scaler_state)
        self.load_rng_state(rng)

    def save_best(self, run_dir: Path, config: TrainConfig, step: int, validation: dict) -> None:
        """The model after ``step`` as the run's ``best`` checkpoint (no optimizer: it is for predicting)."""
        state = dict(config=config.to_dict(), model_config=self.model.config(), validation=validation)
        ckpt.save_checkpoint(Path(run_dir) / ckpt.BEST, model_state=self.model.state_dict(), optimizer_state=None,
                             state=state, step=step, keep=1)

    def save(self, run_dir: Path, config: TrainConfig, step: int, elapsed_s: float, rank: int, world: int) -> None:
        """A checkpoint after ``step`` steps, written by rank 0 with every rank's RNG state."""
        rng = distributed.all_gather(self.rng_state(), world)
        if rank == 0:
            state = dict(config=config.to_dict(), model_config=self.model.config(), rng=rng,
                         scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None, elapsed_s=elapsed_s,
                         skipped_steps=self.skipped_steps)
            ckpt.save_checkpoint(run_dir, model_state=self.model.state_dict(),
                                 optimizer_state=self.optimizer.state_dict(), state=state, step=step)
        distributed.barrier(world)


def best_validation_error(run_dir: Path) -> float:
    """The validation pixel error of the run's ``best`` checkpoint; infinity when it has none."""
    found = ckpt.find_checkpoint(Path(run_dir) / ckpt.BEST)
    if found is None:
        return math.inf
    return ckpt.read_state(found, required=("validation",))["validation"]["pixel_error"]

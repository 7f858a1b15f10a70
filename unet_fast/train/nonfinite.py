"""Non-finite training steps: a NaN or Inf loss or gradient, found before the optimizer applies it.

``--on-nonfinite stop`` (the default) ends the run with a ``NonFiniteError`` naming the step and the
last checkpoint, which holds only finite weights because no non-finite update was ever applied;
``skip`` drops the step (no update) and counts it in the metrics (``skipped_steps``). With ``--amp
fp16`` the grad scaler owns gradient overflow (it skips such steps and lowers its scale, the normal
course of fp16 training), so only the loss is checked. An update that turns finite weights
non-finite (a learning rate so large that lr * gradient overflows) cannot be skipped after the fact:
it always stops.
"""
from __future__ import annotations

import torch
from torch import nn

from unet_fast.errors import UserError

ON_NONFINITE = ("stop", "skip")


class NonFiniteError(UserError):
    """A training step whose loss, gradient or update was NaN or Inf, with ``--on-nonfinite stop``."""


def _first_nonfinite(named_tensors) -> str | None:
    """The name of the first tensor holding a NaN or Inf (one device sync when all are finite)."""
    named = [(name, t) for name, t in named_tensors if t is not None]
    if not named or torch.stack([t.isfinite().all() for _, t in named]).all():
        return None
    return next(name for name, t in named if not t.isfinite().all())


def step_problem(loss: torch.Tensor, model: nn.Module, check_gradients: bool) -> str | None:
    """What is non-finite after the backward pass ("the loss is nan", "the gradient of conv.weight
    holds NaN/Inf"), or None."""
    if not torch.isfinite(loss):
        return f"the loss is {loss.item()}"
    if check_gradients:
        name = _first_nonfinite((n, p.grad) for n, p in model.named_parameters())
        if name is not None:
            return f"the gradient of {name} holds NaN/Inf"
    return None


def nonfinite_weight(model: nn.Module) -> str | None:
    """The first parameter holding NaN or Inf after an update, or None."""
    return _first_nonfinite(model.named_parameters())


def stop_message(step: int, problem: str, lr: float, last_checkpoint: str | None) -> str:
    kept = (f"the last checkpoint, {last_checkpoint}, holds finite weights (predict and --resume can use it)"
            if last_checkpoint else "no checkpoint was saved before it")
    return (f"step {step}: {problem}; training stopped (--on-nonfinite stop) and {kept}. "
            f"Lower --lr (it is {lr:g}) or pass --on-nonfinite skip to drop such steps")

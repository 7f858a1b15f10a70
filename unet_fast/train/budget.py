"""Fitting a training run to a wall-clock budget (``--time-budget``).

The budget covers the whole ``train()`` call: loading, the timing probe, every step, periodic
validations and checkpoints, the final validation, save and run log. The rule:

1. Probe: ``PROBE_STEPS`` real optimizer steps are run and then undone (model, optimizer, grad
   scaler and every RNG restored), so the fitted run trains exactly like ``--steps N``. The first
   probe step (allocation, autotuning, compilation) is not timed; the step time s is the mean of
   the others. Rank 0 also times one validation v (when there is a validation split, with a
   ``best`` save), one checkpoint save c and the run log's plot f (written to a temporary
   directory and deleted).
2. Fit: with R the time left until the budget's end less a reserve of ``SAFETY`` (5 %) of the
   budget for timing noise, the step count is the largest N with
   ``N * (s + v / val_interval + c / checkpoint_interval) + v + c + f <= R``: each step, the
   periodic validations and checkpoints amortised over their intervals, and the final
   validation, save and plot. The learning-rate schedule's decay (cosine / poly) ends at N, and with
   ``warmup_fraction`` f > 0 the warm-up is ``round(f * N)`` steps. Under DDP rank 0 fits and
   broadcasts N, so every rank runs the same steps.
3. Refit: a probe of a few steps misjudges a run whose first seconds are slower (or faster) than
   the rest, e.g. while another job ends. So the plan is fitted again, by the same rule with the
   median of this run's own step times, after ``REFIT_AFTER`` steps and at the last warm-up step;
   only while the learning rate does not depend on N yet (during the warm-up, or with the constant
   schedule), so that the run still trains exactly like ``--steps N`` with the final N and the first
   fit's warm-up. A cosine or poly run without warm-up keeps the probe's plan.
4. Guard: if the machine slows down, the run stops early: before each step, when the clock plus
   one step, a validation, a save (the largest seen so far) and the plot passes the budget's end,
   that step is the last one, with the final validation and save (``config.json`` keeps the
   plan; the checkpoints record the steps run).

With ``--resume`` the budget left is the budget less the run's saved elapsed time (which, for a
budgeted run, counts each command from its start); the step count is refitted to it (the saved
warm-up is kept).
"""
from __future__ import annotations

import math
import os
import re
import statistics
import time
from dataclasses import dataclass
from typing import Callable

PROBE_STEPS = 5  # the first is untimed
REFIT_AFTER = 20  # steps of a command timed before its first refit
SAFETY = 0.05  # fraction of the budget kept back for timing noise
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([hms])")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def process_started() -> float:
    """The ``time.perf_counter()`` reading at which this process started (Linux: /proc/self/stat),
    so that a budget covers the interpreter's start and imports too; elsewhere, now."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime_s = float(f.read().split()[0])
        age_s = uptime_s - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter()
    return time.perf_counter() - max(age_s, 0.0)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``15m``, ``1h``, ``1h30m`` or ``2.5m``; ValueError
    naming the expected form for anything else (a bare number, a zero or negative duration)."""
    cleaned = str(text).strip().lower()
    parts = _DURATION.findall(cleaned)
    if not parts or "".join(number + unit for number, unit in parts) != cleaned:
        raise ValueError(f"time budget must be a duration such as 90s, 15m, 1h or 1h30m; got {text!r}")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"time budget must be longer than zero, got {text!r}")
    return seconds


@dataclass
class Costs:
    """Measured seconds of one training step, one validation (0 without a validation split), one
    checkpoint save and the run log's final write (the loss plot)."""

    step_s: float
    validation_s: float
    save_s: float
    finish_s: float = 0.0

    def final_s(self) -> float:
        """The last step's validation and save, and the run log's final write."""
        return self.validation_s + self.save_s + self.finish_s


def fit_steps(available_s: float, costs: Costs, val_interval: int, checkpoint_interval: int) -> int:
    """The largest N with N * (s + v / val_interval + c / checkpoint_interval) + v + c + f <= available_s
    (0 when even one step does not fit)."""
    per_step = costs.step_s + costs.validation_s / val_interval + costs.save_s / checkpoint_interval
    spare = available_s - costs.final_s()
    if spare <= 0 or per_step <= 0:
        return 0
    return max(0, math.floor(spare / per_step))


def measure_step_s(run_step: Callable[[], None], clock: Callable[[], float] = time.perf_counter,
                   steps: int = PROBE_STEPS) -> float:
    """Mean seconds of ``run_step`` over ``steps - 1`` calls after one untimed call."""
    if steps < 2:
        raise ValueError(f"the probe needs at least 2 steps (1 untimed), got {steps}")
    run_step()
    begin = clock()
    for _ in range(steps - 1):
        run_step()
    return (clock() - begin) / (steps - 1)


def refit_due(step: int, start: int, warmup_steps: int, constant_schedule: bool) -> bool:
    """Whether the plan is refitted before step ``step`` (0-based) of a command that began at
    ``start``: after ``REFIT_AFTER`` of its steps and before the last warm-up step, while the
    learning rate does not depend on the step count."""
    if step - start < REFIT_AFTER or not (constant_schedule or step < warmup_steps):
        return False
    return step == start + REFIT_AFTER or step == warmup_steps - 1


def timed(action: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds ``action()`` takes."""
    begin = clock()
    action()
    return clock() - begin


class Deadline:
    """The end of a budget of ``budget_s`` seconds that began at ``start`` (a ``clock`` reading),
    with the costs measured so far for the guard."""

    def __init__(self, budget_s: float, start: float, clock: Callable[[], float] = time.perf_counter):
        self.budget_s, self.end, self.clock = budget_s, start + budget_s, clock
        self.costs: Costs | None = None
        self.step_durations: list[float] = []

    def remaining_s(self) -> float:
        return self.end - self.clock()

    def fit(self, costs: Costs, val_interval: int, checkpoint_interval: int) -> int:
        """The step count for what is left of the budget (less the ``SAFETY`` reserve); ValueError
        saying how long the budget must be when not one step fits."""
        self.costs = costs
        available = self.remaining_s() - SAFETY * self.budget_s
        steps = fit_steps(available, costs, val_interval, checkpoint_interval)
        if steps < 1:
            needed = self.budget_s - available + costs.step_s + costs.final_s()
            raise ValueError(
                f"time budget of {self.budget_s:.0f} s is too short: one step takes {costs.step_s:.2f} s, a "
                f"validation {costs.validation_s:.2f} s and a save {costs.save_s:.2f} s, with "
                f"{max(self.remaining_s(), 0):.0f} s left after loading and timing; give at least {math.ceil(needed)} s"
            )
        return steps

    def record_step(self, seconds: float) -> None:
        """A training step's duration, for ``refit``."""
        self.step_durations.append(seconds)

    def refit(self, steps_done: int, val_interval: int, checkpoint_interval: int) -> int:
        """``steps_done`` plus the steps that fit in what is left (less the ``SAFETY`` reserve) at the
        median of the recorded step times, which the guard then plans with too (at least one more
        step: the guard has the last word)."""
        self.costs.step_s = statistics.median(self.step_durations)
        available = self.remaining_s() - SAFETY * self.budget_s
        return steps_done + max(1, fit_steps(available, self.costs, val_interval, checkpoint_interval))

    def observe(self, *, validation_s: float | None = None, save_s: float | None = None) -> None:
        """Record a validation's or a save's duration; the guard plans with the largest seen."""
        if validation_s is not None:
            self.costs.validation_s = max(self.costs.validation_s, validation_s)
        if save_s is not None:
            self.costs.save_s = max(self.costs.save_s, save_s)

    def next_step_fits(self) -> bool:
        """Whether one more step and a final validation and save end before the budget does."""
        return self.clock() + self.costs.step_s + self.costs.final_s() <= self.end

"""--time-budget: the duration parser, the step-count rule against a direct simulation, the probe's
timing on a fake clock, and real tiny runs (fitted run == the same --steps run, the guard, resume,
the whole command within budget + slack)."""
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch
pytest.importorskip("scipy")  # weight maps
load_file = pytest.importorskip("safetensors.torch").load_file
# Imported once here, so that the runs' budgets are not spent on the first loss plot's import.
pytest.importorskip("matplotlib.backends.backend_agg")

from unet_fast.train import TrainConfig, train
from unet_fast.train import budget
from unet_fast.train.budget import Costs, Deadline, fit_steps, measure_step_s, parse_duration

TINY = dict(data="synthetic", base_channels=4, depth=3, tile_size=76, synthetic_images=3, synthetic_size=96,
            val_images=1, val_interval=5, log_interval=5, device="cpu", progress=False)
SLACK_S = 60  # the documented promise: the whole run ends within the budget plus one minute


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400),
                                           ("2.5m", 150), (" 10M ", 600), ("1m30s", 90)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["15", "", "m", "0s", "15 minutes", "-5m", "1x", "5m 3", "1e3s"])
def test_parse_duration_rejects_other_forms(text):
    with pytest.raises(ValueError, match="duration|longer than zero"):
        parse_duration(text)


def simulated_seconds(steps, costs, val_interval, checkpoint_interval):
    """The run's time, event by event: every step, a validation / save at its interval and at the
    last step (once), and the final plot."""
    total = costs.finish_s
    for done in range(1, steps + 1):
        total += costs.step_s
        if done % val_interval == 0 or done == steps:
            total += costs.validation_s
        if done % checkpoint_interval == 0 or done == steps:
            total += costs.save_s
    return total


@pytest.mark.parametrize("costs, val_interval, checkpoint_interval", [
    (Costs(0.5, 0.0, 0.0), 100, 100),
    (Costs(0.37, 2.1, 0.4, 1.5), 100, 100),
    (Costs(0.05, 3.0, 1.0, 0.2), 7, 13),
    (Costs(2.0, 10.0, 5.0, 0.0), 1, 1),
])
def test_fit_steps_never_overruns_and_is_close_to_the_most_that_fits(costs, val_interval, checkpoint_interval):
    for available in (0.1, 5.0, 60.0, 900.0):
        steps = fit_steps(available, costs, val_interval, checkpoint_interval)
        most = 0
        while simulated_seconds(most + 1, costs, val_interval, checkpoint_interval) <= available:
            most += 1
        assert steps <= most
        if steps:
            assert simulated_seconds(steps, costs, val_interval, checkpoint_interval) <= available
        # The amortised rule gives away at most the final events' share of steps, plus rounding.
        per_step = costs.step_s + costs.validation_s / val_interval + costs.save_s / checkpoint_interval
        assert most - steps <= math.ceil((costs.validation_s + costs.save_s) / per_step) + 1
        if costs.validation_s == costs.save_s == 0:
            assert steps == most


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_probe_times_the_mean_of_the_steps_after_the_first():
    clock = FakeClock()
    durations = iter([30.0, 1.0, 2.0, 3.0, 2.0])  # the first: allocation / compilation

    def step():
        clock.now += next(durations)

    assert measure_step_s(step, clock, steps=5) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 2"):
        measure_step_s(step, clock, steps=1)


def test_deadline_fits_the_remaining_budget_and_guards_the_end():
    clock = FakeClock()
    deadline = Deadline(100.0, start=clock(), clock=clock)
    clock.now += 20.0  # loading and the probe
    costs = Costs(step_s=1.0, validation_s=2.0, save_s=1.0, finish_s=1.0)
    # 100 - 20 - 5 % of 100 = 75 s; N * (1 + 2/10 + 1/10) + 4 <= 75 -> N = 54
    assert deadline.fit(costs, val_interval=10, checkpoint_interval=10) == 54
    assert deadline.next_step_fits()
    clock.now = 100.0 + 100.0 - 4.5  # 4.5 s left: not enough for a step (1) and the final events (4)
    assert not deadline.next_step_fits()
    deadline.observe(validation_s=0.5, save_s=3.0)  # the guard plans with the largest seen
    assert (costs.validation_s, costs.save_s) == (2.0, 3.0)
    late = Deadline(30.0, start=clock(), clock=clock)
    clock.now += 28.0
    with pytest.raises(ValueError, match="time budget of 30 s is too short.*give at least"):
        late.fit(costs, val_interval=10, checkpoint_interval=10)


def test_refits_happen_while_the_learning_rate_does_not_depend_on_the_step_count():
    after = budget.REFIT_AFTER
    # a warm-up of 100 steps: after REFIT_AFTER steps of this command and before the last warm-up step
    assert [step for step in range(200) if budget.refit_due(step, 0, 100, False)] == [after, 99]
    assert [step for step in range(200) if budget.refit_due(step, 30, 100, False)] == [30 + after, 99]
    assert not any(budget.refit_due(step, 0, 0, False) for step in range(200))  # cosine from step 0
    assert not any(budget.refit_due(step, 0, after, False) for step in range(200))  # warm-up over too soon
    assert [step for step in range(200) if budget.refit_due(step, 5, 0, True)] == [5 + after]  # constant


def test_refit_uses_the_median_of_the_recorded_steps():
    clock = FakeClock()
    deadline = Deadline(100.0, start=clock(), clock=clock)
    clock.now += 10.0
    costs = Costs(step_s=4.0, validation_s=0.0, save_s=0.0, finish_s=1.0)
    assert deadline.fit(costs, val_interval=10, checkpoint_interval=10) == 21  # (100 - 10 - 5 - 1) / 4
    for seconds in [3.0] + [1.0] * 9:  # a slow first step, then 1 s each
        deadline.record_step(seconds)
    clock.now += 12.0
    # 20 steps done; (100 - 22 - 5 - 1) / 1 = 72 more
    assert deadline.refit(20, val_interval=10, checkpoint_interval=10) == 92 and costs.step_s == 1.0
    clock.now = 100.0 + 99.0  # nothing left: one more step, which the guard then judges
    assert deadline.refit(50, val_interval=10, checkpoint_interval=10) == 51


def test_budget_must_be_positive_seconds(tmp_path):
    with pytest.raises(ValueError, match="time_budget"):
        train(TrainConfig(out=str(tmp_path / "r"), time_budget=0, **TINY))
    with pytest.raises(ValueError, match="warmup_fraction"):
        train(TrainConfig(out=str(tmp_path / "r"), warmup_fraction=1.5, **TINY))


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """One ordinary run first: a process's first run imports torch's optimizer machinery (seconds,
    more on a loaded machine), which would eat the tiny budgets below. The cold command is tested
    as a subprocess at the end."""
    train(TrainConfig(out=str(tmp_path_factory.mktemp("warm") / "run"), steps=1, **TINY))


def weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def test_budgeted_run_trains_exactly_like_the_fitted_step_count(tmp_path, warm):
    """The probe steps are undone: a budgeted run equals ``--steps N --warmup-steps W`` with its
    fitted W and the N it ran (the plan, or fewer where the guard stopped it on a loaded
    machine: the constant schedule makes the two agree either way), and it ends within the budget."""
    budget_s = 12.0
    options = dict(TINY, lr_schedule="constant")
    began = time.perf_counter()
    fitted = train(TrainConfig(out=str(tmp_path / "budget"), time_budget=budget_s, warmup_fraction=0.2, **options),
                   started=began)
    assert time.perf_counter() - began <= budget_s + SLACK_S
    plan = json.loads((tmp_path / "budget" / "config.json").read_text())
    steps = fitted["steps"]
    # the warm-up is 20 % of the first fit, which the refits (constant schedule) may have changed
    assert 1 <= steps <= plan["steps"] and plan["warmup_steps"] > 0
    plain = train(TrainConfig(out=str(tmp_path / "plain"), steps=steps, warmup_steps=plan["warmup_steps"], **options))
    a, b = weights(tmp_path / "budget", steps), weights(tmp_path / "plain", steps)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert fitted["loss"] == plain["loss"]
    assert not list((tmp_path / "budget").glob(".budget-probe*"))  # the probe's scratch is gone


def test_a_slow_probe_is_refitted_and_the_run_trains_like_its_final_step_count(tmp_path, monkeypatch, warm):
    """Probe steps made slow (as on a machine still busy when the run starts) plan too few steps;
    the refits during the warm-up plan with this run's own step times, and the run (cosine decay)
    still equals ``--steps N`` with its final N and the first fit's warm-up."""
    from unet_fast.train import loop

    real_step, calls, refits = loop._optimizer_step, [], []
    real_refit = budget.Deadline.refit

    def slow_probe_step(*args):
        calls.append(1)
        if len(calls) <= budget.PROBE_STEPS:
            time.sleep(0.25)
        return real_step(*args)

    def recorded_refit(self, steps_done, *args):
        refits.append((steps_done, real_refit(self, steps_done, *args)))
        return refits[-1][1]

    monkeypatch.setattr(loop, "_optimizer_step", slow_probe_step)
    monkeypatch.setattr(budget.Deadline, "refit", recorded_refit)
    budget_s = 12.0
    options = dict(TINY, val_interval=50, log_interval=50)
    began = time.perf_counter()
    fitted = train(TrainConfig(out=str(tmp_path / "budget"), time_budget=budget_s, warmup_fraction=0.6, **options),
                   started=began)
    assert time.perf_counter() - began <= budget_s + SLACK_S
    plan = json.loads((tmp_path / "budget" / "config.json").read_text())
    probe_plan = round(plan["warmup_steps"] / 0.6)  # the warm-up is the first fit's
    assert [done for done, _ in refits] == [budget.REFIT_AFTER, plan["warmup_steps"] - 1]
    assert refits[0][1] > probe_plan and plan["steps"] == refits[-1][1]
    steps = plan["steps"]
    if fitted["steps"] < steps:  # the guard's last step decays to the shortened N: no plain twin
        pytest.skip(f"the guard stopped the run at step {fitted['steps']} of {steps} on a loaded machine")
    monkeypatch.setattr(loop, "_optimizer_step", real_step)
    plain = train(TrainConfig(out=str(tmp_path / "plain"), steps=steps, warmup_steps=plan["warmup_steps"], **options))
    a, b = weights(tmp_path / "budget", steps), weights(tmp_path / "plain", steps)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert fitted["loss"] == plain["loss"]


def test_guard_stops_a_slowed_down_run_in_time(tmp_path, monkeypatch, warm):
    """Steps that become 10x slower after the fit: the run stops early, still validated and saved,
    within the budget (the final events' margin). Without a warm-up, so that no refit replans it."""
    from unet_fast.train import loop

    real_step, calls = loop._optimizer_step, []

    def slowing_step(*args):
        calls.append(1)
        began = time.perf_counter()
        result = real_step(*args)
        if len(calls) > budget.PROBE_STEPS:
            time.sleep(9 * (time.perf_counter() - began) + 0.05)
        return result

    monkeypatch.setattr(loop, "_optimizer_step", slowing_step)
    began, budget_s = time.perf_counter(), 8.0
    summary = train(TrainConfig(out=str(tmp_path / "run"), time_budget=budget_s, warmup_fraction=0.0, **TINY),
                    started=began)
    elapsed = time.perf_counter() - began
    planned = json.loads((tmp_path / "run" / "config.json").read_text())["steps"]
    assert summary["steps"] < planned
    # The planned steps at the slowed rate would take about 10x the budget; the guard's overshoot
    # is one slowed step plus the final events' timing noise on a loaded machine.
    assert elapsed <= budget_s + 5.0
    from unet_fast import checkpoint as ckpt

    _, _, state = ckpt.load_checkpoint(tmp_path / "run")
    assert state["step"] == summary["steps"] and state["config"]["steps"] == summary["steps"]
    assert max(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*")) == f"step_{summary['steps']:08d}"
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert rows[-1]["step"] == summary["steps"] and rows[-1]["val_pixel_error"] is not None


def test_resume_refits_to_the_budget_left(tmp_path, warm):
    out = str(tmp_path / "run")
    first = train(TrainConfig(out=out, time_budget=6.0, **TINY))
    fitted_warmup = json.loads((tmp_path / "run" / "config.json").read_text())["warmup_steps"]
    from unet_fast import checkpoint as ckpt

    _, _, state = ckpt.load_checkpoint(out)
    with pytest.raises(ValueError, match="too short"):  # a budget the first run has spent already
        train(TrainConfig(out=out, time_budget=state["elapsed_s"], resume=True, **TINY))
    resumed = train(TrainConfig(out=out, time_budget=state["elapsed_s"] + 10.0, resume=True, **TINY))
    assert resumed["steps"] > first["steps"]
    assert ckpt.load_checkpoint(out)[2]["step"] == resumed["steps"]
    # the warm-up derived from warmup_fraction stays the first fit's (the API's TrainConfig says 0)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["warmup_steps"] == fitted_warmup


def test_resume_with_a_step_count_drops_the_saved_budget(tmp_path, warm):
    from unet_fast import checkpoint as ckpt
    from unet_fast.cli import main

    run = str(tmp_path / "run")
    train(TrainConfig(out=run, time_budget=8.0, **TINY))
    steps = ckpt.load_checkpoint(run)[2]["step"]
    assert main(["train", "--out", run, "--resume", "--steps", str(steps + 2), "--no-progress"]) == 0
    assert ckpt.load_checkpoint(run)[2]["step"] == steps + 2


def test_the_whole_command_ends_within_the_budget(tmp_path):
    """``unet-fast train --time-budget 45s`` as a new process: from its start (interpreter, imports,
    loading) to its exit."""
    budget_s = 45
    command = [sys.executable, "-m", "unet_fast", "train", "--data", "synthetic", "--out", str(tmp_path / "run"),
               "--time-budget", f"{budget_s}s", "--base-channels", "4", "--depth", "3", "--tile-size", "76",
               "--synthetic-images", "3", "--synthetic-size", "96", "--val-images", "1", "--device", "cpu",
               "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=budget_s + SLACK_S + 60, env=env)
    elapsed = time.perf_counter() - began
    assert result.returncode == 0, result.stderr[-3000:]
    assert elapsed <= budget_s + SLACK_S, elapsed
    assert (tmp_path / "run" / "best").is_dir()


@pytest.mark.slow
def test_ddp_ranks_agree_on_the_fitted_steps(tmp_path):
    """torchrun with 2 CPU processes and a budget: rank 0's fitted step count (and each guard
    decision) is broadcast, so both ranks run the same steps (otherwise one would block in an
    all-reduce the other never joins) and the run ends in time."""
    budget_s = 120
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "unet_fast", "train", "--data", "synthetic", "--out", str(out), "--time-budget", f"{budget_s}s",
               "--base-channels", "2", "--depth", "3", "--tile-size", "60", "--synthetic-images", "2",
               "--synthetic-size", "64", "--val-images", "1", "--val-interval", "10", "--device", "cpu", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=budget_s + SLACK_S + 120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.perf_counter() - began <= budget_s + SLACK_S
    from unet_fast import checkpoint as ckpt

    _, _, state = ckpt.load_checkpoint(out)
    assert len(state["rng"]) == 2 and state["step"] == state["config"]["steps"] > 1

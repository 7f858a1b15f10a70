"""What a run reports as it goes: the progress bar (tqdm) on the terminal, and the run log
(metrics.csv, metrics.json, loss.png) in the run directory."""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path


class Progress:
    """The progress of a run: step, loss, tiles/s, elapsed time and ETA.

    On a terminal, a tqdm bar redrawn in place after every step. Elsewhere (a log file, a pipe) one
    plain line per log interval, formatted by tqdm's meter without the bar, so that logs hold no
    carriage returns. ``message`` prints a line above the bar (validation results), also when the
    bar itself is disabled.
    """

    BAR_FORMAT = "step {n_fmt}/{total_fmt} |{bar}| elapsed {elapsed}, ETA {remaining}{postfix}"
    LINE_FORMAT = "step {n_fmt}/{total_fmt}  elapsed {elapsed}, ETA {remaining}{postfix}"

    def __init__(self, total: int, start: int, *, enabled: bool = True, stream=None):
        from tqdm import tqdm

        self.total, self.start, self.enabled = total, start, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.begin = time.perf_counter()
        self._format_meter = tqdm.format_meter
        self.bar = tqdm(total=total, initial=start, file=self.stream, bar_format=self.BAR_FORMAT,
                        dynamic_ncols=True, disable=not self.interactive)

    def update(self, step: int, loss: float, tiles_per_second: float, *, log_line: bool = False) -> None:
        """After ``step`` steps: redraws the bar, or with ``log_line`` prints a plain line off a terminal."""
        postfix = f"loss {loss:.4f}, {tiles_per_second:.1f} tiles/s"
        if self.interactive:
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(step - self.bar.n)
        elif self.enabled and log_line:
            elapsed = time.perf_counter() - self.begin
            self._write(self._format_meter(step, self.total, elapsed, bar_format=self.LINE_FORMAT,
                                           postfix=postfix, initial=self.start))

    def set_total(self, total: int) -> None:
        """A new step count (a budgeted run's refit)."""
        self.total = self.bar.total = total
        self.bar.refresh()

    def message(self, text: str) -> None:
        """A line of text above the bar."""
        if self.interactive:
            self.bar.write(text, file=self.stream)
        else:
            self._write(text)

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.bar.close()


class Window:
    """Mean loss and tiles/s over the steps since the last logged row."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.begin, self.tiles, self.loss_sum, self.steps = time.perf_counter(), 0, 0.0, 0

    def add(self, tiles: int, loss: float | None) -> None:
        """A step's tiles and loss; None for a skipped (non-finite) step, which the mean leaves out."""
        self.tiles += tiles
        if loss is not None:
            self.loss_sum += loss
            self.steps += 1

    def tiles_per_second(self) -> float:
        return self.tiles / max(time.perf_counter() - self.begin, 1e-9)

    def mean_loss(self) -> float:
        return self.loss_sum / self.steps if self.steps else float("nan")


class RunLog:
    """Rows of metrics for a run directory: metrics.csv, metrics.json and loss.png."""

    COLUMNS = ("step", "loss", "lr", "tiles_per_s", "elapsed_s",
               "val_pixel_error", "val_foreground_iou", "val_foreground_dice",
               "val_rand_error", "skipped_steps")

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.run_dir = run_dir
        self.rows: list[dict] = []
        existing = run_dir / "metrics.json"
        if resume_step is not None and existing.is_file():
            # Rows logged after the checkpoint are replayed by the resumed run.
            self.rows = [r for r in json.loads(existing.read_text()) if r["step"] <= resume_step]

    def add(self, row: dict) -> None:
        self.rows.append({k: row.get(k) for k in self.COLUMNS})

    def write(self) -> None:
        tmp = self.run_dir / ".metrics.json.tmp"
        tmp.write_text(json.dumps(self.rows, indent=1))
        os.replace(tmp, self.run_dir / "metrics.json")
        tmp = self.run_dir / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.COLUMNS)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
        os.replace(tmp, self.run_dir / "metrics.csv")

    def plot(self) -> Path | None:
        """loss.png: training loss and validation errors over steps; None without matplotlib."""
        try:
            # A figure of its own with the Agg canvas: pyplot's global backend stays the caller's.
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            return None
        train = [(r["step"], r["loss"]) for r in self.rows if r["loss"] is not None]
        val = [(r["step"], r["val_pixel_error"], r["val_rand_error"]) for r in self.rows if r["val_pixel_error"] is not None]
        fig = Figure(figsize=(7, 4))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        if train:
            ax.plot(*zip(*train), label="training loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if val:
            other = ax.twinx()
            steps, pixel, rand = zip(*val)
            other.plot(steps, pixel, "o-", color="tab:red", label="val pixel error")
            other.plot(steps, rand, "s-", color="tab:green", label="val Rand error")
            other.set_ylabel("validation error")
            other.legend(loc="upper center")
        if train:
            ax.legend(loc="upper right")
        ax.set_title("unet-fast training")
        fig.tight_layout()
        path = self.run_dir / "loss.png"
        fig.savefig(path, dpi=100)
        return path


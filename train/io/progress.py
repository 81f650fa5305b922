"""The per-epoch record every training loop keeps: a log line, ``metrics.jsonl``, ``metrics.csv`` and
``progress.json`` in the run folder, all updated after each epoch (not only at the end).

``TrainLog(out_dir, name, epochs, start_epoch, units)``:

* ``estimate(seconds, steps_done, steps_per_epoch)``: at start-up, once a few steps are timed, one line with
  the estimated time per epoch and for the epochs left (so CPU-sized defaults announce their cost);
* ``epoch(row, train_seconds, samples)``: after each epoch, appends ``row`` to ``metrics.jsonl`` and to
  ``metrics.csv`` (one column per key ever seen: the file is rewritten only when a row brings a new key, and
  once per process, so a 3000-epoch run does not rewrite it 3000 times), rewrites ``progress.json`` (epoch k
  of N, last row, seconds per epoch, ETA), and prints ``<name> epoch k/N  train loss ..  valid <metric> ..
  <unit>  lr ..  .. samples/s  .. s/epoch  ETA ..`` to stderr, TTY or not.

A resumed run keeps the first ``start_epoch`` rows of ``metrics.jsonl`` (rows logged after the checkpoint it
resumes from are trained again), or ``rows`` (the history its checkpoint holds) when given: the files are
rewritten from them if they differ. Only the writer (rank 0) should build one with ``out_dir``; other ranks pass
``out_dir=None, quiet=True``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path

from edg.edg_core.io import append_jsonl, read_jsonl, write_bytes_atomic, write_json_atomic


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``4.2s``."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h < 48 else f"{h / 24:.1f} days"


def timed_steps(steps_per_epoch: int) -> int:
    """How many steps after the first (a warm-up: loader start, allocations) to time for the start-up estimate:
    1 for short epochs, so a slow run announces its cost early; up to 3; 0 when the epoch line comes as soon."""
    return min(3, max(steps_per_epoch - 3, 1)) if steps_per_epoch > 2 else 0


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class TrainLog:
    """See the module docstring. ``units`` maps a metric name (without ``train_``/``valid_``/``test_``) to its
    unit, e.g. ``{"weighted_mae": "kcal/mol(/Å)", "loss": "normalised pixel MSE"}``; ``show`` names the
    metrics of the log line (default: ``loss``, then each ``valid_*`` key)."""

    def __init__(self, out_dir: str | Path | None, name: str, epochs: int, start_epoch: int = 0,
                 units: dict[str, str] | None = None, show: tuple[str, ...] | None = None, quiet: bool = False,
                 stream=None, rows: list[dict] | None = None):
        self.dir = Path(out_dir) if out_dir is not None else None
        self.name, self.epochs, self.start_epoch = name, epochs, start_epoch
        self.units, self.show, self.quiet = dict(units or {}), show, quiet
        self.stream = stream
        self.rows: list[dict] = list(rows[:start_epoch]) if rows is not None else []
        self._csv_cols: list[str] | None = None  # metrics.csv's header as this process last wrote it
        self.seconds: list[float] = []  # wall seconds of each epoch run in this process
        self.t_start = time.perf_counter()
        if self.dir is not None:  # files are rewritten only when they change (a finished run stays untouched)
            self.dir.mkdir(parents=True, exist_ok=True)
            logged = read_jsonl(self.dir / "metrics.jsonl")
            self.rows = list(rows[:start_epoch]) if rows is not None else logged[:start_epoch]
            if logged != self.rows or not (self.dir / "metrics.jsonl").exists():
                write_bytes_atomic(self.dir / "metrics.jsonl", "".join(
                    json.dumps(r, sort_keys=True, default=str) + "\n" for r in self.rows).encode())
                self._write_csv()
            elif not (self.dir / "metrics.csv").exists():
                self._write_csv()
            if start_epoch < epochs or not (self.dir / "progress.json").exists():
                self._write_progress(state="running" if start_epoch < epochs else "done")
        if start_epoch and not quiet:
            self.say(f"{name}: resumed after epoch {start_epoch}/{epochs}")

    # ------------------------------------------------------------ output
    def say(self, line: str) -> None:
        """One line on stderr (or ``stream``), above any progress bar on a terminal."""
        if not self.quiet:
            from tqdm.auto import tqdm
            out = self.stream or sys.stderr
            tqdm.write(line, file=out)
            out.flush()

    def unit(self, key: str) -> str:
        base = key.split("_", 1)[1] if key.split("_", 1)[0] in ("train", "valid", "test") else key
        u = self.units.get(base, "")
        return f" {u}" if u else ""

    # ------------------------------------------------------------ events
    def start(self, model, epochs_left: int, steps_per_epoch: int, batch: int, device) -> None:
        """Announce what will run: model size, epochs x steps x batch, device (a CPU-sized default shows here)."""
        n = sum(p.numel() for p in model.parameters())
        big = str(device).startswith("cpu") and n > 20e6 and epochs_left * steps_per_epoch > 100
        size = f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"
        self.say(f"{self.name}: {size} parameters, {epochs_left} epochs x {steps_per_epoch} steps of "
                 f"{batch} samples on {device}" + (": a GPU-sized run on a CPU; a time estimate follows after the "
                                                    "first steps" if big else ""))

    def step_timer(self, steps_per_epoch: int, device=None):
        """A callable ``after_step(i)`` for the first epoch run in this process: step 0 is a warm-up, steps
        1..``timed_steps`` are timed (synchronising a GPU first) and the estimate is announced once."""
        import time
        timed, start = timed_steps(steps_per_epoch), [0.0]

        def after_step(i: int) -> None:
            if not timed or i not in (0, timed):
                return
            if device is not None and getattr(device, "type", "cpu") == "cuda":
                import torch
                torch.cuda.synchronize(device)
            if i == 0:
                start[0] = time.perf_counter()
            else:
                self.estimate(time.perf_counter() - start[0], timed, steps_per_epoch)
        return after_step

    def estimate(self, seconds: float, steps_done: int, steps_per_epoch: int) -> float:
        """Announce the estimated time per epoch from ``steps_done`` timed steps; returns seconds per epoch."""
        per_epoch = seconds / max(steps_done, 1) * steps_per_epoch
        left = self.epochs - self.start_epoch
        self.say(f"{self.name}: {seconds / max(steps_done, 1):.3g} s/step (timed over {steps_done} "
                 f"step{'s' if steps_done > 1 else ''} after the first) -> "
                 f"~{duration(per_epoch)} per epoch ({steps_per_epoch} steps), ~{duration(per_epoch * left)} for "
                 f"the {left} epochs left (training steps only; shrink --epochs or the model for a quick run)")
        return per_epoch

    def eta(self, epochs_done: int) -> float:
        """Seconds left: mean seconds per epoch run in this process x epochs left."""
        if not self.seconds:
            return float("nan")
        return sum(self.seconds) / len(self.seconds) * (self.epochs - epochs_done)

    def epoch(self, row: dict, seconds: float, epochs_done: int) -> str:
        """Record one finished epoch (``row``: its metrics; ``seconds``: its wall time; ``epochs_done``: 1-based)."""
        self.seconds.append(seconds)
        self.rows.append(row)
        if self.dir is not None:
            append_jsonl(self.dir / "metrics.jsonl", row)
            self._append_csv(row)
            self._write_progress(state="running" if epochs_done < self.epochs else "done", seconds=seconds,
                                 epochs_done=epochs_done)
        line = self.line(row, seconds, epochs_done)
        self.say(line)
        return line

    def line(self, row: dict, seconds: float, epochs_done: int) -> str:
        keys = self.show or ("train_loss", *sorted(k for k in row if k.startswith("valid_")))
        parts = [f"{self.name} epoch {epochs_done}/{self.epochs}"]
        for k in keys:
            if k in row and isinstance(row[k], (int, float)):
                parts.append(f"{k.replace('_', ' ', 1)} {_num(row[k])}{self.unit(k)}")
        if "lr" in row:
            parts.append(f"lr {row['lr']:.3g}")
        if row.get("samples_per_s"):
            parts.append(f"{row['samples_per_s']:.1f} samples/s")
        parts.append(f"{seconds:.1f} s/epoch")
        parts.append(f"ETA {duration(self.eta(epochs_done))}")
        return "  ".join(parts)

    # ------------------------------------------------------------ files
    @staticmethod
    def _csv_text(cols: list[str], rows: list[dict], header: bool) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        if header:
            w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()})
        return buf.getvalue()

    def _write_csv(self) -> None:
        """Rewrite ``metrics.csv`` from every row (atomically); its columns: every key, in order of first use."""
        cols: list[str] = []
        for r in self.rows:
            cols += [k for k in r if k not in cols]
        write_bytes_atomic(self.dir / "metrics.csv", self._csv_text(cols, self.rows, header=True).encode())
        self._csv_cols = cols

    def _append_csv(self, row: dict) -> None:
        """Add ``row`` (already in ``self.rows``) to ``metrics.csv``: one appended line when its header has every
        key of the row, else the whole file rewritten with the wider header. The first row of a process always
        rewrites, so a file left by an earlier process (a torn last line, other columns) is made whole."""
        path = self.dir / "metrics.csv"
        if self._csv_cols is None or any(k not in self._csv_cols for k in row) or not path.exists():
            self._write_csv()
            return
        with open(path, "a") as f:
            f.write(self._csv_text(self._csv_cols, [row], header=False))

    def _write_progress(self, state: str, seconds: float | None = None, epochs_done: int | None = None) -> None:
        done = epochs_done if epochs_done is not None else self.start_epoch
        eta = self.eta(done)
        write_json_atomic(self.dir / "progress.json", {
            "stage": self.name, "state": state, "epoch": done, "epochs": self.epochs,
            "last": self.rows[-1] if self.rows else None, "units": self.units,
            "seconds_last_epoch": seconds, "seconds_this_run": round(time.perf_counter() - self.t_start, 3),
            "eta_s": round(eta, 1) if math.isfinite(eta) else None, "updated": time.time()})

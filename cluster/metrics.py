"""Stage progress as Ray metrics (seen in the dashboard's Metrics view / Prometheus) and a progress file.

``StageProgress`` counts molecules done / failed / skipped and reports a rate. In a Ray runtime it
exports ``edg_molecules_done``, ``edg_molecules_failed`` (counters) and ``edg_stage_rate`` (gauge,
items/s), tagged with the stage name; everywhere it rewrites the run folder's progress file (``path``,
``RunFolder.progress_path``) at most every few seconds, and where no progress bar is drawn (a log, a pipe, a Ray
job's log) prints a line every ``EDG_PROGRESS_EVERY_S`` seconds and one at the end: done/failed/skipped of the
total, the rate and an ETA, counting what actors finished as the driver receives it.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from edg.edg_core.io import write_json_atomic


def progress_mode() -> str | None:
    """``"bar"`` on a terminal (or ``EDG_PROGRESS=1``), ``"lines"`` where no bar can be drawn (a log file, a pipe,
    a Ray job's log; or ``EDG_PROGRESS=lines``), None with ``EDG_PROGRESS=0``."""
    setting = os.environ.get("EDG_PROGRESS")
    if setting == "0":
        return None
    if setting in ("1", "bar"):
        return "bar"
    if setting == "lines":
        return "lines"
    return "bar" if sys.stderr.isatty() else "lines"



class StageProgress:
    def __init__(self, stage: str, total: int | None = None, path: str | Path | None = None,
                 unit: str = "molecules", every_s: float = 5.0, lines: bool | None = None,
                 line_every_s: float | None = None):
        self.stage, self.total, self.unit, self.every_s = stage, total, unit, every_s
        self.path = Path(path) if path else None
        self.done = self.failed = self.skipped = 0
        self.t0 = time.time()
        self._last_write = 0.0
        self.lines = progress_mode() == "lines" if lines is None else lines
        self.line_every_s = float(os.environ.get("EDG_PROGRESS_EVERY_S", 10.0)) if line_every_s is None \
            else line_every_s
        self._last_line = self.t0
        self.bar = None
        if lines is None and progress_mode() == "bar":  # a terminal: one bar, advanced as items finish
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=stage, unit=unit[:3], dynamic_ncols=True, mininterval=0.5)
        self._metrics = self._ray_metrics()

    def _ray_metrics(self):
        try:
            import ray
            if not ray.is_initialized():
                return None
            from ray.util.metrics import Counter, Gauge
        except ImportError:
            return None
        tags = ("stage",)
        return {"done": Counter("edg_molecules_done", f"{self.unit} finished", tag_keys=tags),
                "failed": Counter("edg_molecules_failed", f"{self.unit} failed", tag_keys=tags),
                "rate": Gauge("edg_stage_rate", f"{self.unit} per second", tag_keys=tags)}

    @property
    def rate(self) -> float:
        return self.done / max(time.time() - self.t0, 1e-9)

    def update(self, done: int = 0, failed: int = 0, skipped: int = 0) -> None:
        self.done += done
        self.failed += failed
        self.skipped += skipped
        if self._metrics is not None:
            tags = {"stage": self.stage}
            if done:
                self._metrics["done"].inc(done, tags=tags)
            if failed:
                self._metrics["failed"].inc(failed, tags=tags)
            self._metrics["rate"].set(self.rate, tags=tags)
        if self.path is not None and time.time() - self._last_write > self.every_s:
            self.write()
        if self.bar is not None and (done or failed or skipped):
            self.bar.update(done + failed + skipped)
            self.bar.set_postfix(done=self.done, failed=self.failed, skipped=self.skipped, refresh=False)
        if self.lines and time.time() - self._last_line >= self.line_every_s:
            self.print_line()

    def line(self) -> str:
        """``[dft] 3/10 molecules (30%): done 2, failed 1, skipped 0, 0.52 molecules/s, ETA 13 s``: every item
        counted once it is finished here or on an actor (the driver aggregates what actors return)."""
        seen = self.done + self.failed + self.skipped
        elapsed = max(time.time() - self.t0, 1e-9)
        rate = (self.done + self.failed) / elapsed
        head = f"[{self.stage}] {seen}"
        if self.total:
            head += f"/{self.total} {self.unit} ({100 * seen / self.total:.0f}%)"
            left = max(self.total - seen, 0)
            eta = f", ETA {left / rate:.0f} s" if rate > 0 else ""
        else:
            head += f" {self.unit}"
            eta = ""
        return (f"{head}: done {self.done}, failed {self.failed}, skipped {self.skipped}, "
                f"{rate:.3g} {self.unit}/s{eta}")

    def print_line(self) -> None:
        print(self.line(), file=sys.stderr, flush=True)  # beside logs and bars: stdout keeps the results
        self._last_line = time.time()

    def finish(self) -> None:
        """The progress file and, where lines are on, a last line (the totals reached)."""
        self.write()
        if self.bar is not None:
            self.bar.close()
        if self.lines:
            self.print_line()

    def summary(self) -> dict:
        return {"stage": self.stage, "total": self.total, "done": self.done, "failed": self.failed,
                "skipped": self.skipped, "seconds": round(time.time() - self.t0, 3),
                f"{self.unit}_per_s": round(self.rate, 4)}

    def write(self) -> None:
        if self.path is not None:
            write_json_atomic(self.path, self.summary())
            self._last_write = time.time()

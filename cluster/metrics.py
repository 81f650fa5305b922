"""Stage progress as Ray metrics (seen in the dashboard's Metrics view / Prometheus) and a progress file.

``StageProgress`` counts molecules done / failed / skipped and reports a rate. In a Ray runtime it
exports ``edg_molecules_done``, ``edg_molecules_failed`` (counters) and ``edg_stage_rate`` (gauge,
items/s), tagged with the stage name; everywhere it rewrites the run folder's progress file (``path``,
``RunFolder.progress_path``) at most every few seconds.
"""
from __future__ import annotations

import time
from pathlib import Path

from edg.edg_core.io import write_json_atomic


class StageProgress:
    def __init__(self, stage: str, total: int | None = None, path: str | Path | None = None,
                 unit: str = "molecules", every_s: float = 5.0):
        self.stage, self.total, self.unit, self.every_s = stage, total, unit, every_s
        self.path = Path(path) if path else None
        self.done = self.failed = self.skipped = 0
        self.t0 = time.time()
        self._last_write = 0.0
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

    def summary(self) -> dict:
        return {"stage": self.stage, "total": self.total, "done": self.done, "failed": self.failed,
                "skipped": self.skipped, "seconds": round(time.time() - self.t0, 3),
                f"{self.unit}_per_s": round(self.rate, 4)}

    def write(self) -> None:
        if self.path is not None:
            write_json_atomic(self.path, self.summary())
            self._last_write = time.time()

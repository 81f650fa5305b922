"""What a stage worker hands back to the stage driver (``cluster.engine.run_stage``): typed, not strings.

A worker processes one batch of items and returns a ``BatchResult``: shard ``samples`` for the driver to write
(render, convert, fused), the ``done`` keys whose output the worker wrote itself (DFT result files), and one
``Failure`` per item it gave up on. Only the driver writes the failure manifest (``failures.jsonl``), one line
per ``Failure.to_json()``; readers use ``Failure.from_json``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .errors import InvalidRecord
from .shards import sample_key


@dataclass(frozen=True)
class Failure:
    """One record a stage gave up on: ``record`` (the id or file:frame a user can find), ``key`` (its sample
    key, the resume key), ``stage`` (read, dft, render, ...), ``reason`` (one line)."""
    record: str
    key: str
    stage: str
    reason: str

    @classmethod
    def of(cls, record: str, stage: str, reason: str, key: str | None = None) -> Failure:
        return cls(str(record), key if key is not None else sample_key(str(record)), stage,
                   str(reason).splitlines()[0] if str(reason) else "failed")

    @classmethod
    def invalid(cls, rec: InvalidRecord) -> Failure:
        """A record the reader refused (stage ``read``)."""
        return cls.of(rec.record, "read", rec.problem)

    def to_json(self) -> dict:
        return {"record": self.record, "key": self.key, "stage": self.stage, "reason": self.reason,
                "time": round(time.time(), 3)}

    @classmethod
    def from_json(cls, d: dict) -> Failure:
        return cls(str(d.get("record", "?")), str(d.get("key") or sample_key(str(d.get("record", "?")))),
                   str(d.get("stage", "?")), str(d.get("reason", "?")))


@dataclass
class BatchResult:
    """What ``worker.process(batch)`` returns: see the module docstring."""
    samples: list[dict] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def __add__(self, other: BatchResult) -> BatchResult:
        return BatchResult(self.samples + other.samples, self.done + other.done, self.failures + other.failures)

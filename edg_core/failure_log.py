"""The failure manifest of a run folder (``failures.jsonl``): one line per record a stage gave up on.

The stage driver is its one writer. Entries are appended as failures happen (a killed run keeps them) and the
file is compacted at the end: one entry per (stage, key), the latest, none for a key that has since succeeded.
For a URL run the file is uploaded at most every ``upload_every_s`` seconds and at the end (a killed run then
retries the molecules whose failure had not been uploaded yet).
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable

from .io import append_jsonl, read_jsonl, write_bytes_atomic
from .stage import Failure

FAILURES = "failures.jsonl"


class FailureLog:
    """``run.local / name`` of a ``RunFolder`` ``run`` (``run.failure_log(name)``; anything with ``local`` and
    ``commit(rel)``, such as a ``storage.Mirror``, will do)."""

    def __init__(self, run, name: str = FAILURES, upload_every_s: float = 30.0):
        self.run, self.name, self.path = run, name, run.local / name
        self.upload_every_s, self._uploaded = upload_every_s, time.monotonic()
        self.entries: dict[tuple[str, str], dict] = {}
        self.appended = 0
        for e in read_jsonl(self.path):
            f = Failure.from_json(e)
            self.entries[(f.stage, f.key)] = e

    def keys(self) -> set[str]:
        return {k for _, k in self.entries}

    def add(self, failures: Iterable[Failure]) -> int:
        n = 0
        for f in failures:
            e = f.to_json()
            if self.entries.get((f.stage, f.key), {}).get("reason") != f.reason:
                append_jsonl(self.path, e)
                self.appended += 1
            self.entries[(f.stage, f.key)] = e
            n += 1
        if n and time.monotonic() - self._uploaded >= self.upload_every_s:
            self.run.commit(self.name)
            self._uploaded = time.monotonic()
        return n

    def compact(self, succeeded: set[str]) -> None:
        keep = [e for (_, k), e in self.entries.items() if k not in succeeded]
        lines = "".join(json.dumps(e, sort_keys=True, default=str) + "\n" for e in keep)
        current = self.path.read_text() if self.path.exists() else ""
        if lines != current and (keep or self.path.exists()):
            write_bytes_atomic(self.path, lines.encode())
        if self.path.exists():
            self.run.commit(self.name)

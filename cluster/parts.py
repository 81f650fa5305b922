"""Inputs the actors read themselves: a source whose dataset cuts into byte ranges (``pcqm4mv2``, the registry's
``parts``) goes to a stage's Ray actors as parts, ``<spec>?part=k/N`` each, instead of the driver reading every
record and shipping it.

The driver (``run_parts``) plans the parts once (``Dataset.plan_parts``: one scan of the file, no molecule
parsed), reads what the run folder already holds (the sink's finished keys, the failure manifest), gives each
part the keys of its own record range to leave alone, and runs the parts through the one stage driver
(``engine.run_stage``) with ``PartWorker``: on an actor it reads its part and runs the stage's own worker over the
records in the stage's batches. Per record, everything is as when the driver reads: a record the reader refuses is
a ``read`` failure, a worker error costs its batch, outputs and failures are keyed by molecule, so a rerun
resumes molecule by molecule (with more or fewer actors: the parts depend on the file only). A part given up on
as a whole (its actor died ``max_retries`` + 1 times) is one failure line naming the part's spec; a rerun skips
it like any failed item unless ``retry_failed``.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edg.edg_core.errors import DiskFullError, InvalidRecord
from edg.edg_core.stage import BatchResult, Failure

from .engine import Stage, StageSummary, Workers, opened, run_stage

RECORDS_PER_PART = {"dft": 200, "convert": 20_000}
"""Records per part by stage (others: ``DEFAULT_RECORDS_PER_PART``). DFT takes seconds per molecule: 200 keeps a
part under an hour on one GPU share and the progress fine-grained; conversion ~0.5 ms per record (RDKit parsing), so its
parts are large enough to dwarf what each part costs before its first record (opening the file, passing over the
labels CSV's earlier rows: ~2 M rows/s, under 2 s for the last part of PCQM4Mv2's 3.7 M rows)."""
DEFAULT_RECORDS_PER_PART = 1_000
MIN_PARTS = 64
"""A small input is cut into this many parts (one record each below that), so that up to 64 actors share it."""


@dataclass(frozen=True)
class PartItem:
    """One part for one actor: the dataset's planned part (``spec``, ``source()``) and the keys of its records
    that are done or failed already (what the driver would have skipped)."""
    part: Any
    skip: frozenset = field(default_factory=frozenset)


class PartWorker:
    """Reads each ``PartItem`` it is given and runs ``worker(**args).process_batch`` over its records in batches
    of ``batch_size``; one ``BatchResult`` for all of them (see the module docstring)."""

    def __init__(self, worker: type, args: dict, batch_size: int, stage: str, key: Callable, record: Callable):
        self.inner = worker(**args)
        self.batch_size, self.stage, self.key, self.record = max(1, batch_size), stage, key, record

    def process_batch(self, items: list[PartItem]) -> BatchResult:
        res = BatchResult()
        for item in items:
            res += self._part(item)
        return res

    def _part(self, item: PartItem) -> BatchResult:
        res, batch = BatchResult(), []
        for rec in item.part.source():
            if isinstance(rec, InvalidRecord):
                f = Failure.invalid(rec)
                if f.key not in item.skip:
                    res.failures.append(f)
                continue
            if self.key(rec) in item.skip:
                continue
            batch.append(rec)
            if len(batch) >= self.batch_size:
                res += self._run(batch)
                batch = []
        if batch:
            res += self._run(batch)
        return res

    def _run(self, batch: list) -> BatchResult:
        try:
            return self.inner.process_batch(batch)
        except DiskFullError:  # not the molecules' fault: stop, a rerun resumes
            raise
        except Exception as e:  # a worker bug costs its batch, as in the driver's own loop
            reason = f"error: {type(e).__name__}: {e}"
            return BatchResult(failures=[Failure.of(self.record(it), self.stage, reason, self.key(it))
                                         for it in batch])


def plan(items, workers: Workers, stage: str) -> list | None:
    """The planned parts of ``items`` when it is a source (``readers.Source``: it names its ``spec``) whose dataset
    cuts into parts and the stage runs on Ray actors; ``None`` otherwise (the driver reads the records)."""
    spec = getattr(items, "spec", None)
    if not workers.actors or not isinstance(spec, str):
        return None
    from edg.edg_core.datasets import dataset_of, resolve
    ds = dataset_of(spec)
    if ds is None or ds.parts is None:
        return None
    return ds.plan_parts(resolve(spec), RECORDS_PER_PART.get(stage, DEFAULT_RECORDS_PER_PART), MIN_PARTS)


def split_skip(parts: list, skip: set[str]) -> list[frozenset]:
    """For each part, the keys of ``skip`` whose record index falls in its range ``[first, stop)``."""
    firsts = [p.first for p in parts]
    out: list[set[str]] = [set() for _ in parts]
    for key in skip:
        index = parts[0].index_of(key) if parts else None
        if index is None:
            continue
        k = bisect.bisect_right(firsts, index) - 1
        if k >= 0 and index < parts[k].stop:
            out[k].add(key)
    return [frozenset(s) for s in out]


def run_parts(stage: Stage, parts: list, out, workers: Workers, retry_failed: bool = False) -> StageSummary:
    """Run ``stage`` over the records of ``parts`` (``plan``), each part read by the actor that takes it; the
    summary counts molecules, as ``run_stage`` over the records would."""
    with opened(out) as run:
        run.pull()  # a URL run: what earlier runs uploaded (the failure manifest)
        skip = stage.sink.done_keys(run)
        if not retry_failed:
            skip = skip | run.failure_log(stage.sink.failures).keys()
        skips = split_skip(parts, skip)
        skipped = sum(len(s) for s in skips)
        items = [PartItem(p, s) for p, s in zip(parts, skips)]
        total = sum(p.count for p in parts)
        print(f"[{stage.name}] {len(parts)} parts of {parts[0].spec.split('?')[0] if parts else 'the input'} "
              f"read by {workers.actors} actors ({total} records, {skipped} done or failed before)", flush=True)
        outer = Stage(stage.name, PartWorker,
                      {"worker": stage.worker, "args": stage.args, "batch_size": stage.batch_size,
                       "stage": stage.name, "key": stage.key, "record": stage.record},
                      stage.sink, key=_part_spec, record=_part_spec, batch_size=1, unit=stage.unit)
        summary = run_stage(outer, items, run, workers, total=total - skipped, retry_failed=retry_failed)
    summary.total, summary.skipped = total, summary.skipped + skipped
    return summary


def _part_spec(item: PartItem) -> str:
    return item.part.spec

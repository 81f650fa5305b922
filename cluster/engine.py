"""The one stage driver: ``run_stage(stage, items, out, workers)`` runs any batch stage of EDG.

A ``Stage`` is what the driver runs: its name, the worker class that turns a batch of items into a
``BatchResult`` (``edg_core.stage``), the worker's keyword arguments, how an item is keyed, and its output
``Sink``. A stage of the pipeline is declared once in its package (``edg_core.stage.StageSpec``) and becomes a
``Stage`` with ``cluster.stages.batch_stage``. The driver

1. reads what the run folder ``out`` (``edg_core.run_folder.RunFolder``, opened by the command; a path or URL
   from Python callers is opened here) already holds: the sink's finished keys and the failure manifest
   ``<out>/failures.jsonl``, and skips those keys (``retry_failed`` retries the failed ones);
2. batches the remaining items and runs the batches in this process (``workers.actors == 0``) or streams them
   through a pool of Ray actors (``cluster.pool.ActorPool``: back-pressure, dead actors replaced, retries);
3. writes the samples that come back into the sink (shards) and records every ``Failure`` in the manifest,
   exactly one line per failed key however often a run is resumed;
4. returns a ``StageSummary``; progress goes to a progress bar, the run's ``progress.json`` and, on Ray, the
   dashboard's metrics (``cluster.metrics.StageProgress``).

Why a hand-written pool and not Ray Data (``map_batches`` with an actor pool strategy): see docs/design.md.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edg.edg_core.errors import DiskFullError, InvalidRecord
from edg.edg_core.failure_log import FailureLog
from edg.edg_core.run_folder import FAILURES, RunFolder
from edg.edg_core.shards import SHARD_GLOBS, ShardWriter, shard_keys
from edg.edg_core.stage import BatchResult, Failure

from .metrics import StageProgress

__all__ = ["Workers", "Shards", "ResultFiles", "NpzFile", "Stage", "StageSummary", "FailureLog", "FAILURES",
           "run_stage", "opened"]


@dataclass
class Workers:
    """Where a stage runs: ``actors`` = 0 in this process; otherwise a pool of Ray actors with ``cpus`` CPUs
    and ``gpus`` each (a fraction shares one GPU between several actors)."""
    actors: int = 0
    cpus: float = 1.0
    gpus: float = 0.0
    max_retries: int = 2
    placement_timeout_s: float = 300.0   # give up an actor no node can host after this long


# ---------------------------------------------------------------- sinks: where a stage's outputs go
class Shards:
    """The driver writes samples into ``<run>/<prefix>-NNNNNN.tar`` shards (each with its key index
    ``.tar.keys``); finished keys = keys in finished shards."""
    bulky = SHARD_GLOBS
    failures = FAILURES

    def __init__(self, prefix: str = "shard", maxcount: int = 1000, maxsize: int = 1 << 30):
        self.prefix, self.maxcount, self.maxsize = prefix, maxcount, maxsize

    def done_keys(self, run: RunFolder) -> set[str]:
        return shard_keys(run.where())

    def open(self, run: RunFolder) -> ShardWriter:
        return ShardWriter(run.where(), self.prefix, self.maxcount, self.maxsize)


class ResultFiles:
    """Workers write one file per item themselves (uploaded whole); the driver only counts them.
    ``list_keys(out)`` gives the keys already written (the DFT stage: ``dft.worker.done_keys``), ``bulky`` the
    glob of those files, which the driver never mirrors."""
    failures = FAILURES

    def __init__(self, list_keys: Callable[[Any], set[str]], bulky: tuple[str, ...] = ()):
        self.list_keys, self.bulky = list_keys, bulky

    def done_keys(self, run: RunFolder) -> set[str]:
        return self.list_keys(run.where())

    def open(self, run: RunFolder):
        return _NoWriter()


class NpzFile:
    """The driver collects every sample's new ``<name>.npy`` members (``__outputs__``) and writes one file
    ``<run>/<name>`` (a ``.npz``) at the end (``ids``: molecule ids, one array per name, in arrival order;
    atomically, nothing on failure); its failures go to ``<run>/<name>.failures.jsonl``. Not resumable: a
    rerun computes everything again."""
    bulky = ()

    def __init__(self, name: str):
        self.name = name
        self.failures = f"{name}.{FAILURES}"

    def done_keys(self, run: RunFolder) -> set[str]:
        return set()

    @contextlib.contextmanager
    def open(self, run: RunFolder):
        sink = _NpzWriter()
        yield sink
        sink.save(run.local / self.name)
        run.commit(self.name)


class _NpzWriter:
    def __init__(self):
        self.ids: list[str] = []
        self.arrays: dict[str, list] = {}

    def write(self, sample: dict) -> None:
        import json

        from edg.edg_core.shards import from_npy_bytes
        names = sample.get("__outputs__", ())
        if not names:
            return  # a sample without outputs (no images) has no row
        self.ids.append(json.loads(sample["meta.json"])["id"])
        for k in names:
            self.arrays.setdefault(k, []).append(from_npy_bytes(sample[f"{k}.npy"]))

    def save(self, out) -> None:
        import numpy as np
        from edg.edg_core.io import atomic_path
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, ids=np.array(self.ids), **{k: np.stack(v) for k, v in self.arrays.items()})


class _NoWriter:
    def write(self, sample: dict) -> None:
        raise RuntimeError("this stage's workers write their own outputs; they returned a sample")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@dataclass
class Stage:
    """A batch stage, declared once: see the module docstring."""
    name: str
    worker: type                               # worker(**args).process_batch(batch: list) -> BatchResult
    args: dict                                 # keyword arguments of the worker's constructor
    sink: Shards | ResultFiles | NpzFile
    key: Callable[[Any], str]                  # the sample key of an item (resume and manifest key)
    record: Callable[[Any], str] = str         # what a user calls the item (its id or path), for failures
    batch_size: int = 1
    unit: str = "molecules"


@dataclass
class StageSummary:
    stage: str
    total: int | None
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    unit: str = "molecules"
    failures: str = ""                         # where the failure manifest is
    actors: int = 0
    retried: int = 0
    actors_replaced: int = 0

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        where = f"{self.actors} Ray actors" if self.actors else "in-process"
        return (f"{self.stage}: done {self.done}, skipped {self.skipped}, failed {self.failed} in "
                f"{self.seconds:.1f} s ({self.rate:.3f} {self.unit}/s, {where})")

    def to_dict(self) -> dict:
        return {**asdict(self), f"{self.unit}_per_s": round(self.rate, 4)}


# ---------------------------------------------------------------- the driver
def _batches(items: Iterable, n: int) -> Iterator[list]:
    batch: list = []
    for it in items:
        batch.append(it)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def _in_process(stage: Stage, batches: Iterable[list]) -> Iterator[tuple[list, BatchResult]]:
    worker = stage.worker(**stage.args)
    for batch in batches:
        try:
            yield batch, worker.process_batch(batch)
        except DiskFullError:  # not the molecules' fault: stop (a rerun resumes) rather than fail every one
            raise
        except Exception as e:  # a worker bug costs its batch, not the run
            reason = f"error: {type(e).__name__}: {e}"
            yield batch, BatchResult(failures=[Failure.of(stage.record(it), stage.name, reason, stage.key(it))
                                               for it in batch])


def _on_actors(stage: Stage, batches: Iterable[list], workers: Workers, stats: dict
               ) -> Iterator[tuple[list, BatchResult]]:
    from .pool import ActorPool
    held: dict[str, list] = {}

    def keyed():
        for i, b in enumerate(batches):
            held[f"batch{i}"] = b
            yield f"batch{i}", b

    pool = ActorPool(stage.worker, stage.args, size=workers.actors, cpus=workers.cpus, gpus=workers.gpus,
                     max_retries=workers.max_retries, method="process_batch",
                     placement_timeout_s=workers.placement_timeout_s)
    for key, value, error in pool.map(keyed()):
        batch = held.pop(key)
        if error is not None:
            value = BatchResult(failures=[Failure.of(stage.record(it), stage.name, error, stage.key(it))
                                          for it in batch])
        yield batch, value
    stats.update(retried=pool.stats.retried, actors_replaced=pool.stats.actors_replaced)


def _repeat(stage: Stage, items, it, i: int, key: str, seen: int | tuple[int, str]) -> Failure:
    """The ``read`` failure of item ``i``, whose key an earlier item of this run already had (``seen``: its
    index, or its index and record); its own manifest key (``<record>#record<i>``) leaves the first item's
    entry alone."""
    j, first = seen if isinstance(seen, tuple) else (seen, key)
    rec = stage.record(it)
    spec = getattr(items, "spec", None)  # a readers.Source names its input
    also = "" if first == rec else f" ({first!r}; both have the key {key!r})"
    return Failure.of(f"{rec}#record{i}", "read", f"{spec + ': ' if spec else ''}record {i} repeats the id "
                                                  f"{rec!r} of record {j}{also}; ids must be unique")


@contextlib.contextmanager
def opened(out: RunFolder | str | Path) -> Iterator[RunFolder]:
    """``out`` itself when it is a ``RunFolder`` (a command opened it); a path or URL, as Python callers pass,
    is opened here for the block (checks and lease included) and closed after it."""
    if isinstance(out, RunFolder):
        yield out
        return
    with RunFolder.open(out) as run:
        yield run


def run_stage(stage: Stage, items: Iterable, out: RunFolder | str | Path, workers: Workers | None = None, *,
              total: int | None = None, retry_failed: bool = False) -> StageSummary:
    """Run ``stage`` over ``items`` into the run folder ``out`` (see ``opened``); see the module docstring.
    ``InvalidRecord`` items (refused by a reader) are recorded as ``read`` failures and never reach a worker,
    and so is an item whose key an earlier item of this run already had (``_repeat``): a repeated id would
    overwrite or merge outputs."""
    with opened(out) as run:
        return _run_stage(stage, items, run, workers or Workers(), total, retry_failed)


def _run_stage(stage: Stage, items: Iterable, run: RunFolder, workers: Workers, total: int | None,
               retry_failed: bool) -> StageSummary:
    run.pull()  # a URL run: what earlier runs uploaded (the failure manifest)
    failures = run.failure_log(stage.sink.failures)
    prog = StageProgress(stage.name, total, None if isinstance(stage.sink, NpzFile) else run.progress_path,
                         unit=stage.unit)
    done = stage.sink.done_keys(run)
    skip = done | (set() if retry_failed else failures.keys())
    succeeded: set[str] = set()
    summary = StageSummary(stage.name, total, unit=stage.unit, actors=workers.actors,
                           failures=str(run.where(failures.name)))
    t0 = time.monotonic()

    # key -> index of the first item with it in this run, or (index, record) where its record is not its key:
    # the one collection of keys the driver keeps
    first: dict[str, int | tuple[int, str]] = {}

    def refuse(f: Failure) -> None:
        if f.key not in skip:
            summary.failed += failures.add([f])
            prog.update(failed=1)

    def todo():
        for i, it in enumerate(items):
            if isinstance(it, InvalidRecord):
                refuse(Failure.invalid(it))
                continue
            key = stage.key(it)
            if key in first:
                refuse(_repeat(stage, items, it, i, key, first[key]))
                continue
            rec = stage.record(it)
            first[key] = i if rec == key else (i, rec)
            if key in skip:
                summary.skipped += 1
                prog.update(skipped=1)
                continue
            yield it

    batches = _batches(todo(), stage.batch_size)  # progress: ``prog`` (a bar on a terminal, lines elsewhere)
    stats: dict = {}
    try:
        with stage.sink.open(run) as writer:
            runs = _on_actors(stage, batches, workers, stats) if workers.actors else _in_process(stage, batches)
            for _, res in runs:
                for s in res.samples:
                    writer.write(s)
                new = [s["__key__"] for s in res.samples] + list(res.done)
                succeeded.update(new)
                summary.done += len(new)
                summary.failed += failures.add(res.failures)
                prog.update(done=len(new), failed=len(res.failures))
    finally:
        failures.compact(succeeded)
        summary.seconds = round(time.monotonic() - t0, 3)
        summary.retried = stats.get("retried", 0)
        summary.actors_replaced = stats.get("actors_replaced", 0)
        prog.finish()
        run.push()
    return summary

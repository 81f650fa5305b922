"""What a stage worker hands back to the stage driver (``cluster.engine.run_stage``): typed, not strings.

A worker processes one batch of items and returns a ``BatchResult``: shard ``samples`` for the driver to write
(render, convert, fused), the ``done`` keys whose output the worker wrote itself (DFT result files), and one
``Failure`` per item it gave up on. Only the driver writes the failure manifest (``failures.jsonl``), one line
per ``Failure.to_json()``; readers use ``Failure.from_json``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidRecord
from .molecule import Molecule
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


# ---------------------------------------------------------------- the items of the molecule stages
def item_key(item) -> str:
    """The sample key of a stage item: a ``Molecule``, a DFT result path, or ``(Molecule, path)``."""
    if isinstance(item, tuple):
        item = item[0]
    if isinstance(item, Molecule):
        return sample_key(item.id)
    return Path(str(item)).stem


def item_record(item) -> str:
    """What a user calls a stage item (its molecule id or its file), for the failure manifest."""
    if isinstance(item, tuple):
        item = item[0]
    return item.id if isinstance(item, Molecule) else str(item)


# ---------------------------------------------------------------- a stage's declaration
@dataclass(frozen=True)
class StageSpec:
    """A stage of EDG, declared once in its own package as plain data (``dft/stage.py``, ``render/stage.py``),
    and listed in the one registry (``cluster/registry.py``) that the pipeline, ``--stop-after``, the ``ray:``
    config section and the commands iterate.

    Objects are named by reference (``"edg.dft.worker:DFTWorker"``, resolved by ``resolve``), so a declaration
    imports neither torch nor Ray nor ``cluster/``.

    ``name``        the step of ``edg pipeline`` (``--stop-after``, ``--force``, ``stages/<name>.json``)
    ``step``        ``step(pipeline) -> summary dict``: what the pipeline runs for it (a batch stage's step calls
                    ``pipeline.run_batch(spec, items, ...)``; the pipeline is passed in, never imported)
    ``config``      the type of its pipeline config section (a dataclass), if it has one; the section is
                    ``<section>:``, by default ``<name>:``
    ``worker``      a batch stage's worker: ``Worker(**args).process_batch(items) -> BatchResult``
    ``items``       what the worker takes, in words (for docs and ``--help``)
    ``sink``        where the outputs go: ``shards`` (the driver writes samples), ``result_files`` (the workers
                    write one file per item; ``done_keys`` lists the keys written) or ``npz`` (one file)
    ``output``      where a pipeline run keeps them, relative to the run folder (``dft``, ``shards/ed``)
    ``actors``      a batch stage's default Ray actors: it gets a ``ray: <name>:`` section (``Workers``)
    ``ray``         the ``ray:`` section whose workers it uses when not its own (student images: ``render``)
    """
    name: str
    step: str
    help: str = ""
    config: str | None = None
    section: str | None = None
    worker: str | None = None
    items: str = ""
    sink: str | None = None
    done_keys: str | None = None
    output: str = ""
    shard_prefix: str = "shard"
    actors: int | None = None
    ray: str | None = None

    @property
    def config_section(self) -> str | None:
        """The pipeline config section of this stage's ``config``, or None."""
        return (self.section or self.name) if self.config else None

    @property
    def ray_section(self) -> str | None:
        """The ``ray:`` section whose ``Workers`` this stage runs on, or None (not a batch stage)."""
        return self.ray or (self.name if self.actors is not None else None)


def resolve(ref: str):
    """The object named ``"package.module:attr[.attr]"`` (imported now)."""
    import importlib
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj

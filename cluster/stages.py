"""Stage runners shared by ``edg pipeline`` and the per-stage commands: each runs in this process or on a
pool of Ray actors (``cluster.pool.run_actor_pool``), resumes from what its output folder already holds, and
records failures in ``<out>/failures.jsonl``. ``out`` may be a folder or an fsspec URL: bulky outputs (result
files, shards) are uploaded whole by their writers, and the driver's own files (``failures.jsonl``,
``progress.json``) live in a ``Mirror`` that is pushed as they change.

* ``run_dft``: molecules -> ``<out>/fields/<key>.npz`` (DFTWorker).
* ``run_render``: DFT results and/or molecules -> shards with ED and structure images (RenderWorker).
* ``run_fused``: DFT then rendering in one actor (one GPU share): fields go from CuPy to torch by DLPack and
  never touch the host unless ``keep_fields``; only the shard sample comes back to the driver.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edg_core.errors import InvalidRecord
from edg_core.io import append_jsonl
from edg_core.molecule import Molecule
from edg_core.shards import ShardWriter, sample_key, shard_keys
from edg_core.storage import Mirror

from .metrics import StageProgress


@dataclass
class Workers:
    """How a stage runs: ``actors`` = 0 runs in this process; otherwise a pool of Ray actors, each with
    ``cpus`` CPUs and ``gpus`` (a fraction shares one GPU between several actors)."""
    actors: int = 0
    cpus: float = 1.0
    gpus: float = 0.0
    max_retries: int = 2


class _DriverFiles:
    """A stage driver's own files in ``out`` (a folder or a URL): ``failures.jsonl``, whose one writer it is,
    and ``progress.json``. Kept in a ``Mirror`` (pulled first, to resume); each failure is uploaded at once."""

    def __init__(self, stage: str, out, total: int | None, exclude: tuple[str, ...]):
        self.logs = Mirror(out, exclude=exclude, temporary=True)
        self.logs.pull()
        self.url = self.logs.url
        self.prog = StageProgress(stage, total, self.logs.local)

    def fail(self, *entries: dict) -> None:
        """Record failure entries ``{record, key, stage, reason}``."""
        for e in entries:
            append_jsonl(self.logs.local / "failures.jsonl", {**e, "time": time.time()})
        if entries:
            self.logs.commit("failures.jsonl")
            self.prog.update(failed=len(entries))

    def on_failure(self, stage: str):
        """A ``(key, reason, record=None)`` callback for molecules given up on (``run_actor_pool``'s)."""
        def record(key: str, reason: str, record: str | None = None) -> None:
            self.fail({"record": record or key, "key": key, "stage": stage, "reason": reason})
        return record

    def valid(self, records: Iterable) -> Iterator:
        """The records that are not ``InvalidRecord``; those are recorded as read failures."""
        for rec in records:
            if isinstance(rec, InvalidRecord):
                self.fail({"record": rec.record, "key": sample_key(rec.record), "stage": "read",
                           "reason": rec.problem})
                continue
            yield rec

    def keyed(self, records: Iterable) -> Iterator[tuple[str, Molecule]]:
        return ((sample_key(rec.id), rec) for rec in self.valid(records))

    def finish(self) -> dict:
        self.prog.write()
        self.logs.push()
        self.logs.close()
        return {**self.prog.summary(), "failures": str(self.logs.where("failures.jsonl"))}


# ---------------------------------------------------------------- DFT
def run_dft(records, out: str | Path, cfg, workers: Workers, total: int | None = None,
            retry_failed: bool = False) -> dict:
    """DFT for every record not finished (or failed, unless ``retry_failed``) in ``out``; returns a summary."""
    from dft.worker import STAGE, DFTWorker, done_keys, failed_keys
    driver = _DriverFiles("dft", out, total, exclude=("fields/*", "cubes/*"))
    out, prog = driver.url, driver.prog
    if workers.actors == 0:  # the worker is the one writer of failures.jsonl
        s = DFTWorker(cfg, out).run(records, total=total, retry_failed=retry_failed)
        prog.update(done=s.done, failed=s.failed, skipped=s.skipped)
    else:  # the actors only compute and upload results; this driver writes failures.jsonl
        from .pool import run_actor_pool
        skip = done_keys(out) | (set() if retry_failed else failed_keys(out))
        record = driver.on_failure(STAGE)

        def on_result(key, status):
            if status.get("status") == "done":
                prog.update(done=1)
            else:
                record(status["key"], status.get("reason", "?"), status.get("id"))
        s = run_actor_pool(DFTWorker, driver.keyed(records), ctor_args=(cfg, out, False, False),
                           done_keys=skip, num_actors=workers.actors, num_cpus=workers.cpus, num_gpus=workers.gpus,
                           max_retries=workers.max_retries, on_result=on_result, on_failure=record, total=total,
                           desc="dft (ray)")
        prog.skipped = s.skipped
    return driver.finish()


# ---------------------------------------------------------------- rendering
def molecule_and_fields(path: str | Path):
    """(molecule, Fields or None) from a DFT result file; the molecule carries the DFT labels E1..E6,
    ``dft_homo`` and ``dft_lumo`` (Hartree). Raises ``InvalidRecord`` for an unreadable file."""
    from dft.result import load_result
    from render.worker import Fields
    r = load_result(path)
    labels = dict(r.energies)
    labels.update(dft_homo=float(r.homo), dft_lumo=float(r.lumo))
    mol = Molecule(z=r.z, pos=r.pos, id=r.id, charge=r.charge, multiplicity=r.multiplicity, labels=labels)
    has_fields = r.ed is not None and r.esp is not None and r.grid is not None
    return mol, (Fields(r.grid, r.ed, r.esp) if has_fields else None)


class RenderActor:
    """A Ray actor (or plain object) rendering batches: items are lists of ``Molecule`` or DFT result paths."""

    def __init__(self, cfg, device: str | None = None, structure: bool = True, ed: bool = True,
                 keep_fields: bool = False):
        from render.worker import RenderWorker
        self.worker = RenderWorker(cfg, device=device, structure=structure, ed=ed, keep_fields=keep_fields)

    def process(self, batch: list) -> dict:
        mols, fields, failures = [], [], []
        for item in batch:
            if isinstance(item, Molecule):
                mols.append(item)
                fields.append(None)
                continue
            try:
                m, f = molecule_and_fields(item)
            except InvalidRecord as e:
                failures.append({"record": e.record, "key": Path(item).stem, "stage": "render",
                                 "reason": e.problem})
                continue
            mols.append(m)
            fields.append(f)
        res = self.worker.render(mols, fields) if mols else None
        return {"samples": res.samples if res else [], "failures": failures + (res.failures if res else [])}


def _batched(items: Iterable, n: int) -> Iterator[list]:
    batch = []
    for it in items:
        batch.append(it)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_results(writer: ShardWriter, driver: _DriverFiles, done: set):
    def on_result(key, value):
        for s in value["samples"]:
            writer.write(s)
            done.add(s["__key__"])
        driver.fail(*value["failures"])
        driver.prog.update(done=len(value["samples"]))
    return on_result


def run_render(items: Iterable, out: str | Path, cfg, workers: Workers, total: int | None = None,
               structure: bool = True, ed: bool = True, keep_fields: bool = False, maxcount: int = 1000,
               device: str | None = None) -> dict:
    """Render ``items`` (``Molecule`` records for structure images, or paths of DFT result files for ED +
    structure images) into shards in ``out`` (a folder or a URL); skips keys already in finished shards."""
    driver = _DriverFiles("render", out, total, exclude=("*.tar",))
    out, prog = driver.url, driver.prog
    done = shard_keys(out)

    def todo():
        for it in driver.valid(items):
            key = sample_key(it.id) if isinstance(it, Molecule) else Path(it).stem
            if key in done:
                prog.update(skipped=1)
                continue
            yield it

    batches = _batched(todo(), cfg.batch_size)
    with ShardWriter(out, "render", maxcount) as writer:
        on_result = _write_results(writer, driver, done)
        if workers.actors == 0:
            actor = RenderActor(cfg, device, structure, ed, keep_fields)
            from edg_core.io import progress
            n_batches = None if total is None else -(-total // cfg.batch_size)
            for b in progress(batches, f"render -> {out}", total=n_batches):
                on_result(None, actor.process(b))
        else:
            from .pool import run_actor_pool
            in_batch: dict[str, list[str]] = {}  # batch key -> sample keys, to name them if the batch fails

            def keyed():
                for i, b in enumerate(batches):
                    in_batch[f"batch{i}"] = [sample_key(m.id) if isinstance(m, Molecule) else Path(m).stem for m in b]
                    yield f"batch{i}", b

            def on_batch_result(key, value):
                in_batch.pop(key, None)
                on_result(key, value)

            def on_batch_failure(key, reason):
                record = driver.on_failure("render")
                for k in in_batch.pop(key, []):
                    record(k, reason)
            run_actor_pool(RenderActor, keyed(), ctor_args=(cfg, device, structure, ed, keep_fields),
                           num_actors=workers.actors, num_cpus=workers.cpus, num_gpus=workers.gpus,
                           max_retries=workers.max_retries, on_result=on_batch_result,
                           on_failure=on_batch_failure, desc="render (ray)")
    return driver.finish()


# ---------------------------------------------------------------- fused DFT + render on one device
class FusedActor:
    """DFT then rendering of one molecule in one process: on GPU the ED/ESP grids stay on the device
    (CuPy -> torch by DLPack, ``dft.handoff.cupy_to_torch``); the DFT scalars are written to
    ``<dft_out>/fields/<key>.npz`` (a folder or a URL; with the fields only when ``keep_fields``) and the
    shard sample (molecule, labels E1..E6, ED and structure images) is returned to the driver."""

    def __init__(self, dft_cfg, render_cfg, dft_out: str, keep_fields: bool = False, device: str | None = None):
        from dft.worker import DFTWorker
        from render.worker import RenderWorker
        self.dft = DFTWorker(dft_cfg, dft_out, keep_on_gpu=True, record_failures=False)
        self.keep_fields = keep_fields
        self.render = RenderWorker(render_cfg, device=device, keep_fields=keep_fields)

    def process(self, mol: Molecule) -> dict:
        import dataclasses

        from dft.handoff import cupy_to_torch
        from render.worker import Fields
        status = self.dft.process(mol, write=False)
        if status["status"] != "done":
            return {"samples": [], "failures": [{"record": mol.id, "key": status["key"], "stage": "dft",
                                                 "reason": status["reason"]}]}
        r = status["result"]
        fields = Fields(r.grid, cupy_to_torch(r.ed), cupy_to_torch(r.esp))
        labels = {**mol.labels, **r.energies, "dft_homo": float(r.homo), "dft_lumo": float(r.lumo)}
        rec = dataclasses.replace(mol, labels=labels)
        res = self.render.render([rec], [fields])
        kept = r if self.keep_fields else dataclasses.replace(r, ed=None, esp=None)
        self.dft.write(status["key"], kept)
        return {"samples": res.samples, "failures": res.failures}


def run_fused(records, out: str | Path, dft_out: str | Path, dft_cfg, render_cfg, workers: Workers,
              total: int | None = None, keep_fields: bool = False, maxcount: int = 1000) -> dict:
    """DFT + rendering per molecule (``FusedActor``) into shards in ``out``; resumable by shard keys.
    ``out`` and ``dft_out`` may be folders or URLs."""
    driver = _DriverFiles("dft+render", out, total, exclude=("*.tar",))
    out, dft_out, prog = driver.url, str(dft_out), driver.prog
    done = shard_keys(out)
    with ShardWriter(out, "render", maxcount) as writer:
        on_result = _write_results(writer, driver, done)
        items = driver.keyed(records)
        if workers.actors == 0:
            actor = FusedActor(dft_cfg, render_cfg, dft_out, keep_fields)
            from edg_core.io import progress
            for key, mol in progress(items, "dft+render", total=total):
                if key in done:
                    prog.update(skipped=1)
                    continue
                on_result(key, actor.process(mol))
        else:
            from .pool import run_actor_pool
            s = run_actor_pool(FusedActor, items, ctor_args=(dft_cfg, render_cfg, dft_out, keep_fields),
                               done_keys=done, num_actors=workers.actors, num_cpus=workers.cpus,
                               num_gpus=workers.gpus, max_retries=workers.max_retries, on_result=on_result,
                               on_failure=driver.on_failure("dft+render"), total=total,
                               desc="dft+render (ray)")
            prog.skipped = s.skipped
    return driver.finish()

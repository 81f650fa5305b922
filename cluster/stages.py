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

import logging
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

log = logging.getLogger(__name__)


@dataclass
class Workers:
    """How a stage runs: ``actors`` = 0 runs in this process; otherwise a pool of Ray actors, each with
    ``cpus`` CPUs and ``gpus`` (a fraction shares one GPU between several actors)."""
    actors: int = 0
    cpus: float = 1.0
    gpus: float = 0.0
    max_retries: int = 2


def _read_failure(failures: Path, rec: InvalidRecord) -> None:
    append_jsonl(failures, {"record": rec.record, "key": sample_key(rec.record), "stage": "read",
                            "reason": rec.problem, "time": time.time()})


def _keyed(records: Iterable, failures: Path, prog: StageProgress) -> Iterator[tuple[str, Molecule]]:
    for rec in records:
        if isinstance(rec, InvalidRecord):
            _read_failure(failures, rec)
            prog.update(failed=1)
            continue
        yield sample_key(rec.id), rec


def _on_failure(failures: Path, stage: str, prog: StageProgress, logs: Mirror | None = None):
    def record(key: str, reason: str, record: str | None = None) -> None:
        append_jsonl(failures, {"record": record or key, "key": key, "stage": stage, "reason": reason,
                                "time": time.time()})
        prog.update(failed=1)
        if logs is not None:
            logs.commit(failures.name)
    return record


def _driver_files(out, exclude: tuple[str, ...]) -> Mirror:
    """The driver's working copy of ``out`` for its failure manifest and progress file (pulled, to resume)."""
    logs = Mirror(out, exclude=exclude, temporary=True)
    logs.pull()
    return logs


# ---------------------------------------------------------------- DFT
def run_dft(records, out: str | Path, cfg, workers: Workers, total: int | None = None,
            retry_failed: bool = False) -> dict:
    """DFT for every record not finished (or failed, unless ``retry_failed``) in ``out``; returns a summary."""
    from dft.worker import STAGE, DFTWorker, done_keys, failed_keys
    logs = _driver_files(out, ("fields/*", "cubes/*"))
    out = logs.url
    prog = StageProgress("dft", total, logs.local)
    if workers.actors == 0:  # the worker is the one writer of failures.jsonl
        s = DFTWorker(cfg, out).run(records, total=total, retry_failed=retry_failed)
        prog.update(done=s.done, failed=s.failed, skipped=s.skipped)
    else:  # the actors only compute and upload results; this driver writes failures.jsonl
        from .pool import run_actor_pool
        failures = logs.local / "failures.jsonl"
        skip = done_keys(out) | (set() if retry_failed else failed_keys(out))
        record = _on_failure(failures, STAGE, prog, logs)

        def on_result(key, status):
            if status.get("status") == "done":
                prog.update(done=1)
            else:
                record(status["key"], status.get("reason", "?"), status.get("id"))
        s = run_actor_pool(DFTWorker, _keyed(records, failures, prog), ctor_args=(cfg, out, False, False),
                           done_keys=skip, num_actors=workers.actors, num_cpus=workers.cpus, num_gpus=workers.gpus,
                           max_retries=workers.max_retries, on_result=on_result, on_failure=record, total=total,
                           desc="dft (ray)")
        prog.skipped = s.skipped
    prog.write()
    logs.push()
    return {**prog.summary(), "failures": str(logs.where("failures.jsonl"))}


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


def _write_results(writer: ShardWriter, logs: Mirror, prog: StageProgress, done: set):
    def on_result(key, value):
        for s in value["samples"]:
            writer.write(s)
            done.add(s["__key__"])
        for f in value["failures"]:
            append_jsonl(logs.local / "failures.jsonl", {**f, "time": time.time()})
        if value["failures"]:
            logs.commit("failures.jsonl")
        prog.update(done=len(value["samples"]), failed=len(value["failures"]))
    return on_result


def run_render(items: Iterable, out: str | Path, cfg, workers: Workers, total: int | None = None,
               structure: bool = True, ed: bool = True, keep_fields: bool = False, maxcount: int = 1000,
               device: str | None = None) -> dict:
    """Render ``items`` (``Molecule`` records for structure images, or paths of DFT result files for ED +
    structure images) into shards in ``out`` (a folder or a URL); skips keys already in finished shards."""
    logs = _driver_files(out, ("*.tar",))
    out = logs.url
    failures = logs.local / "failures.jsonl"
    done = shard_keys(out)
    prog = StageProgress("render", total, logs.local)

    def todo():
        for it in items:
            if isinstance(it, InvalidRecord):
                _read_failure(failures, it)
                prog.update(failed=1)
                continue
            key = sample_key(it.id) if isinstance(it, Molecule) else Path(it).stem
            if key in done:
                prog.update(skipped=1)
                continue
            yield it

    batches = _batched(todo(), cfg.batch_size)
    with ShardWriter(out, "render", maxcount) as writer:
        on_result = _write_results(writer, logs, prog, done)
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
                record = _on_failure(failures, "render", prog, logs)
                for k in in_batch.pop(key, []):
                    record(k, reason)
            run_actor_pool(RenderActor, keyed(), ctor_args=(cfg, device, structure, ed, keep_fields),
                           num_actors=workers.actors, num_cpus=workers.cpus, num_gpus=workers.gpus,
                           max_retries=workers.max_retries, on_result=on_batch_result,
                           on_failure=on_batch_failure, desc="render (ray)")
    prog.write()
    logs.push()
    return {**prog.summary(), "failures": str(logs.where("failures.jsonl"))}


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
    logs = _driver_files(out, ("*.tar",))
    out, dft_out = logs.url, str(dft_out)
    failures = logs.local / "failures.jsonl"
    done = shard_keys(out)
    prog = StageProgress("dft+render", total, logs.local)
    with ShardWriter(out, "render", maxcount) as writer:
        on_result = _write_results(writer, logs, prog, done)
        items = _keyed(records, failures, prog)
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
                               on_failure=_on_failure(failures, "dft+render", prog, logs), total=total,
                               desc="dft+render (ray)")
            prog.skipped = s.skipped
    prog.write()
    logs.push()
    return {**prog.summary(), "failures": str(logs.where("failures.jsonl"))}

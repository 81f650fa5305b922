"""Every batch stage of EDG, declared once and run by the one driver (``cluster.engine.run_stage``).

* ``dft``: ``Molecule`` items -> ``dft.worker.DFTWorker`` -> ``<out>/fields/<pp>/<key>.npz``, written by the
  workers themselves (``ResultFiles``).
* ``render``: ``Molecule`` (structure images), a DFT result path (ED + structure images) or
  ``(Molecule, result path)`` -> ``RenderActor`` -> shards.
* ``dft+render`` (fused): ``Molecule`` -> ``FusedActor`` -> shards (+ the DFT scalars as result files).
* ``convert``: ``Molecule`` -> ``ConvertWorker`` -> shards (molecule and labels, no images).
* ``extract imageed`` / ``extract teacher``: raw shard samples -> ``train.extract.FeatureExtractor`` /
  ``train.extract.TargetExtractor`` -> shards with ``fu.npy`` / ``fs.npy`` + ``edp.npy``, or one ``.npz``.

``edg dft``, ``edg render``, ``edg data convert``, ``edg extract`` and ``edg pipeline`` all call the ``run_*``
functions below, so each runs in this process or on Ray actors the same way (``Workers``),
resumes from what ``out`` (a folder or an fsspec URL) already holds, and records typed failures.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from edg.edg_core.errors import InvalidRecord
from edg.edg_core.molecule import Molecule
from edg.edg_core.shards import encode_sample, sample_key
from edg.edg_core.stage import BatchResult, Failure

from .engine import NpzFile, ResultFiles, Shards, Stage, StageSummary, Workers, run_stage

__all__ = ["Workers", "StageSummary", "run_dft", "run_render", "run_fused", "run_convert", "run_extract",
           "molecule_and_fields", "item_key", "item_record"]


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


# ---------------------------------------------------------------- DFT
def run_dft(records: Iterable, out: str | Path, cfg, workers: Workers, total: int | None = None,
            retry_failed: bool = False) -> StageSummary:
    """DFT for every record not finished (or failed, unless ``retry_failed``) in ``out``."""
    from edg.dft.worker import DFTWorker, done_keys, remove_interrupted_writes
    remove_interrupted_writes(out)
    stage = Stage("dft", DFTWorker, {"cfg": cfg, "out": str(out)},
                  ResultFiles(done_keys, bulky=("fields/*", "cubes/*")), key=item_key, record=item_record)
    return run_stage(stage, records, out, workers, total=total, retry_failed=retry_failed)


# ---------------------------------------------------------------- rendering
def molecule_and_fields(path: str | Path):
    """(molecule, Fields or None) from a DFT result file; the molecule carries the DFT labels E1..E6,
    ``dft_homo`` and ``dft_lumo`` (Hartree). Raises ``InvalidRecord`` for an unreadable file."""
    from edg.dft.result import load_result
    from edg.render.worker import Fields
    r = load_result(path)
    labels = dict(r.energies)
    labels.update(dft_homo=float(r.homo), dft_lumo=float(r.lumo))
    mol = Molecule(z=r.z, pos=r.pos, id=r.id, charge=r.charge, multiplicity=r.multiplicity, labels=labels)
    has_fields = r.ed is not None and r.esp is not None and r.grid is not None
    return mol, (Fields(r.grid, r.ed, r.esp) if has_fields else None)


class RenderActor:
    """Renders batches of stage items (see ``item_key``): a ``Molecule`` gets structure images, a DFT result
    path ED + structure images, ``(Molecule, path)`` both with the input's labels kept beside the DFT labels."""

    def __init__(self, cfg, device: str | None = None, structure: bool = True, ed: bool = True,
                 keep_fields: bool = False):
        from edg.render.worker import RenderWorker
        self.worker = RenderWorker(cfg, device=device, structure=structure, ed=ed, keep_fields=keep_fields)

    @staticmethod
    def load(item):
        """(molecule, Fields or None) of a stage item."""
        if isinstance(item, Molecule):
            return item, None
        if isinstance(item, tuple):
            rec, path = item
            mol, fields = molecule_and_fields(path)
            return dataclasses.replace(mol, labels={**rec.labels, **mol.labels}, smiles=rec.smiles), fields
        return molecule_and_fields(item)

    def process_batch(self, batch: list) -> BatchResult:
        mols, fields, failures = [], [], []
        for item in batch:
            try:
                m, f = self.load(item)
            except InvalidRecord as e:
                failures.append(Failure.of(e.record, "render", e.problem, item_key(item)))
                continue
            mols.append(m)
            fields.append(f)
        res = self.worker.render(mols, fields) if mols else BatchResult()
        return BatchResult(samples=res.samples, failures=failures + res.failures)


def run_render(items: Iterable, out: str | Path, cfg, workers: Workers, total: int | None = None,
               structure: bool = True, ed: bool = True, keep_fields: bool = False, maxcount: int = 1000,
               device: str | None = None, prefix: str = "render") -> StageSummary:
    """Render ``items`` (see ``RenderActor``) into shards in ``out`` (a folder or a URL); keys already in
    finished shards are skipped."""
    stage = Stage("render", RenderActor, {"cfg": cfg, "device": device, "structure": structure, "ed": ed,
                                          "keep_fields": keep_fields},
                  Shards(prefix, maxcount), key=item_key, record=item_record, batch_size=cfg.batch_size)
    return run_stage(stage, items, out, workers, total=total)


# ---------------------------------------------------------------- fused DFT + render on one device
class FusedActor:
    """DFT then rendering of one molecule in one process: on GPU the ED/ESP grids stay on the device
    (CuPy -> torch by DLPack, ``dft.handoff.cupy_to_torch``); the DFT scalars are written to
    ``<dft_out>/fields/**/<key>.npz`` (a folder or a URL; with the fields only when ``keep_fields``) and the
    shard sample (molecule, labels E1..E6, ED and structure images) goes back to the driver. With
    ``dft.fields`` off there are no grids to hand over: the sample has structure images only."""

    def __init__(self, dft_cfg, render_cfg, dft_out: str, keep_fields: bool = False, device: str | None = None):
        from edg.dft.worker import DFTWorker
        from edg.render.worker import RenderWorker
        self.dft = DFTWorker(dft_cfg, dft_out, keep_on_gpu=True)
        self.keep_fields = keep_fields
        self.render = RenderWorker(render_cfg, device=device, keep_fields=keep_fields)

    def process_batch(self, mols: list[Molecule]) -> BatchResult:
        res = BatchResult()
        for mol in mols:
            res += self._one(mol)
        return res

    def _one(self, mol: Molecule) -> BatchResult:
        from edg.dft.handoff import cupy_to_torch
        from edg.render.worker import Fields
        status = self.dft.process(mol, write=False)
        if status["status"] != "done":
            return BatchResult(failures=[Failure.of(mol.id, "dft", status["reason"], status["key"])])
        r = status["result"]
        fields = None
        if r.ed is not None and r.esp is not None:
            fields = Fields(r.grid, cupy_to_torch(r.ed), cupy_to_torch(r.esp))
        labels = {**mol.labels, **r.energies, "dft_homo": float(r.homo), "dft_lumo": float(r.lumo)}
        out = self.render.render([dataclasses.replace(mol, labels=labels)], [fields])
        kept = r if self.keep_fields else dataclasses.replace(r, ed=None, esp=None)
        self.dft.write(status["key"], kept)
        return out


def run_fused(records: Iterable, out: str | Path, dft_out: str | Path, dft_cfg, render_cfg, workers: Workers,
              total: int | None = None, keep_fields: bool = False, maxcount: int = 1000) -> StageSummary:
    """DFT + rendering per molecule (``FusedActor``) into shards in ``out``; resumable by shard keys.
    ``out`` and ``dft_out`` may be folders or URLs."""
    stage = Stage("dft+render", FusedActor, {"dft_cfg": dft_cfg, "render_cfg": render_cfg,
                                              "dft_out": str(dft_out), "keep_fields": keep_fields},
                  Shards("render", maxcount), key=item_key, record=item_record)
    return run_stage(stage, records, out, workers, total=total)


# ---------------------------------------------------------------- conversion to shards
class ConvertWorker:
    """Molecules (with their labels) -> shard samples, no images."""

    def process_batch(self, mols: list[Molecule]) -> BatchResult:
        res = BatchResult()
        for m in mols:
            try:
                res.samples.append(encode_sample(m))
            except (InvalidRecord, ValueError) as e:
                res.failures.append(Failure.of(m.id, "convert", f"{type(e).__name__}: {e}"))
        return res


def run_convert(records: Iterable, out: str | Path, workers: Workers, total: int | None = None,
                prefix: str = "shard", maxcount: int = 1000, maxsize: int = 1 << 30) -> StageSummary:
    """Write every record of ``records`` as a shard sample in ``out`` (a folder or a URL); resumable."""
    stage = Stage("convert", ConvertWorker, {}, Shards(prefix, maxcount, maxsize), key=item_key,
                  record=item_record, batch_size=256)
    return run_stage(stage, records, out, workers, total=total)


# ---------------------------------------------------------------- a trained model over existing shards
def run_extract(kind: str, model, shards, out: str | Path, workers: Workers | None = None, *,
                batch_size: int = 64, device: str | None = None, bf16: bool | None = None,
                drop_images: bool = False) -> StageSummary:
    """Run a trained model once per shard sample and store its outputs: ``kind`` ``imageed`` (F_U from ED
    images, ``train.extract.FeatureExtractor``) or ``teacher`` (F_S and EDP(F_S) from structure images,
    ``train.extract.TargetExtractor``). ``model``: the model or its checkpoint path (a path for Ray actors).
    ``out``: a shard folder or URL (every input sample copied with the new ``.npy`` members; resumable) or a
    path ending in ``.npz`` (``ids`` plus one array per output)."""
    from edg.edg_core.errors import EDGError
    from edg.train.data.shards import raw_samples
    if kind == "imageed":
        from edg.train.extract import FeatureExtractor as worker
    elif kind == "teacher":
        from edg.train.extract import TargetExtractor as worker
    else:
        raise EDGError(f"extract: unknown model kind {kind!r}; use imageed or teacher")
    args = {"model": model, "device": device, "drop_images": drop_images}
    if bf16 is not None:
        args["bf16"] = bf16
    sink = NpzFile() if str(out).endswith(".npz") else Shards("shard", maxcount=1000)
    stage = Stage(f"extract {kind}", worker, args, sink, key=lambda raw: raw["__key__"],
                  record=lambda raw: f"{raw.get('__url__', '?')}:{raw['__key__']}", batch_size=batch_size,
                  unit="samples")
    return run_stage(stage, raw_samples(shards), out, workers or Workers())

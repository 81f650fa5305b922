"""The batch stages of EDG run by the one driver (``cluster.engine.run_stage``): a stage declared in its package
(``StageSpec``: ``dft/stage.py``, ``render/stage.py``) becomes a runnable ``Stage`` with ``batch_stage``.

* ``dft``: ``Molecule`` items -> ``dft.worker.DFTWorker`` -> ``<out>/fields/<pp>/<key>.npz``, written by the
  workers themselves (``ResultFiles``).
* ``render``: ``Molecule`` (structure images), a DFT result path (ED + structure images) or
  ``(Molecule, result path)`` -> ``render.stage.RenderActor`` -> shards.
* ``dft+render`` (fused): ``Molecule`` -> ``FusedActor`` -> shards (+ the DFT scalars as result files).
* ``convert``: ``Molecule`` -> ``ConvertWorker`` -> shards (molecule and labels, no images).
* ``extract imageed`` / ``extract teacher``: raw shard samples -> ``train.extract.FeatureExtractor`` /
  ``train.extract.TargetExtractor`` -> shards with ``fu.npy`` / ``fs.npy`` + ``edp.npy``, or one ``.npz``.

``edg dft``, ``edg render``, ``edg data convert``, ``edg extract`` and ``edg pipeline`` all call the ``run_*``
functions below (or ``batch_stage``), so each runs in this process or on Ray actors the same way
(``Workers``), resumes from what its run folder ``out`` (a ``RunFolder`` a command opened, or a folder or
fsspec URL that the driver opens for the stage) already holds, and records typed failures. ``run_items`` is the
entry for records from a source: on Ray actors, a source its dataset cuts into byte ranges (``pcqm4mv2``) is
read by the actors themselves, each its own part (``cluster.parts``), not by the driver.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from edg.edg_core.errors import InvalidRecord
from edg.edg_core.molecule import Molecule
from edg.edg_core.run_folder import DFTLayout, RunFolder, RunWriter
from edg.edg_core.shards import encode_sample
from edg.edg_core.stage import BatchResult, Failure, StageSpec, item_key, item_record, resolve
from edg.render.stage import RenderActor, molecule_and_fields

from .engine import NpzFile, ResultFiles, Shards, Stage, StageSummary, Workers, opened, run_stage

__all__ = ["Workers", "StageSummary", "batch_stage", "run_items", "run_dft", "run_render", "run_fused", "run_convert",
           "run_extract", "molecule_and_fields", "item_key", "item_record", "RenderActor"]


def run_items(stage: Stage, items: Iterable, out: RunFolder | str | Path, workers: Workers | None = None, *,
              total: int | None = None, retry_failed: bool = False) -> StageSummary:
    """``run_stage``, except that ``items`` from a source whose dataset cuts into parts (``pcqm4mv2``), on Ray
    actors, go out as parts that each actor reads itself (``cluster.parts.run_parts``)."""
    from .parts import plan, run_parts
    workers = workers or Workers()
    parts = plan(items, workers, stage.name)
    if parts is None:
        return run_stage(stage, items, out, workers, total=total, retry_failed=retry_failed)
    return run_parts(stage, parts, out, workers, retry_failed=retry_failed)


def batch_stage(spec: StageSpec, args: dict, batch_size: int = 1, maxcount: int = 1000,
                prefix: str | None = None) -> Stage:
    """The runnable ``Stage`` of a declared batch stage: its worker class, ``args`` for the worker's
    constructor, and its sink (``shards``: ``<prefix>-NNNNNN.tar`` of ``maxcount`` samples; ``result_files``:
    the keys its ``done_keys`` lists)."""
    if spec.sink == "shards":
        sink = Shards(prefix or spec.shard_prefix, maxcount)
    elif spec.sink == "result_files":
        sink = ResultFiles(resolve(spec.done_keys))
    else:
        raise ValueError(f"stage {spec.name}: sink {spec.sink!r} is not a batch sink (shards, result_files)")
    return Stage(spec.name, resolve(spec.worker), args, sink, key=item_key, record=item_record,
                 batch_size=batch_size)


# ---------------------------------------------------------------- DFT
def run_dft(records: Iterable, out: RunFolder | str | Path, cfg, workers: Workers, total: int | None = None,
            retry_failed: bool = False) -> StageSummary:
    """DFT for every record not finished (or failed, unless ``retry_failed``) in the run folder ``out``."""
    from edg.dft.stage import DFT
    with opened(out) as run:
        run.remove_interrupted_writes(DFTLayout.FIELDS)
        return run_items(batch_stage(DFT, {"cfg": cfg, "out": run.writer()}), records, run, workers, total=total,
                         retry_failed=retry_failed)


# ---------------------------------------------------------------- rendering
def run_render(items: Iterable, out: RunFolder | str | Path, cfg, workers: Workers, total: int | None = None,
               structure: bool = True, ed: bool = True, keep_fields: bool = False, maxcount: int = 1000,
               device: str | None = None, prefix: str = "render") -> StageSummary:
    """Render ``items`` (see ``render.stage.RenderActor``) into shards in the run folder ``out``; keys already
    in finished shards are skipped."""
    from edg.render.stage import RENDER, worker_args
    stage = batch_stage(RENDER, worker_args(cfg, device, structure, ed, keep_fields), batch_size=cfg.batch_size,
                        maxcount=maxcount, prefix=prefix)
    return run_stage(stage, items, out, workers, total=total)


# ---------------------------------------------------------------- fused DFT + render on one device
class FusedActor:
    """DFT then rendering of one molecule in one process: on GPU the ED/ESP grids stay on the device
    (CuPy -> torch by DLPack, ``dft.handoff.cupy_to_torch``); the DFT scalars are written to
    ``<dft_out>/fields/**/<key>.npz`` (a folder or a URL; with the fields only when ``keep_fields``) and the
    shard sample (molecule, labels E1..E6, ED and structure images) goes back to the driver. With
    ``dft.fields`` off there are no grids to hand over: the sample has structure images only."""

    def __init__(self, dft_cfg, render_cfg, dft_out: RunWriter, keep_fields: bool = False,
                 device: str | None = None):
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


def run_fused(records: Iterable, out: RunFolder | str | Path, dft_out: RunFolder | str | Path, dft_cfg, render_cfg,
              workers: Workers, total: int | None = None, keep_fields: bool = False,
              maxcount: int = 1000) -> StageSummary:
    """DFT + rendering per molecule (``FusedActor``) into shards in the run folder ``out``; resumable by shard
    keys. ``dft_out``: where the DFT scalars go (a run folder, normally ``run.child("dft")``, or a folder/URL)."""
    writer = dft_out.writer() if isinstance(dft_out, RunFolder) else RunWriter(str(dft_out))
    stage = Stage("dft+render", FusedActor, {"dft_cfg": dft_cfg, "render_cfg": render_cfg,
                                              "dft_out": writer, "keep_fields": keep_fields},
                  Shards("render", maxcount), key=item_key, record=item_record)
    return run_items(stage, records, out, workers, total=total)


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


def run_convert(records: Iterable, out: RunFolder | str | Path, workers: Workers, total: int | None = None,
                prefix: str = "shard", maxcount: int = 1000, maxsize: int = 1 << 30) -> StageSummary:
    """Write every record of ``records`` as a shard sample in ``out`` (a folder or a URL); resumable. On Ray
    actors a ``pcqm4mv2`` source is read by the actors, each its own byte range (``run_items``)."""
    stage = Stage("convert", ConvertWorker, {}, Shards(prefix, maxcount, maxsize), key=item_key,
                  record=item_record, batch_size=256)
    return run_items(stage, records, out, workers, total=total)


# ---------------------------------------------------------------- a trained model over existing shards
def run_extract(kind: str, model, shards, out: RunFolder | str | Path, workers: Workers | None = None, *,
                batch_size: int = 64, device: str | None = None, bf16: bool | None = None,
                drop_images: bool = False, file: str | None = None) -> StageSummary:
    """Run a trained model once per shard sample and store its outputs: ``kind`` ``imageed`` (F_U from ED
    images, ``train.extract.FeatureExtractor``) or ``teacher`` (F_S and EDP(F_S) from structure images,
    ``train.extract.TargetExtractor``). ``model``: the model or its checkpoint path (a path for Ray actors).
    ``out``: a run folder (or folder/URL) of shards (every input sample copied with the new ``.npy`` members;
    resumable), or with ``file`` the one ``.npz`` ``<out>/<file>`` (``ids`` plus one array per output); a path
    ending in ``.npz`` means its parent folder and that file."""
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
    if file is None and not isinstance(out, RunFolder) and str(out).endswith(".npz"):
        folder, _, file = str(out).rpartition("/")  # the folder holding the file is the run folder
        out = folder or ("/" if str(out).startswith("/") else ".")
    sink = NpzFile(file) if file else Shards("shard", maxcount=1000)
    stage = Stage(f"extract {kind}", worker, args, sink, key=lambda raw: raw["__key__"],
                  record=lambda raw: f"{raw.get('__url__', '?')}:{raw['__key__']}", batch_size=batch_size,
                  unit="samples")
    if file and not isinstance(out, RunFolder):  # one file in a folder that may hold anything else
        with RunFolder.open(out, overwrite=True) as run:
            return run_stage(stage, raw_samples(shards), run, workers or Workers())
    return run_stage(stage, raw_samples(shards), out, workers or Workers())

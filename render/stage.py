"""The render stage, declared once (``edg_core.stage.StageSpec``; listed in ``cluster/registry.py``), and its
batch worker ``RenderActor``, which loads each item (a molecule, a DFT result file, or both) and renders it.

Items in: a ``Molecule`` (structure images), a DFT result path (ED + structure images) or ``(Molecule, path)``;
shard samples out (``<run>/render-NNNNNN.tar``). Imports neither Ray nor ``cluster/`` (nor torch until a worker
is built).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from edg.edg_core.errors import InvalidRecord
from edg.edg_core.molecule import Molecule
from edg.edg_core.stage import BatchResult, Failure, StageSpec, item_key


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
    path ED + structure images, ``(Molecule, path)`` both with the input's labels kept beside the DFT labels,
    ``(Molecule, field reference)`` (a dataset that carries its densities, e.g. EDBench's cubes) both, without
    DFT."""

    def __init__(self, cfg, device: str | None = None, structure: bool = True, ed: bool = True,
                 keep_fields: bool = False):
        from edg.render.worker import RenderWorker
        self.worker = RenderWorker(cfg, device=device, structure=structure, ed=ed, keep_fields=keep_fields)

    @staticmethod
    def load(item):
        """(molecule, Fields or None) of a stage item."""
        if isinstance(item, Molecule):
            return item, None
        if isinstance(item, tuple) and hasattr(item[1], "load"):  # (Molecule, a dataset's field reference)
            return item[0], item[1].load(item[0])
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


def items(input_spec: str | None, fields: str | None):
    """(items, count) of a render run: the molecules of ``input_spec`` (structure images), the DFT result files
    of the DFT output ``fields`` (a folder or URL; ED + structure images, in natural id order), or
    (molecule, result file) pairs when both are given (the input's labels kept). A molecule of the input with
    no result in ``fields`` is an ``InvalidRecord`` item (the driver records it)."""
    from edg.dft.worker import find_result, result_files
    from edg.edg_core.errors import DataSourceError
    from edg.edg_core.readers import open_source
    from edg.edg_core.run_folder import DFTLayout
    from edg.edg_core.shards import sample_key
    from edg.edg_core.storage import exists, join
    if fields is None:
        src = open_source(input_spec)
        from edg.edg_core.datasets import dataset_of, resolve
        ds = dataset_of(input_spec)
        if ds is not None and ds.fields is not None:  # densities shipped with the data (EDBench cubes): no DFT
            return ds.field_items(resolve(input_spec)), len(src)
        return iter(src), len(src)
    if not exists(join(fields, DFTLayout.FIELDS)):
        raise DataSourceError(f"{fields}: no {DFTLayout.FIELDS}/ folder; run `edg dft --out {fields}` first")
    if input_spec:
        src = open_source(input_spec)

        def pairs():
            for rec in src:
                if isinstance(rec, InvalidRecord):
                    yield rec
                    continue
                path = find_result(fields, sample_key(rec.id))
                yield InvalidRecord(rec.id, f"no DFT result in {fields}") if path is None else (rec, str(path))
        return pairs(), len(src)
    from edg.render.contact_sheet import natural_key
    paths = sorted(result_files(fields), key=lambda p: natural_key(str(p).rsplit("/", 1)[-1]))  # qm9:2 < qm9:10
    return iter(paths), len(paths)


def worker_args(cfg, device: str | None = None, structure: bool = True, ed: bool = True,
                keep_fields: bool = False) -> dict:
    """The keyword arguments of ``RenderActor``."""
    return {"cfg": cfg, "device": device, "structure": structure, "ed": ed, "keep_fields": keep_fields}


def pipeline_step(p) -> dict:
    """``edg pipeline``'s render step (``p``: the ``cluster.pipeline.Pipeline``): ED + structure images of every
    DFT result of the run into ``shards/ed`` (done by the DFT step when ``fused``), and the contact sheet."""
    if p.cfg.fused:
        summary = {"fused": True}
    else:
        from edg.dft.worker import result_files  # nested fields/<pp>/<key>.npz, and flat (older runs)
        paths = result_files(p.folder("dft").where())
        summary = p.run_batch(RENDER, paths, worker_args(p.cfg.render, p.cfg.device, keep_fields=p.cfg.keep_fields),
                              total=len(paths), batch_size=p.cfg.render.batch_size)
    summary["contact_sheet"] = str(p.contact_sheet())
    return summary


RENDER = StageSpec(
    name="render", step="edg.render.stage:pipeline_step",
    help="ED images (6 views) and structure images (4 views) into shards",
    config="edg.render.config:RenderConfig", worker="edg.render.stage:RenderActor",
    items="a Molecule, a DFT result path, or (Molecule, path)", sink="shards", shard_prefix="render",
    output="shards/ed", actors=1)

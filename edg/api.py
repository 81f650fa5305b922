"""EDG's public Python API, in one place. Everything here keeps its name across releases; the modules behind
it (``edg.train.io.predict``, ``edg.render.renderer``, ...) may move.

Reading molecules::

    from edg.api import open_source, Molecule
    mols = [m for m in open_source("embedded:qm9?limit=2")]

Datasets and specs (one grammar for records and tasks; a new dataset is one ``register_dataset(Dataset(...))``)::

    from edg.api import parse_spec, DATASETS, build_task
    spec = parse_spec("rmd17:ethanol?root=embedded&split=test")   # str(spec) is the canonical spelling

A trained student (a run folder of ``edg distill``) and the ASE calculator::

    from edg.api import load_student, EDGCalculator
    student = load_student("runs/quick/schnet__rmd17-ethanol__lam0.1__seed42")
    atoms.calc = EDGCalculator("runs/quick/schnet__rmd17-ethanol__lam0.1__seed42")

A self-contained model file (``edg export``; no run folder or training code needed) and its training domain::

    from edg.api import export_run, load_exported
    export_run("runs/quick/schnet__rmd17-ethanol__lam0.1__seed42", "ethanol.pt2")
    model = load_exported("ethanol.pt2")          # model.card: elements, compositions, energy range
    [p] = model.predict([(z, pos)])               # p.energy eV, p.forces eV/Å, p.verdict.status in/warn/refused
    atoms.calc = EDGCalculator("ethanol.pt2")     # atoms.calc.domain after each calculation

Rendering ED and structure images, and one DFT single point::

    from edg.api import Renderer, RenderConfig, render_ed, render_structure
    from edg.api import DFTConfig, DFTWorker, load_result

Names load on first use, so ``import edg.api`` imports no torch, PySCF or ASE.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "Molecule": "edg.edg_core.molecule",
    "open_source": "edg.edg_core.readers",
    "parse_spec": "edg.edg_core.spec",
    "DatasetSpec": "edg.edg_core.spec",
    "Dataset": "edg.edg_core.datasets",
    "DATASETS": "edg.edg_core.datasets",
    "register_dataset": "edg.edg_core.datasets",
    "build_task": "edg.train.tasks",
    "load_student": "edg.train.io.predict",
    "TrainedStudent": "edg.train.io.predict",
    "Prediction": "edg.train.io.predict",
    "predict_file": "edg.train.io.predict",
    "EDGCalculator": "edg.train.io.ase_calculator",
    "DomainWarning": "edg.train.io.ase_calculator",
    "export_run": "edg.train.io.exported",
    "load_exported": "edg.train.io.exported",
    "ExportedModel": "edg.train.io.exported",
    "ExportedPrediction": "edg.train.io.exported",
    "ModelCard": "edg.train.io.model_card",
    "Verdict": "edg.train.io.model_card",
    "STUDENTS": "edg.train.students",
    "build_student": "edg.train.students",
    "Renderer": "edg.render.renderer",
    "render_ed": "edg.render.renderer",
    "render_structure": "edg.render.renderer",
    "RenderConfig": "edg.render.config",
    "DFTConfig": "edg.dft.config",
    "DFTWorker": "edg.dft.worker",
    "DFTResult": "edg.dft.result",
    "load_result": "edg.dft.result",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'edg.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__

"""Supervised tasks for students: QM9 (one of 12 targets) and rMD17 (energy + forces of one molecule).

``build_task("rmd17:aspirin", train_size=100)`` or ``build_task("qm9:U0")``; keyword overrides are fields of
``RMD17Config`` / ``QM9Config``.
"""
from __future__ import annotations

from edg_core.config import from_dict
from edg_core.errors import DataSourceError

from .base import Prediction, Task
from .packed import Batch, PackedMolecules
from .qm9 import QM9Config, QM9Task
from .rmd17 import RMD17Config, RMD17Task

__all__ = ["build_task", "Task", "Prediction", "Batch", "PackedMolecules", "QM9Config", "QM9Task",
           "RMD17Config", "RMD17Task", "DATASET_KINDS"]

DATASET_KINDS = ("qm9:<target>", "rmd17:<molecule>")


def build_task(dataset: str, **overrides) -> Task:
    """A task from a dataset spec ``qm9:<target>`` or ``rmd17:<molecule>`` plus config overrides."""
    kind, _, name = dataset.partition(":")
    if kind == "rmd17" and name:
        return RMD17Task(from_dict(RMD17Config, {"molecule": name, **overrides}, where=f"task {dataset}"))
    if kind == "qm9" and name:
        return QM9Task(from_dict(QM9Config, {"target": name, **overrides}, where=f"task {dataset}"))
    raise DataSourceError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASET_KINDS)}")

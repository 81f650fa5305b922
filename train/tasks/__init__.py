"""Supervised tasks for students, one per dataset with a task in the registry (``edg_core.datasets``):
QM9 (one of 12 targets) and rMD17 (energy + forces of one molecule).

``build_task("rmd17:aspirin", train_size=100)`` or ``build_task("qm9:U0")``: a dataset spec in the one grammar
(``edg_core.spec``; options after ``?`` are task options, ``limit=N`` caps each split) plus keyword overrides,
fields of the dataset's task config (``RMD17Config`` / ``QM9Config``); explicit overrides win.
"""
from __future__ import annotations

from edg.edg_core.datasets import datasets_with_tasks, resolve
from edg.edg_core.spec import TASK

from .base import Prediction, Task
from .packed import Batch, PackedMolecules
from .qm9 import QM9Config, QM9Task
from .rmd17 import RMD17Config, RMD17Task

__all__ = ["build_task", "Task", "Prediction", "Batch", "PackedMolecules", "QM9Config", "QM9Task",
           "RMD17Config", "RMD17Task", "dataset_kinds", "parse_dataset", "validate_dataset"]


def dataset_kinds() -> tuple[str, ...]:
    """``("qm9:<target>", "rmd17:<molecule>", ...)``: the datasets that have a task, as help text."""
    return tuple(f"{d.name}:<{d.subset}>" if d.subset else d.name for d in datasets_with_tasks())


def parse_dataset(spec: str) -> tuple[str, dict]:
    """``"rmd17:aspirin?root=DIR&split_id=2"`` -> ``("rmd17:aspirin", {"root": "DIR", "split_id": 2})``: the
    dataset (canonical, without options) and its task options (values read as YAML scalars, like
    ``--task KEY=VALUE``; ``root`` kept as text)."""
    import yaml
    ds = resolve(spec, TASK)
    opts = {k: (v if k == "root" else yaml.safe_load(v) if v else None) for k, v in ds.options}
    return str(ds.base), opts


def validate_dataset(dataset: str, **overrides) -> None:
    """Check a dataset spec and its task options without loading the data: the dataset, its subset (rMD17
    molecule, QM9 target), the option names and values, and (rMD17) that the files are where the root says.
    Raises ``ConfigError`` or ``DataSourceError`` with the valid names / the advice that fixes it."""
    spec = resolve(dataset, TASK)
    spec.dataset.task_class().check_spec(spec, overrides)


def build_task(dataset: str, **overrides) -> Task:
    """The task a dataset spec names (``qm9:<target>``, ``rmd17:<molecule>``) with config ``overrides``."""
    spec = resolve(dataset, TASK)
    return spec.dataset.task_class().from_spec(spec, overrides)

"""Supervised tasks for students: QM9 (one of 12 targets) and rMD17 (energy + forces of one molecule).

``build_task("rmd17:aspirin", train_size=100)`` or ``build_task("qm9:U0")``; keyword overrides are fields of
``RMD17Config`` / ``QM9Config``.
"""
from __future__ import annotations

from edg.edg_core.config import ConfigError, from_dict, unknown_name
from edg.edg_core.errors import DataSourceError

from .base import Prediction, Task
from .packed import Batch, PackedMolecules
from .qm9 import QM9Config, QM9Task
from .rmd17 import RMD17Config, RMD17Task

__all__ = ["build_task", "Task", "Prediction", "Batch", "PackedMolecules", "QM9Config", "QM9Task",
           "RMD17Config", "RMD17Task", "DATASET_KINDS", "parse_dataset", "validate_dataset"]

DATASET_KINDS = ("qm9:<target>", "rmd17:<molecule>")


def parse_dataset(spec: str) -> tuple[str, dict]:
    """``"rmd17:aspirin?root=DIR&split_id=2"`` -> ``("rmd17:aspirin", {"root": "DIR", "split_id": 2})``: the
    dataset name and its task options (values parsed as YAML scalars, like ``--task KEY=VALUE``)."""
    from urllib.parse import parse_qsl

    import yaml
    name, _, query = spec.partition("?")
    opts = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        opts[key.replace("-", "_")] = yaml.safe_load(value) if value else None
    return name, opts


def validate_dataset(dataset: str, **overrides) -> None:
    """Check a dataset spec and its task options without loading the data: the kind, the rMD17 molecule or
    QM9 target, the option names, and (rMD17) that the files are where the root says. Raises ``ConfigError``
    or ``DataSourceError`` with the valid names / the advice that fixes it."""
    from edg.edg_core.readers import rmd17_root
    from edg.edg_core.readers.qm9 import TARGETS
    from edg.edg_core.readers.rmd17 import check_available
    name, opts = parse_dataset(dataset)
    overrides = {**opts, **overrides}
    kind, _, what = name.partition(":")
    if kind == "rmd17" and what:
        cfg = from_dict(RMD17Config, {"molecule": what, **overrides}, where=f"task {name}")  # checks the values
        check_available(rmd17_root(cfg.root), what, cfg.split_id)
    elif kind == "qm9" and what:
        if what not in TARGETS:
            raise unknown_name("QM9 target", what, TARGETS)
        from_dict(QM9Config, {"target": what, **overrides}, where=f"task {name}")
    else:
        raise ConfigError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASET_KINDS)} "
                          "(options after '?', e.g. rmd17:aspirin?root=DIR)")


def build_task(dataset: str, **overrides) -> Task:
    """A task from a dataset spec ``qm9:<target>`` or ``rmd17:<molecule>`` plus config overrides; options
    may also follow the spec (``rmd17:aspirin?root=DIR``; explicit ``overrides`` win)."""
    dataset, opts = parse_dataset(dataset)
    overrides = {**opts, **overrides}
    kind, _, name = dataset.partition(":")
    if kind == "rmd17" and name:
        return RMD17Task(from_dict(RMD17Config, {"molecule": name, **overrides}, where=f"task {dataset}"))
    if kind == "qm9" and name:
        return QM9Task(from_dict(QM9Config, {"target": name, **overrides}, where=f"task {dataset}"))
    raise DataSourceError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASET_KINDS)}")

"""The dataset registry: one entry per dataset name, read by every command, the pipeline and the trainers.

An entry says what a name means: how to read its records (``reader``), its splits and subsets, its options,
its task (a lazy ``"module:function"`` reference, so that this package imports neither torch nor ``train``),
the metrics its results report (with units) and the paper family whose settings and result table it takes.
Specs naming a dataset follow one grammar (``edg_core.spec``). The built-in entries are in
``edg_core/datasets/builtin.py``; adding a dataset is one ``register(Dataset(...))`` call there (or in the
module that owns it) plus its reader module, and, to train on it, its task module.
"""
from __future__ import annotations

from ..config import ConfigError
from .registry import DATASETS, Dataset, datasets_with_tasks, families, get_dataset, register

__all__ = ["Dataset", "DATASETS", "register", "register_dataset", "get_dataset", "resolve", "families", "family_of",
           "dataset_of", "group_of", "datasets_with_tasks"]


register_dataset = register  # the name edg.api exports


def resolve(spec, purpose: str = "records"):
    """``spec`` (text or ``DatasetSpec``) as a ``DatasetSpec`` parsed for ``purpose`` (``edg_core.spec``)."""
    from ..spec import DatasetSpec, parse_spec
    return spec if isinstance(spec, DatasetSpec) else parse_spec(spec, purpose)


def dataset_of(spec) -> Dataset | None:
    """The entry a spec or a task / result name (``rmd17:aspirin``, ``qm9:U0``) belongs to, without checking
    its subset or options (for reading results written earlier); ``None`` for no registered dataset."""
    name = str(spec).split("?", 1)[0].split(":", 1)[0]
    return DATASETS.get(name)


def family_of(spec) -> str:
    """The paper family of a dataset spec or task name (``rmd17:aspirin`` -> ``rmd17``); a dataset without
    one is a ``ConfigError`` naming the families."""
    ds = dataset_of(spec)
    if ds is None or ds.family is None:
        raise ConfigError(f"dataset {str(spec)!r} has no paper family; families: {', '.join(families())}")
    return ds.family


def group_of(spec) -> str:
    """The key results and per-family config entries group ``spec`` under: its paper family, or for a dataset
    without one (or not registered) its name."""
    ds = dataset_of(spec)
    if ds is not None and ds.family:
        return ds.family
    return str(spec).split("?", 1)[0].split(":", 1)[0]


from . import builtin  # noqa: E402,F401  (registers the built-in datasets)

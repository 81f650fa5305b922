"""The registry itself: ``Dataset`` entries by name. It imports nothing of the grammar (``edg_core.spec``) or of
the entries (``builtin.py`` registers into it), so that ``spec`` can look names up without an import circle."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import ConfigError, unknown_name


@dataclass(frozen=True)
class Dataset:
    """One registered dataset.

    ``reader``: ``"module:function"``, ``function(spec: DatasetSpec) -> edg_core.readers.Source`` (the records
    of ``spec.split``). ``task``: ``"module:Class"``, a task class of ``train.tasks`` with
    ``from_spec(spec, overrides)`` and ``check_spec(spec, overrides)``, or ``None`` for a records-only source.
    ``subset``: the option named by position (``rmd17:<molecule>``), with ``subsets`` its valid values (empty:
    any). ``options``: record options beyond ``split`` and ``limit`` (``root``, ``split_id``, ...).
    ``targets``: what the task can learn; ``metrics``: the test metrics a result table reports; ``units``:
    target or metric -> unit. ``family``: the paper family (settings in ``train.paper_settings``; ``None``: the
    training defaults), ``paper_table`` its table in the paper and ``table_layout`` how ``train.report`` lays
    it out (``targets``: one column per subset, as Table 1; ``rows``: one row per subset and metric, as Table 2).
    """
    name: str
    description: str
    reader: str
    subset: str | None = None
    subset_label: str = ""
    subsets: tuple[str, ...] = ()
    subset_required: bool = False
    task_needs_subset: bool = False
    splits: tuple[str, ...] = ()
    default_split: str | None = None
    options: tuple[str, ...] = ()
    task: str | None = None           # "module:Class" (see above)
    targets: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    units: dict[str, str] = field(default_factory=dict)
    family: str | None = None
    paper_table: str | None = None
    table_layout: str = "rows"
    trajectory_ids: bool = False      # record ids end with the frame index along a trajectory (paper Figure 3)
    split_members: str | None = None  # "module:function", (spec) -> ({split: ids}, description) for edg data split
    fields: str | None = None         # "module:function", (spec, lazy=True) -> (Molecule, ref with .load(mol) ->
    #                                   render Fields) per record: a dataset that carries its densities (ED images
    #                                   without DFT)
    parts: str | None = None          # "module:function", (spec, records_per_part, min_parts) -> parts (each with
    #                                   .spec, .source(), .first, .stop, .count and index_of(key)) or None: a file
    #                                   each actor reads its own byte range of (cluster.parts)

    @property
    def record_options(self) -> tuple[str, ...]:
        """Every option an input spec of this dataset may carry (besides its ``subset``)."""
        return (("split",) if self.splits else ()) + tuple(self.options) + ("limit",)

    def open(self, spec):
        """The records ``spec`` selects (an ``edg_core.readers.Source``)."""
        return _load(self.reader)(spec)

    def field_items(self, spec):
        """``(Molecule, field reference)`` or ``InvalidRecord`` per record of ``spec``, for a dataset that carries
        its densities (``fields``); each reference loads its ED/ESP on the worker that renders it."""
        if self.fields is None:
            raise ConfigError(f"dataset {self.name!r} carries no densities; run edg dft first")
        return _load(self.fields)(spec, lazy=True)

    def plan_parts(self, spec, records_per_part: int, min_parts: int = 1):
        """The parts of ``spec`` for a stage's actors (``parts``), or ``None`` where the dataset has none or the
        spec is one part already."""
        return None if self.parts is None else _load(self.parts)(spec, records_per_part, min_parts)

    def split_ids(self, spec):
        """``({split: ids}, what the ids are)`` of the fixed split ``spec`` names (``edg data split``)."""
        if self.split_members is None:
            raise ConfigError(f"dataset {self.name!r} has no fixed split")
        return _load(self.split_members)(spec)

    def task_class(self):
        """The task class (imports the task module, hence torch): ``from_spec(spec, overrides) -> Task`` and
        ``check_spec(spec, overrides)`` (the config, checked without loading data)."""
        return _load(self.task)


DATASETS: dict[str, Dataset] = {}
"""name -> entry, in registration order."""


def register(ds: Dataset) -> Dataset:
    """Add ``ds`` to the registry (a second entry under one name is refused)."""
    if ds.name in DATASETS and DATASETS[ds.name] != ds:
        raise ConfigError(f"dataset {ds.name!r} is registered twice")
    if ds.default_split is not None and ds.default_split not in ds.splits:
        raise ConfigError(f"dataset {ds.name!r}: default split {ds.default_split!r} is not one of {ds.splits}")
    DATASETS[ds.name] = ds
    return ds


def get_dataset(name: str) -> Dataset:
    """The entry of ``name``; an unknown name is a ``ConfigError`` with the nearest registered one."""
    try:
        return DATASETS[name]
    except KeyError:
        raise unknown_name("dataset", name, list(DATASETS)) from None


def families() -> tuple[str, ...]:
    """The paper families of the registered datasets, in registration order."""
    return tuple(dict.fromkeys(d.family for d in DATASETS.values() if d.family))


def datasets_with_tasks() -> tuple[Dataset, ...]:
    return tuple(d for d in DATASETS.values() if d.task)


def _load(ref: str) -> Callable:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)

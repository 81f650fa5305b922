"""One grammar for every data spec: input specs (which records) and dataset specs (which task) alike.

::

    <name>[:<subset>][?<key>=<value>&...]        e.g.  rmd17:aspirin?split=test&root=DIR&limit=8
    <path>[?<key>=<value>&...]                    e.g.  mols.xyz?limit=3

``name`` is a registered dataset (``edg_core.datasets``); ``subset`` is the value of the one option the dataset
names by position (its ``subset``: the rMD17 molecule, the QM9 target, the embedded part, the SMILES list), so
``rmd17:aspirin`` and ``rmd17?molecule=aspirin`` are one spec. Options every dataset knows: ``split`` (which
records), ``target``, ``root`` (data folder) and ``limit`` (first N records); a dataset may add its own
(rMD17: ``split_id``), and a dataset spec for training also carries task options (``train_size=100``, values
read as YAML by the task). Anything that is not ``<registered name>[:...]`` is a file path.

``parse_spec`` returns a frozen ``DatasetSpec`` whose ``str()`` is the canonical spelling (subset by position,
options in a fixed order) and parses back to an equal spec. Old spellings are accepted with a one-line note,
once per spelling: a split by position (``rmd17:aspirin:train``, ``qm9:train``) is ``?split=``.
A bad spec is one ``SpecError`` line naming the spec and the bad part, with the nearest valid name.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote

from . import storage
from .config import ConfigError, unknown_name

__all__ = ["DatasetSpec", "SpecError", "parse_spec", "COMMON_OPTIONS", "RECORDS", "TASK"]

RECORDS, TASK = "records", "task"
"""What a spec is parsed for: the records it selects (``open_source``) or the task it names (``build_task``)."""

COMMON_OPTIONS = ("split", "target", "root", "limit")
"""Options of every dataset, in their canonical order; a dataset's own options follow, then task options."""


class SpecError(ConfigError):
    """A spec that does not parse: one line naming the spec and its bad part."""


def _int_at_least(minimum: int):
    def check(value: str) -> str:
        try:
            n = int(value)
        except ValueError:
            n = None
        if n is None or n < minimum:
            raise ValueError(f"must be an integer >= {minimum}")
        return str(n)
    return check


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("needs a value")
    return value


def _integer(value: str) -> str:
    try:
        return str(int(value))
    except ValueError:
        raise ValueError("must be an integer") from None


def _one_of(*choices: str):
    def check(value: str) -> str:
        if value.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value.lower()
    return check


VALUE_CHECKS = {"limit": _int_at_least(0), "split_id": _int_at_least(1), "root": _non_empty,
                "target": _non_empty, "split": _non_empty, "charge": _integer, "multiplicity": _int_at_least(1),
                "format": _one_of("xyz", "sdf", "smi")}
"""Option -> check returning the canonical raw value (``limit=007`` -> ``7``) or raising ``ValueError``."""


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed spec: a registered dataset ``name`` (``"file"`` for a path), its ``subset`` (the value of the
    option the dataset names by position, or the path) and its other options as ``(key, raw value)`` pairs in
    canonical order. Values stay strings; ``option`` and the typed properties read them."""
    name: str
    subset: str | None = None
    options: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if self.name == "file":
            base = self.subset or ""
        else:
            base = self.name if self.subset is None else f"{self.name}:{self.subset}"
        if not self.options:
            return base
        return base + "?" + "&".join(f"{k}={quote(v, safe='/:,.-_~@*')}" for k, v in self.options)

    @property
    def dataset(self):
        """The registry entry (``edg_core.datasets.Dataset``)."""
        from .datasets.registry import get_dataset
        return get_dataset(self.name)

    def option(self, key: str, default: str | None = None) -> str | None:
        """The raw value of ``key``; the dataset's positional option reads ``subset``."""
        if key == self.dataset.subset and self.subset is not None:
            return self.subset
        return dict(self.options).get(key, default)

    @property
    def split(self) -> str | None:
        return self.option("split", self.dataset.default_split)

    @property
    def target(self) -> str | None:
        return self.option("target")

    @property
    def root(self) -> str | None:
        return self.option("root")

    @property
    def limit(self) -> int | None:
        value = self.option("limit")
        return None if value is None else int(value)

    @property
    def family(self) -> str | None:
        """The paper family whose settings and table this dataset takes (``None``: none)."""
        return self.dataset.family

    @property
    def base(self) -> DatasetSpec:
        """This spec without options (``rmd17:aspirin``): the name a task, run or result goes by."""
        return DatasetSpec(self.name, self.subset)

    def source_options(self) -> dict[str, str]:
        """The options that select records (common and the dataset's own), raw."""
        keep = set(COMMON_OPTIONS) | set(self.dataset.options)
        return {k: v for k, v in self.options if k in keep}

    def task_options(self) -> dict[str, str]:
        """The options that are not record options (task config fields), raw."""
        keep = set(COMMON_OPTIONS) | set(self.dataset.options)
        return {k: v for k, v in self.options if k not in keep}

    def replace(self, **options: str | None) -> DatasetSpec:
        """A copy with ``options`` set (``None`` removes one)."""
        opts = dict(self.options)
        subset = self.subset
        for k, v in options.items():
            if k == self.dataset.subset:
                subset = v
            elif v is None:
                opts.pop(k, None)
            else:
                opts[k] = str(v)
        return DatasetSpec(self.name, subset, _ordered(opts, self.dataset.options))


def _ordered(opts: dict[str, str], own: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    order = list(COMMON_OPTIONS) + [k for k in own if k not in COMMON_OPTIONS]
    rank = {k: i for i, k in enumerate(order)}
    return tuple(sorted(opts.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


_noted: set[str] = set()


log = logging.getLogger(__name__)


def _note_old_spelling(text: str, canonical: str, why: str) -> None:
    """One warning line per old spelling per process."""
    if text in _noted:
        return
    _noted.add(text)
    log.warning("deprecated spec %r (%s): write %r", text, why, canonical)


def _looks_like_name(base: str) -> bool:
    return base.replace("_", "").replace("-", "").isalnum()


def parse_spec(text: str, purpose: str = RECORDS) -> DatasetSpec:
    """Parse ``text`` for ``purpose`` (``RECORDS``: only record options are valid; ``TASK``: other keys are task
    options, checked by the task's config, and ``split`` is refused: a task trains on all its splits).
    Raises ``SpecError`` (one line) for an unknown dataset, subset, split or option, or a bad value."""
    from .datasets.registry import DATASETS, get_dataset
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"empty spec {text!r}: name a dataset ({', '.join(DATASETS)}) or a file")
    base, _, query = text.partition("?")
    base = str(storage.plain_path(base))
    head, colon, rest = base.partition(":")
    if head in DATASETS:
        ds = get_dataset(head)
    elif _looks_like_name(head) and (colon or _looks_like_name(base)) and not Path(base).exists():
        near = unknown_name("dataset", head, list(DATASETS)).args[0]
        raise SpecError(f"spec {text!r}: {near}; or give a file path")
    else:
        ds, head, rest, colon = get_dataset("file"), "file", base, ":"
    where = f"spec {text!r}"

    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False) if query else []
    if query and not pairs:
        raise SpecError(f"{where}: options after '?' must be key=value pairs joined by '&'")
    if purpose == TASK:
        pairs = [(k.replace("-", "_"), v) for k, v in pairs]
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise SpecError(f"{where}: option(s) {repeated} given more than once")
    opts = dict(pairs)

    subset = rest if colon else None
    positional_split = None
    if subset is not None and ds.splits:
        parts = subset.split(":")
        if len(parts) == 2:
            subset, positional_split = parts
        elif len(parts) > 2:
            raise SpecError(f"{where}: too many ':' parts; write {ds.name}:<{ds.subset}>?split=<split>")
        if subset and subset in ds.splits and (not ds.subsets or subset not in ds.subsets) \
                and positional_split is None:
            subset, positional_split = None, subset  # qm9:train
    if subset == "":
        raise SpecError(f"{where}: nothing after ':'; write {ds.name}:<{ds.subset or 'subset'}>")
    if ds.subset and ds.subset in opts:
        given = opts.pop(ds.subset)
        if subset is not None and subset != given:
            raise SpecError(f"{where}: {ds.subset} given twice ({subset!r} and {given!r})")
        subset = given
    if subset is not None and ds.subset is None:
        raise SpecError(f"{where}: {ds.name} takes nothing after ':' (options go after '?')")

    if positional_split is not None:
        if "split" in opts:
            raise SpecError(f"{where}: split given twice ({positional_split!r} and {opts['split']!r})")
        opts["split"] = positional_split

    valid = [k for k in ([ds.subset] if ds.subset else []) + list(ds.record_options)]
    if purpose == RECORDS:
        unknown = [k for k in opts if k not in valid]
        if unknown:
            near = unknown_name("option", unknown[0], list(ds.record_options)).args[0]
            near = near.replace("; known:", f"; options of {ds.name}:")
            raise SpecError(f"{where}: {near}")
    elif "split" in opts:
        raise SpecError(f"{where}: a task trains on all its splits; drop ?split={opts['split']}")

    for key, value in list(opts.items()):
        if key in VALUE_CHECKS and key in valid:
            try:
                opts[key] = VALUE_CHECKS[key](value)
            except ValueError as e:
                raise SpecError(f"{where}: option {key}={value!r} {e}") from None
    if "split" in opts and opts["split"] not in ds.splits:
        raise SpecError(f"{where}: " + unknown_name(f"{ds.name} split", opts["split"], ds.splits).args[0])
    if subset is not None and ds.subsets and subset not in ds.subsets:
        raise SpecError(f"{where}: " + unknown_name(ds.subset_label or f"{ds.name} {ds.subset}", subset,
                                                    ds.subsets).args[0])
    if subset is None and (ds.subset_required or (purpose == TASK and ds.task_needs_subset)):
        raise SpecError(f"{where}: name {ds.subset_label or ds.subset}: {ds.name}:<{ds.subset}>"
                        + (f", one of {', '.join(ds.subsets)}" if ds.subsets else ""))
    if purpose == TASK and ds.task is None:
        raise SpecError(f"{where}: {ds.name} has records but no task; datasets with a task: "
                        f"{', '.join(n for n, d in DATASETS.items() if d.task)}")

    spec = DatasetSpec(ds.name, subset, _ordered(opts, ds.options))
    if positional_split is not None:
        _note_old_spelling(text, str(spec), "a split goes after '?'")
    return spec

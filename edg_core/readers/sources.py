"""``Source`` (a re-iterable stream of records) and the readers of the records-only datasets: the embedded
data, inline SMILES and files.

A file spec may say what the file cannot: ``?format=xyz|sdf|smi`` (for ``-``, standard input, which defaults to
xyz, or a FIFO without a suffix), ``?charge=N`` and ``?multiplicity=M`` (for the records that do not state them;
a record stating another value is refused). A one-shot input (``-``, a FIFO) is read once
(``stream.Spool``)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import DataSourceError, InvalidRecord
from ..molecule import Molecule
from .stream import STDIN, Spool, check_readable, input_lines, is_one_shot

FORMATS = {"xyz": (".xyz", ".extxyz"), "sdf": (".sdf", ".mol", ".sd"), "smi": (".smi", ".smiles", ".txt")}
"""File format -> the suffixes that name it."""

EMBEDDED = {"qm9": "qm9_first40.extxyz", "rmd17": "rmd17_frames.extxyz"}
"""Embedded part -> file in ``edg_core/data``."""


@dataclass
class Source:
    """A named, re-iterable stream of records; ``len()`` is known for every built-in source."""
    spec: str
    _make: Callable[[], Iterator[Molecule | InvalidRecord]]
    length: int | None = None
    limit: int | None = None
    empty_is_error: bool = False  # a user's file with no records at all: "no molecules" (a part or split may be empty)

    def __iter__(self) -> Iterator[Molecule | InvalidRecord]:
        """The records; with ``empty_is_error`` (files) a source with none at all (not even a bad one) raises
        ``DataSourceError`` "no molecules" once it is read to the end (``?limit=0`` asks for none, gets none)."""
        # a repeated id is refused by the stage driver (cluster.engine.run_stage), which owns the keys
        n = 0
        for n, rec in enumerate(self._make(), 1):
            if self.limit is not None and n > self.limit:
                return
            yield rec
        if n == 0 and self.empty_is_error and self.limit != 0:
            raise DataSourceError(f"input {self.spec!r}: no molecules")

    def molecules(self) -> Iterator[Molecule]:
        """Only the good records; the first bad one raises (for small, trusted inputs)."""
        for rec in self:
            if isinstance(rec, InvalidRecord):
                raise rec
            yield rec

    def __len__(self) -> int:
        if self.length is None:
            self.length = sum(1 for _ in self)
        return min(self.length, self.limit) if self.limit is not None else self.length


def embedded_path(name: str) -> Path:
    """Path of an embedded data file (part ``qm9`` or ``rmd17``)."""
    if name not in EMBEDDED:
        raise DataSourceError(f"unknown embedded data set {name!r}; known: {sorted(EMBEDDED)}")
    return Path(str(resources.files("edg.edg_core") / "data" / EMBEDDED[name]))


def open_embedded(spec) -> Source:
    """``embedded[:<part>]``: the shipped molecules of one part, or of every part (QM9 and rMD17 molecules are
    neutral singlets by the data sets' definition: stated, not inferred)."""
    from .xyz import read_xyz
    paths = [embedded_path(n) for n in ([spec.subset] if spec.subset else list(EMBEDDED))]
    return Source(str(spec), lambda: (r for p in paths for r in read_xyz(p, charge=0, multiplicity=1)),
                  limit=spec.limit)


def open_smiles(spec) -> Source:
    """``smiles:CCO,c1ccccc1``: one RDKit conformer per SMILES."""
    from .rdkit_io import read_smiles
    items = spec.subset.split(",")
    return Source(str(spec), lambda: read_smiles(items, "smiles"), length=len(items), limit=spec.limit)


def file_format(spec) -> str:
    """``?format=``, else the format the file's suffix names (``-``: xyz); an unknown one is a one-line error."""
    given = spec.option("format")
    if given:
        return given
    path = spec.subset
    if path == STDIN:
        return "xyz"
    suffix = Path(path).suffix.lower()
    for fmt, suffixes in FORMATS.items():
        if suffix in suffixes:
            return fmt
    raise DataSourceError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; use .xyz/.extxyz, .sdf/.mol or "
                          ".smi, or say ?format=xyz|sdf|smi")


def _int_option(spec, key: str) -> int | None:
    value = spec.option(key)
    return None if value is None else int(value)


def with_charge_state(records, charge: int | None, multiplicity: int | None, name: str):
    """``records`` with the spec's ``charge``/``multiplicity`` set on the molecules that do not state them;
    a molecule stating another value, or one the new values make impossible, becomes an ``InvalidRecord``."""
    for rec in records:
        if isinstance(rec, InvalidRecord) or (charge is None and multiplicity is None):
            yield rec
            continue
        clash = [f"{k} {getattr(rec, k)} in the file but ?{k}={v} in the spec"
                 for k, v in (("charge", charge), ("multiplicity", multiplicity))
                 if v is not None and k not in rec.inferred and getattr(rec, k) != v]
        if clash:
            yield InvalidRecord(rec.id, f"{name}: {'; '.join(clash)}")
            continue
        try:
            yield rec.with_charge_state(charge, multiplicity)
        except InvalidRecord as e:
            yield InvalidRecord(e.record, f"{name}: {e.problem}")


def open_file(spec) -> Source:
    """A file by its format (``file_format``): .xyz/.extxyz, .sdf/.mol/.sd, .smi/.smiles/.txt; ``-`` is
    standard input. A folder, a missing or an unreadable file is one ``DataSourceError`` line."""
    from .rdkit_io import read_sdf, read_smiles
    from .xyz import read_xyz
    given = spec.subset
    if given != STDIN and not Path(given).exists():
        raise DataSourceError(f"input {str(spec)!r}: no such file, and not a registered dataset "
                              "(edg data info --datasets lists them)")
    check_readable(given)
    fmt = file_format(spec)
    charge, multiplicity = _int_option(spec, "charge"), _int_option(spec, "multiplicity")
    name = "<stdin>" if given == STDIN else Path(given).name
    if is_one_shot(given):
        spool = Spool(given, suffix=f".{fmt}")
        where = lambda: spool.path  # noqa: E731  (copied on first use, read from the copy after)
    else:
        where = lambda: given  # noqa: E731
    if fmt == "xyz":
        make = lambda: read_xyz(where(), name, charge, multiplicity)  # noqa: E731
    elif fmt == "sdf":
        make = lambda: with_charge_state(read_sdf(where(), name), charge, multiplicity, name)  # noqa: E731
    else:
        stem = Path(name).stem.strip("<>")
        make = lambda: with_charge_state(read_smiles(input_lines(where()), stem, name),  # noqa: E731
                                         charge, multiplicity, name)
    return Source(str(spec), make, limit=spec.limit, empty_is_error=True)

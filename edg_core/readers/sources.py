"""``Source`` (a re-iterable stream of records) and the readers of the records-only datasets: the embedded
data, inline SMILES and files."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import DataSourceError, InvalidRecord
from ..io import text_lines
from ..molecule import Molecule

EMBEDDED = {"qm9": "qm9_first40.extxyz", "rmd17": "rmd17_frames.extxyz"}
"""Embedded part -> file in ``edg_core/data``."""


@dataclass
class Source:
    """A named, re-iterable stream of records; ``len()`` is known for every built-in source."""
    spec: str
    _make: Callable[[], Iterator[Molecule | InvalidRecord]]
    length: int | None = None
    limit: int | None = None

    def __iter__(self) -> Iterator[Molecule | InvalidRecord]:
        # a repeated id is refused by the stage driver (cluster.engine.run_stage), which owns the keys
        for i, rec in enumerate(self._make()):
            if self.limit is not None and i >= self.limit:
                return
            yield rec

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
    """``embedded[:<part>]``: the shipped molecules of one part, or of every part."""
    from .xyz import read_xyz
    paths = [embedded_path(n) for n in ([spec.subset] if spec.subset else list(EMBEDDED))]
    return Source(str(spec), lambda: (r for p in paths for r in read_xyz(p)), limit=spec.limit)


def open_smiles(spec) -> Source:
    """``smiles:CCO,c1ccccc1``: one RDKit conformer per SMILES."""
    from .rdkit_io import read_smiles
    items = spec.subset.split(",")
    return Source(str(spec), lambda: read_smiles(items, "smiles"), length=len(items), limit=spec.limit)


def open_file(spec) -> Source:
    """A file by its suffix: .xyz/.extxyz, .sdf/.mol/.sd, .smi/.smiles/.txt."""
    from .rdkit_io import read_sdf, read_smiles
    from .xyz import read_xyz
    path = Path(spec.subset)
    if not path.exists():
        raise DataSourceError(f"input {str(spec)!r}: no such file, and not a registered dataset "
                              "(edg data info --datasets lists them)")
    suffix = path.suffix.lower()
    if suffix in (".xyz", ".extxyz"):
        make = lambda: read_xyz(path)  # noqa: E731
    elif suffix in (".sdf", ".mol", ".sd"):
        make = lambda: read_sdf(path)  # noqa: E731
    elif suffix in (".smi", ".smiles", ".txt"):
        make = lambda: read_smiles(text_lines(path), path.stem, path.name)  # noqa: E731
    else:
        raise DataSourceError(f"{path}: unknown file type {suffix!r}; use .xyz/.extxyz, .sdf/.mol or .smi")
    return Source(str(spec), make, limit=spec.limit)

"""One entry to every conformation source: ``open_source(spec)``.

Spec strings (``?key=value&...`` options may follow any of them):

=====================================  =====================================================
``embedded`` / ``embedded:qm9`` /      the small data set shipped inside the package
``embedded:rmd17``
``qm9[:train|valid|test]``             QM9 from qm9pack, Geom3D targets, split customized_01
``rmd17:<molecule>[:train|valid|test]`` rMD17 (``?root=DIR&split_id=1``; root defaults to
                                       ``$EDG_RMD17_ROOT``, ./data/rmd17, ../shared/data/rmd17)
``path/to/file.xyz`` / ``.extxyz``     (extended) XYZ, multi-frame
``path/to/file.sdf`` / ``.mol``        SDF/MOL through RDKit
``path/to/file.smi``                   one ``SMILES [id]`` per line -> RDKit ETKDG + MMFF conformer
``smiles:CCO,c1ccccc1``                SMILES given inline
=====================================  =====================================================

Every source option: ``limit=N`` (first N records); qm9 also takes ``root=DIR``, rmd17 ``root=DIR`` and
``split_id=K``. An unknown option (``?limt=2``) or an invalid value (``?limit=-1``) is refused with the list of
valid options.
A ``Source`` yields ``Molecule`` objects and, for records that cannot be read, ``InvalidRecord``
exceptions as values, so that a large job can log them in its failure manifest and go on.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qsl

from ..errors import DataSourceError, InvalidRecord
from ..io import text_lines
from ..molecule import Molecule
from ..storage import plain_path
from .rdkit_io import read_sdf, read_smiles, smiles_to_molecule
from .rmd17 import MOLECULES as RMD17_MOLECULES
from .rmd17 import load_rmd17
from .xyz import read_xyz

__all__ = ["Source", "open_source", "read_xyz", "read_sdf", "read_smiles", "smiles_to_molecule",
           "load_rmd17", "embedded_path", "rmd17_root", "RMD17_MOLECULES"]

EMBEDDED = {"qm9": "qm9_first40.extxyz", "rmd17": "rmd17_frames.extxyz"}


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
    """Path of an embedded data file (``qm9`` or ``rmd17``)."""
    if name not in EMBEDDED:
        raise DataSourceError(f"unknown embedded data set {name!r}; known: {sorted(EMBEDDED)}")
    return Path(str(resources.files("edg.edg_core") / "data" / EMBEDDED[name]))


def rmd17_root(root: str | None = None) -> Path | str:
    """The rMD17 folder to read: ``root`` if given (``"embedded"`` selects the embedded frames), else the first
    of ``$EDG_RMD17_ROOT``, ./data/rmd17, ../shared/data/rmd17 that exists."""
    if root == "embedded":
        return root
    cands = [root] if root else [os.environ.get("EDG_RMD17_ROOT"), "data/rmd17", "../shared/data/rmd17"]
    for c in cands:
        if c and Path(c).exists():
            return Path(c)
    raise DataSourceError(f"rMD17 data not found (looked in {[str(c) for c in cands if c]}): add ?root=DIR to the "
                          "spec (rmd17:aspirin:train?root=DIR, --dataset rmd17:aspirin?root=DIR; ?root=embedded "
                          "for the frames shipped in the package), or set EDG_RMD17_ROOT=DIR; "
                          "download the data with: edg fetch rmd17 --out DIR")


# the options each kind of source takes (``limit`` everywhere)
OPTIONS = {"embedded": ("limit",), "qm9": ("limit", "root"), "rmd17": ("limit", "root", "split_id"),
           "smiles": ("limit",), "file": ("limit",)}


def _positive_int(spec: str, key: str, value: str, minimum: int) -> int:
    try:
        n = int(value)
    except ValueError:
        n = None
    if n is None or n < minimum:
        raise DataSourceError(f"{spec}: option {key}={value!r} must be an integer >= {minimum}")
    return n


def _parse_options(spec: str, query: str, kind: str) -> dict:
    """``?key=value&...`` -> dict, refusing unknown or repeated keys and invalid values (the message lists the
    valid options of this kind of source)."""
    valid = OPTIONS[kind]
    pairs = parse_qsl(query, keep_blank_values=True)
    keys = [k for k, _ in pairs]
    unknown = sorted({k for k in keys if k not in valid})
    if unknown:
        raise DataSourceError(f"{spec}: unknown option(s) {unknown}; valid options for {kind} specs: "
                              f"{', '.join(valid)}")
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise DataSourceError(f"{spec}: option(s) {repeated} given more than once")
    opts = dict(pairs)
    if "limit" in opts:
        opts["limit"] = _positive_int(spec, "limit", opts["limit"], 0)
    if "split_id" in opts:
        opts["split_id"] = _positive_int(spec, "split_id", opts["split_id"], 1)
    if "root" in opts and not opts["root"]:
        raise DataSourceError(f"{spec}: option root= needs a folder")
    return opts


def open_source(spec: str) -> Source:
    """Parse a source spec (see the module docstring) into a ``Source``."""
    base, _, query = spec.partition("?")
    base = plain_path(base)
    kind, _, rest = base.partition(":")
    opts = _parse_options(spec, query, kind if kind in OPTIONS and kind != "file" else "file")
    limit = opts.pop("limit", None)
    parts = rest.split(":") if rest else []

    if kind == "embedded":
        names = parts or ["qm9", "rmd17"]
        paths = [embedded_path(n) for n in names]
        src = Source(spec, lambda: (r for p in paths for r in read_xyz(p)), limit=limit)
    elif kind == "qm9":
        src = _qm9_source(spec, parts, opts)
        src.limit = limit
    elif kind == "rmd17":
        if not parts or parts[0] not in RMD17_MOLECULES:
            raise DataSourceError(f"{spec}: name an rMD17 molecule, one of {', '.join(RMD17_MOLECULES)}")
        mol, split = parts[0], (parts[1] if len(parts) > 1 else "train")
        splits = load_rmd17(rmd17_root(opts.get("root")), mol, int(opts.get("split_id", 1)))
        if split not in splits:
            raise DataSourceError(f"{spec}: unknown split {split!r}; use train, valid or test")
        frames = splits[split]
        src = Source(spec, lambda: frames.molecules(split), length=len(frames), limit=limit)
    elif kind == "smiles":
        items = rest.split(",")
        src = Source(spec, lambda: read_smiles(items, "smiles"), length=len(items), limit=limit)
    else:
        src = _file_source(spec, Path(base), opts)
        src.limit = limit
    return src


def _qm9_source(spec: str, parts: list[str], opts: dict) -> Source:
    from .qm9 import load_qm9, split_customized_01
    split = parts[0] if parts else "all"
    if split not in ("all", "train", "valid", "test"):
        raise DataSourceError(f"{spec}: unknown QM9 split {split!r}; use train, valid, test or all")
    table = load_qm9(opts.get("root"))
    idx = None if split == "all" else split_customized_01(len(table))[split]
    n = len(table) if idx is None else len(idx)

    def make():
        for m in table.molecules(idx):
            m.labels["split"] = split
            yield m
    return Source(spec, make, length=n)


def _file_source(spec: str, path: Path, opts: dict) -> Source:
    if not path.exists():
        raise DataSourceError(f"input {spec!r}: no such file, and not a known source kind "
                              "(embedded, qm9, rmd17, smiles:...)")
    suffix = path.suffix.lower()
    if suffix in (".xyz", ".extxyz"):
        return Source(spec, lambda: read_xyz(path))
    if suffix in (".sdf", ".mol", ".sd"):
        return Source(spec, lambda: read_sdf(path))
    if suffix in (".smi", ".smiles", ".txt"):
        return Source(spec, lambda: read_smiles(text_lines(path), path.stem, path.name))
    raise DataSourceError(f"{path}: unknown file type {suffix!r}; use .xyz/.extxyz, .sdf/.mol or .smi")

"""EDBench (HongxinXiang/EDBench, Harvard Dataverse): molecules with their task labels, and the folder layout
our DFT results can be written in.

One benchmark set is a folder ``DIR`` (e.g. ``ed_energy_5w``) holding::

    raw/<set>.csv                    index, smiles, canonical_smiles, scaffold_split, random_split, and
                                     label (space-separated for multi-task sets) or negative_index (retrieval)
    raw/psi4_grid0.4_cubes/<index>/  Mol1.sdf (geometry, Å), Mol1_Dt.cube (total density, e/bohr^3),
                                     Mol1_ESP.cube (Hartree/e); cubes in bohr, 0.4 bohr spacing, 4.0 bohr padding

Spec: ``edbench:DIR[?split=train|valid|test|all&split_by=scaffold|random&set=<set>&limit=N]``. ``DIR`` may also
be the folder above the sets, with ``?set=`` naming one. Records are ``Molecule`` objects from ``Mol1.sdf`` with
id ``edbench:<set>:<index>``, the SMILES of the CSV and the set's labels under their names (``LABELS``: ED5-EC's
six energies are our DFT stage's E1..E6, Hartree). The CSV is read one row at a time. A row whose index is not a
plain folder name (it could lead outside ``DIR``), whose folder or ``Mol1.sdf`` is missing or unreadable, or
whose labels do not parse is one ``InvalidRecord`` naming the set, the index and the problem; the next row is read.
The cube files are read only for rendering (``cube_fields_of``; ``render.cube_input``).
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DataSourceError, InvalidRecord
from ..molecule import Molecule

CUBES = "psi4_grid0.4_cubes"
SDF, ED_CUBE, ESP_CUBE = "Mol1.sdf", "Mol1_Dt.cube", "Mol1_ESP.cube"
SPLIT_BY = ("scaffold", "random")
"""Which of the CSV's split columns ``?split=`` reads: ``<split_by>_split`` (EDBench's benchmarks use scaffold)."""

LABELS = {
    "ed_energy_5w": ("E1", "E2", "E3", "E4", "E5", "E6"),
    "ed_homo_lumo_5w": ("homo_minus_2", "homo_minus_1", "homo", "lumo", "lumo_plus_1", "lumo_plus_2",
                        "lumo_plus_3"),
    "ed_multipole_moments_5w": ("dipole_x", "dipole_y", "dipole_z", "dipole_magnitude"),
    "ed_open_shell_5w": ("open_shell",),
    "ed_retrieval_5w": (),
    "ed_prediction_5w": (),
}
"""Set -> the names of the values in its ``label`` column, in order. ED5-EC: DF-RKS final energy, nuclear
repulsion, one-electron, two-electron, DFT exchange-correlation, total energy (Hartree), our E1..E6
(``dft.scf.ENERGY_LABELS``). A set not listed here gets ``label_0``, ``label_1``, ..."""
UNITS = {f"E{i}": "Ha" for i in range(1, 7)}

_PLAIN_INDEX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MAX_SDF_BYTES = 1 << 20
"""A ``Mol1.sdf`` larger than this (1 MiB: some 10,000 atoms) is refused unread."""
CHARGE_PROP = "edg_total_charge"
"""Property ``write_record`` puts in ``Mol1.sdf`` so that a charged molecule reads back with its charge."""


def set_folder(root: str | Path, set_name: str | None = None) -> tuple[Path, str]:
    """``(folder, set name)`` of a spec's ``DIR`` (a set folder with ``raw/<set>.csv``, or the folder above it
    with ``set_name``). Raises ``DataSourceError`` naming what is missing."""
    root = Path(root)
    if set_name is not None:
        if not _PLAIN_INDEX.fullmatch(set_name):
            raise DataSourceError(f"edbench set name {set_name!r} is not a plain folder name")
        if (root / set_name / "raw").is_dir():
            root = root / set_name
        if not (root / "raw" / f"{set_name}.csv").is_file():
            raise DataSourceError(f"{root}: no raw/{set_name}.csv (EDBench layout: <set>/raw/<set>.csv)")
        return root, set_name
    if not (root / "raw").is_dir():
        sets = sorted(p.parent.parent.name for p in root.glob("*/raw/*.csv") if p.stem == p.parent.parent.name)
        if sets:
            raise DataSourceError(f"{root} holds the EDBench sets {', '.join(sets)}; name the set with ?set=<name>")
        raise DataSourceError(f"{root}: no raw/ folder (EDBench layout: <set>/raw/<set>.csv and "
                              f"<set>/raw/{CUBES}/<index>/)")
    csvs = sorted(p.stem for p in (root / "raw").glob("*.csv"))
    if root.name in csvs:
        return root, root.name
    if len(csvs) != 1:
        raise DataSourceError(f"{root}/raw holds {len(csvs)} CSV files ({', '.join(csvs) or 'none'}); "
                              "name the set with ?set=<name>")
    return root, csvs[0]


def label_names(set_name: str, n: int) -> tuple[str, ...]:
    """The names of a row's ``n`` label values."""
    names = LABELS.get(set_name)
    return names if names else tuple(f"label_{i}" for i in range(n))


def _rows(csv_path: Path) -> Iterator[tuple[int, dict | None, str]]:
    """``(line, row, problem)`` per CSV row, one row in memory at a time; a row the csv module cannot read
    comes back as ``(line, None, why)`` and reading goes on."""
    with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.DictReader(f)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield reader.line_num, None, f"unreadable CSV row ({e})"
                continue
            yield reader.line_num, row, ""


class EDBenchSet:
    """One EDBench set as the spec selects it: which rows (``split`` of ``split_by``), where their folders are."""

    def __init__(self, root: str | Path, set_name: str | None = None, split: str = "all",
                 split_by: str = "scaffold"):
        if split_by not in SPLIT_BY:
            raise DataSourceError(f"edbench: split_by={split_by!r}; one of {', '.join(SPLIT_BY)}")
        self.folder, self.name = set_folder(root, set_name)
        self.csv = self.folder / "raw" / f"{self.name}.csv"
        self.cubes = self.folder / "raw" / CUBES
        self.split, self.split_column = split, f"{split_by}_split"
        with open(self.csv, newline="", encoding="utf-8-sig", errors="replace") as f:
            header = next(csv.reader(f), [])
        need = ["index"] + ([self.split_column] if split != "all" else [])
        missing = [c for c in need if c not in header]
        if missing:
            raise DataSourceError(f"{self.csv}: no column(s) {missing}; header is {header[:8]}")
        self.cubes_resolved = self.cubes.resolve()

    def selected(self, row: dict) -> bool:
        return self.split == "all" or (row.get(self.split_column) or "").strip() == self.split

    def count(self) -> int:
        """Rows of the split (unreadable rows included: each becomes one record or one InvalidRecord)."""
        return sum(1 for _, row, _ in _rows(self.csv) if row is None or self.selected(row))

    def record_folder(self, index: str, rec: str) -> Path:
        """``raw/psi4_grid0.4_cubes/<index>``; an index that is not a plain name, or a folder that leads
        elsewhere (a link), is an ``InvalidRecord``."""
        if not _PLAIN_INDEX.fullmatch(index):
            raise InvalidRecord(rec, f"index {index[:80]!r} is not a plain folder name; refused")
        folder = self.cubes / index
        if not folder.is_dir():
            raise InvalidRecord(rec, f"no folder {folder}")
        if not folder.resolve().is_relative_to(self.cubes_resolved):
            raise InvalidRecord(rec, f"{folder} leads outside {self.cubes}; refused")
        return folder

    def records(self) -> Iterator[tuple[Molecule, Path] | InvalidRecord]:
        """``(molecule, its folder)`` per selected row, or an ``InvalidRecord``."""
        for line, row, problem in _rows(self.csv):
            rec = f"edbench:{self.name}:line{line}"
            if row is None:
                yield InvalidRecord(rec, f"{self.csv.name}, line {line}: {problem}")
                continue
            if not self.selected(row):
                continue
            index = (row.get("index") or "").strip()
            if _PLAIN_INDEX.fullmatch(index):
                rec = f"edbench:{self.name}:{index}"
            try:
                folder = self.record_folder(index, rec)
                mol = read_mol1(folder / SDF, rec)
                mol.labels.update(self.labels(row, rec))
                mol.smiles = (row.get("canonical_smiles") or row.get("smiles") or mol.smiles or "").strip() or None
                yield mol, folder
            except InvalidRecord as e:
                yield InvalidRecord(e.record, f"{self.csv.name}, line {line}: {e.problem}")

    def labels(self, row: dict, rec: str) -> dict:
        """The row's named labels (floats; ``negative_index`` as an int64 array)."""
        out = {}
        text = row.get("label")
        if text is not None and text.strip():
            try:
                values = [float(v) for v in text.split()]
            except ValueError:
                raise InvalidRecord(rec, f"label {text[:80]!r} is not numbers") from None
            names = label_names(self.name, len(values))
            if len(values) != len(names):
                raise InvalidRecord(rec, f"{len(values)} label values, {self.name} has {len(names)} "
                                         f"({', '.join(names)})")
            if not np.isfinite(values).all():
                raise InvalidRecord(rec, f"label {text[:80]!r} is not finite")
            out.update(zip(names, values))
        neg = row.get("negative_index")
        if neg is not None and neg.strip():
            try:
                out["negative_index"] = np.array([int(v) for v in neg.split()], dtype=np.int64)
            except ValueError:
                raise InvalidRecord(rec, f"negative_index {neg[:80]!r} is not integers") from None
        return out


def read_mol1(path: Path, rec: str) -> Molecule:
    """The molecule of one ``Mol1.sdf`` (all atoms, Å), id ``rec``; RDKit's sanitisation is tried first and,
    where it refuses the valences, the atoms and formal charges are read without it."""
    from .rdkit_io import _rdkit, molecule_from_rdkit
    Chem, _ = _rdkit()
    try:
        size = path.stat().st_size
    except OSError:
        raise InvalidRecord(rec, f"no {path.name} in {path.parent}") from None
    if size > MAX_SDF_BYTES:
        raise InvalidRecord(rec, f"{path}: {size} bytes, more than {MAX_SDF_BYTES}; refused unread")
    try:
        block = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRecord(rec, f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    mol = _first_record(Chem, block, sanitize=True)
    if mol is None:
        mol = _first_record(Chem, block, sanitize=False)
        if mol is not None:
            mol.UpdatePropertyCache(strict=False)
    if mol is None or mol.GetNumAtoms() == 0:
        raise InvalidRecord(rec, f"{path}: RDKit could not read a molecule")
    try:
        m = molecule_from_rdkit(mol, rec)
    except InvalidRecord as e:
        raise InvalidRecord(rec, f"{path}: {e.problem}") from None
    charge = m.labels.pop(CHARGE_PROP, None)
    if charge is not None and int(charge) != m.charge:
        m = Molecule(z=m.z, pos=m.pos, id=m.id, charge=int(charge), smiles=m.smiles, labels=m.labels)
    return m


def _first_record(Chem, block: str, sanitize: bool):
    """The first record of SDF text (with its properties), or None."""
    supplier = Chem.SDMolSupplier()
    supplier.SetData(block, removeHs=False, sanitize=sanitize)
    return next(iter(supplier), None) if len(supplier) else None


def cube_fields_of(mol: Molecule, folder: Path, **kw):
    """ED and ESP of one record from its ``Mol1_Dt.cube`` and ``Mol1_ESP.cube``, resampled onto the molecule's
    grid (``edg_core.cube_fields.fields_from_cubes``; ``kw``: spacing, padding, max_points)."""
    from ..cube_fields import fields_from_cubes
    return fields_from_cubes(mol.id, mol.z, mol.pos, folder / ED_CUBE, folder / ESP_CUBE, **kw)


def edbench_set(spec) -> EDBenchSet:
    """The set a spec names (``?set=``, ``?split_by=``)."""
    return EDBenchSet(spec.root, spec.option("set"), spec.split or "all", spec.option("split_by") or "scaffold")


def open_edbench(spec):
    """``edbench:DIR[?split=..&split_by=..&set=..&limit=N]``: the molecules of ``Mol1.sdf`` with the set's
    labels (no cube is read)."""
    from .counted import CountedSource
    bench = edbench_set(spec)

    def make():
        for item in bench.records():
            yield item if isinstance(item, InvalidRecord) else item[0]
    return CountedSource(str(spec), make, limit=spec.limit, count=bench.count)


# ---------------------------------------------------------------- writing the layout
def write_record(folder: str | Path, index: str, mol: Molecule, grid, ed, esp) -> Path:
    """Write one molecule in EDBench's layout under ``folder`` (a ``psi4_grid0.4_cubes`` folder):
    ``<index>/Mol1.sdf`` (atoms, bonds perceived by RDKit where it can, Å), ``Mol1_Dt.cube`` (``ed``, e/bohr^3)
    and ``Mol1_ESP.cube`` (``esp``, Hartree/e) on ``grid`` (bohr). Returns the record's folder; an index that is
    not a plain folder name is refused (``InvalidRecord``)."""
    from ..cube import write_cube
    from ..io import atomic_path
    if not _PLAIN_INDEX.fullmatch(str(index)):
        raise InvalidRecord(mol.id, f"index {str(index)[:80]!r} is not a plain folder name; refused")
    out = Path(folder) / str(index)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / SDF) as tmp:
        tmp.write_text(mol_block(mol))
    write_cube(out / ED_CUBE, grid, ed, mol.z, mol.pos, f"{mol.id} total density (e/bohr^3)")
    write_cube(out / ESP_CUBE, grid, esp, mol.z, mol.pos, f"{mol.id} electrostatic potential (Hartree/e)")
    return out


def mol_block(mol: Molecule) -> str:
    """A MOL block of ``mol``: bonds and orders from RDKit's ``DetermineBonds`` where it succeeds, else
    connectivity only; the total charge also as property ``CHARGE_PROP``."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D
    rw = Chem.RWMol()
    for z in mol.z:
        rw.AddAtom(Chem.Atom(int(z)))
    conf = Chem.Conformer(mol.n_atoms)
    for i, (x, y, w) in enumerate(mol.pos):
        conf.SetAtomPosition(i, Point3D(float(x), float(y), float(w)))
    rw.AddConformer(conf, assignId=True)
    m = rw.GetMol()
    try:
        rdDetermineBonds.DetermineBonds(m, charge=mol.charge)
    except Exception:  # noqa: BLE001  (RDKit raises ValueError or RuntimeError for odd valences)
        m = rw.GetMol()
        try:
            rdDetermineBonds.DetermineConnectivity(m)
        except Exception:  # noqa: BLE001
            m = rw.GetMol()
    m.UpdatePropertyCache(strict=False)
    m.SetProp("_Name", mol.id)
    m.SetIntProp(CHARGE_PROP, int(mol.charge))
    buf = io.StringIO()
    with Chem.SDWriter(buf) as w:
        w.SetKekulize(False)
        w.write(m)
    return buf.getvalue()


def write_csv(path: str | Path, set_name: str, rows) -> None:
    """``raw/<set>.csv`` from ``rows``: dicts with ``index``, ``smiles`` and ``labels`` (a dict holding the
    set's ``LABELS`` names), optionally ``scaffold_split`` / ``random_split`` (default ``train``)."""
    from ..io import atomic_path
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "smiles", "canonical_smiles", "scaffold_split", "random_split", "label"])
        for r in rows:
            names = LABELS.get(set_name) or tuple(r["labels"])
            label = " ".join(repr(float(r["labels"][n])) for n in names)
            w.writerow([r["index"], r.get("smiles") or "", r.get("smiles") or "", r.get("scaffold_split", "train"),
                        r.get("random_split", "train"), label])

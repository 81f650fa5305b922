"""SDF/MOL files and SMILES strings through RDKit (imported lazily: RDKit is needed only here)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import EDGError, InvalidRecord
from ..molecule import Molecule


def _rdkit():
    try:
        from rdkit import Chem, RDLogger
        from rdkit.Chem import AllChem
    except ImportError as e:  # pragma: no cover - rdkit is a declared dependency
        raise EDGError("reading SDF/MOL or SMILES needs RDKit: pip install rdkit") from e
    RDLogger.DisableLog("rdApp.*")
    return Chem, AllChem


def molecule_from_rdkit(mol, rec_id: str, conf_id: int = -1) -> Molecule:
    """A ``Molecule`` from an RDKit molecule with a 3-D conformer (all atoms, hydrogens included)."""
    Chem, _ = _rdkit()
    if mol.GetNumConformers() == 0:
        raise InvalidRecord(rec_id, "no 3-D conformer")
    conf = mol.GetConformer(conf_id)
    z = [a.GetAtomicNum() for a in mol.GetAtoms()]
    pos = np.array(conf.GetPositions(), dtype=np.float64)
    charge = Chem.GetFormalCharge(mol)
    n_rad = sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
    labels = {}
    for k, v in mol.GetPropsAsDict().items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if not np.isfinite(v):
                raise InvalidRecord(rec_id, f"label {k}={v} is not finite")
            labels[k] = float(v)
    smiles = Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False)) if mol.GetNumAtoms() else None
    return Molecule(z=z, pos=pos, id=rec_id, charge=charge, multiplicity=n_rad + 1 if n_rad else None,
                    smiles=smiles, labels=labels).check_atoms_apart()  # no radicals marked: multiplicity inferred


def _sdf_blocks(lines) -> Iterator[tuple[int, list]]:
    """(first line number, lines) of each record of an SDF stream, split at ``$$$$`` lines; one record is held
    at a time. A trailing stretch of blank lines is no record."""
    block, first = [], 1
    for number, line in enumerate(lines, 1):
        if isinstance(line, str) and line.strip() == "$$$$":
            yield first, block
            block, first = [], number + 1
            continue
        block.append(line)
    if any(not isinstance(x, str) or x.strip() for x in block):
        yield first, block


def _sdf_record(block: list, first: int, where: str, rec_id: str) -> Molecule | InvalidRecord:
    """One SDF record (its lines) as a ``Molecule``, or an ``InvalidRecord`` naming ``where`` and the problem."""
    from .stream import line_problem
    Chem, _ = _rdkit()
    for k, line in enumerate(block):
        if line_problem(line):
            return InvalidRecord(rec_id, f"{where}: {line_problem(line)} (line {first + k})")
    supplier = Chem.SDMolSupplier()
    supplier.SetData("\n".join(block) + "\n$$$$\n", sanitize=True, removeHs=False)
    mol = supplier[0] if len(supplier) else None
    if mol is None:
        return InvalidRecord(rec_id, f"{where}: RDKit could not parse the record")
    try:
        if mol.HasProp("_Name") and mol.GetProp("_Name").strip():
            rec_id = mol.GetProp("_Name").strip()
        return molecule_from_rdkit(mol, rec_id)
    except InvalidRecord as e:
        return InvalidRecord(e.record, f"{where}: {e.problem}")


def read_sdf(path: str | Path, name: str | None = None) -> Iterator[Molecule | InvalidRecord]:
    """Yield each record of an SDF (or a single MOL file; ``-``: standard input), read once as a stream; a record
    RDKit cannot parse (or with non-finite labels, lines that are not UTF-8, atoms that coincide) is an
    ``InvalidRecord`` naming the file, record index and first line, and the next record is read.
    ``name``: the file name messages and default ids use (default: ``path``'s)."""
    from .stream import STDIN, input_lines
    _rdkit()
    shown = Path(name or ("<stdin>" if str(path) == STDIN else path))
    stem = shown.stem.strip("<>")
    for i, (first, block) in enumerate(_sdf_blocks(input_lines(path))):
        yield _sdf_record(block, first, f"{shown.name}, record {i}, line {first}", f"{stem}:{i}")


def smiles_to_molecule(smiles: str, rec_id: str | None = None, seed: int = 42) -> Molecule:
    """A 3-D conformer for a SMILES string: RDKit ETKDG embedding, then MMFF94 relaxation (UFF as fallback)."""
    Chem, AllChem = _rdkit()
    rec_id = rec_id or smiles
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise InvalidRecord(rec_id, f"invalid SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise InvalidRecord(rec_id, f"RDKit could not embed a 3-D conformer for {smiles!r}")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    else:
        AllChem.UFFOptimizeMolecule(mol, maxIters=2000)
    m = molecule_from_rdkit(mol, rec_id)
    m.smiles = smiles
    return m


def read_smiles(lines: Iterable[str | None], source: str = "smiles",
                name: str | None = None) -> Iterator[Molecule | InvalidRecord]:
    """Each non-empty line ``SMILES [id]`` -> a conformer (default id ``<source>:<line index>``); failures (and
    lines that are None: not UTF-8, as ``io.text_lines`` gives them) are yielded as ``InvalidRecord`` naming
    ``name`` (the file) and the line."""
    from .stream import line_problem
    name = name or source
    for i, line in enumerate(lines):
        if line_problem(line):
            yield InvalidRecord(f"{source}:{i}", f"{name}, line {i + 1}: {line_problem(line)}")
            continue
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        rec_id = parts[1] if len(parts) > 1 else f"{source}:{i}"
        try:
            yield smiles_to_molecule(parts[0], rec_id)
        except InvalidRecord as e:
            yield InvalidRecord(e.record, f"{name}, line {i + 1}: {e.problem}")

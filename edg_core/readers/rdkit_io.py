"""SDF/MOL files and SMILES strings through RDKit (imported lazily: RDKit is needed only here)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import DataSourceError, EDGError, InvalidRecord
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
            labels[k] = float(v)
    smiles = Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False)) if mol.GetNumAtoms() else None
    return Molecule(z=z, pos=pos, id=rec_id, charge=charge, multiplicity=n_rad + 1 if n_rad else None,
                    smiles=smiles, labels=labels)


def read_sdf(path: str | Path) -> Iterator[Molecule | InvalidRecord]:
    """Yield each record of an SDF (or a single MOL file); a record RDKit cannot parse is an ``InvalidRecord``."""
    Chem, _ = _rdkit()
    path = Path(path)
    if not path.exists():
        raise DataSourceError(f"SDF/MOL file {path} does not exist")
    supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=True)
    for i, mol in enumerate(supplier):
        rec_id = f"{path.stem}:{i}"
        if mol is None:
            yield InvalidRecord(rec_id, f"{path.name}: record {i} could not be parsed by RDKit")
            continue
        if mol.HasProp("_Name") and mol.GetProp("_Name").strip():
            rec_id = mol.GetProp("_Name").strip()
        try:
            yield molecule_from_rdkit(mol, rec_id)
        except InvalidRecord as e:
            yield e


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


def read_smiles(lines: Iterable[str], source: str = "smiles") -> Iterator[Molecule | InvalidRecord]:
    """Each non-empty line ``SMILES [id]`` -> a conformer; failures are yielded as ``InvalidRecord``."""
    for i, line in enumerate(lines):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        rec_id = parts[1] if len(parts) > 1 else f"{source}:{i}"
        try:
            yield smiles_to_molecule(parts[0], rec_id)
        except InvalidRecord as e:
            yield e

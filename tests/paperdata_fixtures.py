"""Small EDBench folders and PCQM4Mv2-style SDF files that tests write themselves (no downloads)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from edg.edg_core.grid import grid_for_positions
from edg.edg_core.molecule import Molecule
from edg.edg_core.readers.edbench import CUBES, write_csv, write_record
from edg.edg_core.units import ANGSTROM_IN_BOHR

SMALL = [
    Molecule(z=[8, 1, 1], pos=[[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]], id="water"),
    Molecule(z=[6, 1, 1, 1, 1], pos=[[0, 0, 0], [0.629, 0.629, 0.629], [-0.629, -0.629, 0.629],
                                     [-0.629, 0.629, -0.629], [0.629, -0.629, -0.629]], id="methane"),
    Molecule(z=[7, 1, 1, 1], pos=[[0, 0, 0.1], [0, 0.94, -0.26], [0.814, -0.47, -0.26], [-0.814, -0.47, -0.26]],
             id="ammonia"),
]


def gaussian_fields(mol: Molecule):
    """A density-like and a potential-like field on the molecule's grid: sum of atom-centred Gaussians
    (e/bohr^3) and their screened 1/r (Hartree/e); smooth, positive density, nothing computed by DFT."""
    grid = grid_for_positions(mol.pos)
    pts = grid.points()
    ed = np.zeros(len(pts))
    esp = np.zeros(len(pts))
    for z, p in zip(mol.z, mol.pos * ANGSTROM_IN_BOHR):
        r = np.linalg.norm(pts - p, axis=1)
        ed += z * 0.5 * np.exp(-1.5 * r)
        esp += (z / np.maximum(r, 0.3)) * np.exp(-r) * (1 if z == 1 else -0.2)
    return grid, ed.reshape(grid.shape), esp.reshape(grid.shape)


def write_edbench(folder: Path, mols=SMALL, set_name: str = "ed_energy_5w",
                  splits=("train", "valid", "test")) -> Path:
    """An EDBench set folder with ``mols`` (indices 0, 1, ...; ``scaffold_split`` cycling through ``splits``,
    ``random_split`` the reverse), labels ``E1..E6`` = (index + 1) * (1..6) and Gaussian fields."""
    folder = Path(folder)
    rows = []
    for i, m in enumerate(mols):
        grid, ed, esp = gaussian_fields(m)
        write_record(folder / "raw" / CUBES, str(i), m, grid, ed, esp)
        labels = {f"E{k}": float((i + 1) * k) for k in range(1, 7)}
        rows.append({"index": str(i), "smiles": "", "labels": labels, "scaffold_split": splits[i % len(splits)],
                     "random_split": splits[::-1][i % len(splits)]})
    write_csv(folder / "raw" / f"{set_name}.csv", set_name, rows)
    return folder


def write_pcqm_sdf(path: Path, smiles: list[str], seed: int = 7) -> list:
    """An SDF of RDKit conformers (hydrogens explicit) of ``smiles``, one record each, as pcqm4m-v2-train.sdf
    lays them out; returns the RDKit molecules written, in order."""
    from rdkit import Chem
    from rdkit.Chem import AllChem
    mols = []
    with Chem.SDWriter(str(path)) as w:
        for i, s in enumerate(smiles):
            rd = Chem.AddHs(Chem.MolFromSmiles(s))
            AllChem.EmbedMolecule(rd, randomSeed=seed + i)
            w.write(rd)
            mols.append(rd)
    return mols

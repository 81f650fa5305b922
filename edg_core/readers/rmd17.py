"""rMD17 (revised MD17; Christensen & von Lilienfeld 2020), in either of its two layouts.

* pre-split: ``rmd17_<mol>_{train,test}_<01..05>.npz`` with 1000 frames each (as in ../shared/data/rmd17);
* official archive: ``npz_data/rmd17_<mol>.npz`` (100k frames) + ``splits/index_{train,test}_0X.csv``.

Either way a split id k gives 950 train / 50 validation / 1000 test frames (Geom3D convention:
train = first 950 of the train indices, validation = the last 50, test = the test indices).
Energies in kcal/mol, forces in kcal/mol/Å, positions in Å (the files' own units).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataSourceError
from ..molecule import Molecule

MOLECULES = ("aspirin", "azobenzene", "benzene", "ethanol", "malonaldehyde", "naphthalene",
             "paracetamol", "salicylic", "toluene", "uracil")
N_TRAIN, N_VALID, N_TEST = 950, 50, 1000


@dataclass
class RMD17Frames:
    """Frames of one molecule: z (N,), pos (F, N, 3) Å, energy (F,) kcal/mol, forces (F, N, 3) kcal/mol/Å."""
    molecule: str
    z: np.ndarray
    pos: np.ndarray
    energy: np.ndarray
    forces: np.ndarray
    index: np.ndarray  # frame index in the original 100k-frame trajectory

    def __len__(self) -> int:
        return int(self.pos.shape[0])

    def __getitem__(self, sl) -> RMD17Frames:
        return RMD17Frames(self.molecule, self.z, self.pos[sl], self.energy[sl], self.forces[sl], self.index[sl])

    def molecules(self, split_name: str = ""):
        """Each frame as a ``Molecule`` (labels ``energy`` and ``forces``), id ``rmd17:<mol>:<frame index>``."""
        for p, e, f, i in zip(self.pos, self.energy, self.forces, self.index):
            yield Molecule(z=self.z, pos=p, id=f"rmd17:{self.molecule}:{int(i)}",
                           labels={"energy": float(e), "forces": f, "split": split_name})


def _check_molecule(name: str) -> None:
    if name not in MOLECULES:
        raise DataSourceError(f"unknown rMD17 molecule {name!r}; known: {', '.join(MOLECULES)}")


def _load_npz(path: Path, molecule: str, index: np.ndarray | None = None) -> RMD17Frames:
    try:
        d = np.load(path)
        z = d["nuclear_charges"].astype(np.int64)
        pos, energy, forces = d["coords"], d["energies"], d["forces"]
        idx = d["old_indices"] if "old_indices" in d.files else np.arange(len(energy))
    except (OSError, ValueError, KeyError) as e:
        raise DataSourceError(f"{path}: not a readable rMD17 npz ({e})") from None
    if index is not None:
        if index.max(initial=-1) >= len(energy):
            raise DataSourceError(f"{path}: split index {int(index.max())} beyond {len(energy)} frames")
        pos, energy, forces, idx = pos[index], energy[index], forces[index], index
    n = len(z)
    if pos.shape[1:] != (n, 3) or forces.shape != pos.shape or energy.shape != pos.shape[:1]:
        raise DataSourceError(f"{path}: inconsistent shapes z{z.shape} coords{pos.shape} "
                              f"energies{energy.shape} forces{forces.shape}")
    return RMD17Frames(molecule, z, pos.astype(np.float64), energy.astype(np.float64),
                       forces.astype(np.float64), np.asarray(idx, dtype=np.int64))


def _read_index_csv(path: Path) -> np.ndarray:
    if not path.exists():
        raise DataSourceError(f"rMD17 split file {path} does not exist")
    return np.array([int(float(x)) for x in path.read_text().split()], dtype=np.int64)


def load_rmd17_embedded(molecule: str) -> dict[str, RMD17Frames]:
    """The rMD17 frames shipped inside the package (24 ethanol, 16 aspirin; see edg_core/data/README.md),
    split 2/3 train, 1/6 validation, 1/6 test in file order. For demos and tests only."""
    from . import embedded_path
    from .xyz import read_xyz
    _check_molecule(molecule)
    mols = [m for m in read_xyz(embedded_path("rmd17")) if m.id.startswith(f"rmd17:{molecule}:")]
    if not mols:
        raise DataSourceError(f"the embedded data has no rMD17 {molecule} frames (only ethanol and aspirin)")
    frames = RMD17Frames(molecule, mols[0].z, np.stack([m.pos for m in mols]),
                         np.array([m.labels["energy"] for m in mols]), np.stack([m.labels["forces"] for m in mols]),
                         np.array([int(m.id.rsplit(":", 1)[1]) for m in mols], dtype=np.int64))
    n = len(frames)
    a, b = (2 * n) // 3, (2 * n) // 3 + n // 6
    return {"train": frames[:a], "valid": frames[a:b], "test": frames[b:]}


def load_rmd17(root: str | Path, molecule: str, split_id: int = 1) -> dict[str, RMD17Frames]:
    """``{"train": 950, "valid": 50, "test": 1000}`` frames of ``molecule`` from either layout under ``root``
    (``root="embedded"``: the small embedded set, see ``load_rmd17_embedded``)."""
    _check_molecule(molecule)
    if str(root) == "embedded":
        return load_rmd17_embedded(molecule)
    root = Path(root)
    if not root.exists():
        raise DataSourceError(f"rMD17 path {root} does not exist")
    sid = f"{int(split_id):02d}"
    presplit_train = root / f"rmd17_{molecule}_train_{sid}.npz"
    archive = root / "npz_data" / f"rmd17_{molecule}.npz"
    if presplit_train.exists():
        train = _load_npz(presplit_train, molecule)
        test = _load_npz(root / f"rmd17_{molecule}_test_{sid}.npz", molecule) \
            if (root / f"rmd17_{molecule}_test_{sid}.npz").exists() else None
        if test is None:
            raise DataSourceError(f"{root}: found {presplit_train.name} but not rmd17_{molecule}_test_{sid}.npz")
    elif archive.exists():
        tr_idx = _read_index_csv(root / "splits" / f"index_train_{sid}.csv")
        te_idx = _read_index_csv(root / "splits" / f"index_test_{sid}.csv")
        train = _load_npz(archive, molecule, tr_idx)
        test = _load_npz(archive, molecule, te_idx)
    else:
        raise DataSourceError(f"no rMD17 data for {molecule!r} split {sid} under {root}: expected "
                              f"{presplit_train.name} (pre-split layout) or npz_data/rmd17_{molecule}.npz "
                              f"+ splits/ (official archive layout)")
    if len(train) < N_TRAIN + N_VALID:
        raise DataSourceError(f"{root}: {molecule} split {sid} has {len(train)} training frames, "
                              f"need {N_TRAIN + N_VALID}")
    return {"train": train[:N_TRAIN], "valid": train[N_TRAIN:N_TRAIN + N_VALID], "test": test[:N_TEST]}

"""``DFTResult``: what the DFT stage produces for one molecule, and its per-molecule ``.npz`` file.

File ``<out>/fields/<key>.npz`` (written atomically) holds ``meta`` (a JSON string with every scalar),
``z`` (N,), ``pos`` (N, 3) Å, ``dipole`` (3,) Debye and, when fields were computed, ``ed`` and ``esp``
(float16 or float32, shape = grid shape) with ``grid_origin``/``grid_spacing``/``grid_shape`` (bohr).
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from edg.edg_core.errors import InvalidRecord
from edg.edg_core.grid import CubeGrid
from edg.edg_core.io import atomic_path

from .backend import to_numpy

RESULT_VERSION = 1


@dataclass
class DFTResult:
    """One molecule's DFT outputs. Energies in Hartree, HOMO/LUMO in Hartree, dipole in Debye,
    ED in e/bohr^3 and ESP in Hartree/e on ``grid`` (bohr); ``ed``/``esp`` may be CuPy arrays on GPU."""
    id: str
    energies: dict[str, float]
    homo: float
    lumo: float
    dipole: np.ndarray
    converged: bool
    wall_s: float
    z: np.ndarray
    pos: np.ndarray  # Å
    charge: int = 0
    multiplicity: int = 1
    method: str = ""  # e.g. "RKS b3lyp/6-31g** cartesian (cpu)"
    basis_functions: str = ""  # "cartesian" (6d/10f) or "spherical" (5d/7f); "" in files from before it was kept
    attempts: list[str] = field(default_factory=list)  # SCF attempts: "warm" first when warm-started
    scf_cycles: int = 0  # SCF iterations over every attempt; 0 in files from before it was kept
    timings: dict[str, float] = field(default_factory=dict)
    grid: CubeGrid | None = None
    ed: object = None
    esp: object = None
    esp_exact_fraction: float = 1.0

    def scalars(self) -> dict:
        """Every scalar as a JSON-friendly dict (the ``meta`` of the file)."""
        return {"version": RESULT_VERSION, "id": self.id, "energies": self.energies, "homo": self.homo,
                "lumo": self.lumo, "converged": self.converged, "wall_s": self.wall_s, "charge": self.charge,
                "multiplicity": self.multiplicity, "method": self.method,
                "basis_functions": self.basis_functions, "attempts": self.attempts, "scf_cycles": self.scf_cycles,
                "timings": self.timings, "esp_exact_fraction": self.esp_exact_fraction,
                "grid": self.grid.to_dict() if self.grid is not None else None}


def save_result(path: str | Path, r: DFTResult, dtype: str = "float16") -> None:
    """Write ``r`` to ``path`` (.npz) atomically; fields are stored as ``dtype`` (float16 or float32)."""
    arrays = {"meta": np.array(json.dumps(r.scalars())), "z": np.asarray(r.z, np.int64),
              "pos": np.asarray(r.pos, np.float64), "dipole": np.asarray(r.dipole, np.float64)}
    for name in ("ed", "esp"):
        a = getattr(r, name)
        if a is not None:
            arrays[name] = to_numpy(a).astype(dtype)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_result(path: str | Path) -> DFTResult:
    """Read a file written by ``save_result`` (a local path or an fsspec URL); fields come back as float32
    numpy arrays."""
    import io

    from edg.edg_core.storage import is_remote, read_bytes
    try:
        src = io.BytesIO(read_bytes(path)) if is_remote(path) else Path(path)
        with np.load(src, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            ed = f["ed"].astype(np.float32) if "ed" in f else None
            esp = f["esp"].astype(np.float32) if "esp" in f else None
            z, pos, dipole = f["z"], f["pos"], f["dipole"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:  # cut short, damaged, not ours
        raise InvalidRecord(str(path), f"not a readable DFT result file ({type(e).__name__}: {e})") from None
    if meta.get("version") != RESULT_VERSION:
        raise InvalidRecord(str(path), f"result version {meta.get('version')} != {RESULT_VERSION}")
    grid = CubeGrid.from_dict(meta["grid"]) if meta.get("grid") else None
    return DFTResult(id=meta["id"], energies=meta["energies"], homo=meta["homo"], lumo=meta["lumo"],
                     dipole=dipole, converged=meta["converged"], wall_s=meta["wall_s"], z=z, pos=pos,
                     charge=meta["charge"], multiplicity=meta["multiplicity"], method=meta["method"],
                     basis_functions=meta.get("basis_functions", ""),
                     attempts=meta["attempts"], scf_cycles=meta.get("scf_cycles", 0), timings=meta["timings"],
                     grid=grid, ed=ed, esp=esp,
                     esp_exact_fraction=meta["esp_exact_fraction"])


def result_sample(r: DFTResult, mol=None, **extra) -> dict:
    """A shard sample (``edg_core.shards.encode_sample``) of a result: the molecule with labels E1..E6,
    ``dft_homo``/``dft_lumo`` (Hartree) and ``dft_dipole`` (3,) Debye, plus float16 ED/ESP and grid.json.

    ``mol`` (the input record) keeps its own labels (e.g. the QM9 targets); ``extra`` goes to
    ``encode_sample`` (e.g. rendered images).
    """
    from edg.edg_core.molecule import Molecule
    from edg.edg_core.shards import encode_sample
    if mol is None:
        mol = Molecule(z=r.z, pos=r.pos, id=r.id, charge=r.charge, multiplicity=r.multiplicity)
    labels = dict(mol.labels)
    labels.update({k: float(v) for k, v in r.energies.items()})
    labels.update({"dft_homo": float(r.homo), "dft_lumo": float(r.lumo),
                   "dft_dipole": np.asarray(r.dipole, np.float64)})
    rec = Molecule(z=mol.z, pos=mol.pos, id=mol.id, charge=mol.charge, multiplicity=mol.multiplicity,
                   smiles=mol.smiles, labels=labels)
    ed = to_numpy(r.ed) if r.ed is not None else None
    esp = to_numpy(r.esp) if r.esp is not None else None
    return encode_sample(rec, grid=r.grid, ed=ed, esp=esp, **extra)

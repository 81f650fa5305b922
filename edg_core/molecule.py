"""The ``Molecule`` record: one conformation with optional labels.

Positions are in Å, shape (N, 3) float64; atomic numbers shape (N,) int64.
``labels`` maps a name to a float or an array (for example ``energy`` in kcal/mol and ``forces``
(N, 3) in kcal/mol/Å for rMD17, or the 12 QM9 targets).

A record EDG cannot compute is refused at construction with an ``InvalidRecord``: no atoms, shapes that
disagree, unknown elements, non-finite coordinates, an electron count <= 0, more than
``MAX_ELECTRONS_PER_PROTON`` electrons per unit of nuclear charge (``charge=-1000``), or a multiplicity the
electron count cannot have; the file readers also refuse two atoms closer than ``MIN_ATOM_DISTANCE_A``
(``check_atoms_apart``). ``inferred`` names what the source did not state and EDG chose:
``"charge"`` (0, set by the reader) and ``"multiplicity"`` (the lowest the electron count allows, set here).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import InvalidRecord
from .units import MAX_Z, z_to_symbol

MIN_ATOM_DISTANCE_A = 0.3
"""Two atoms closer than this (Å) are coincident: a broken record (the shortest real bond, H2, is 0.74 Å)."""
MAX_ELECTRONS_PER_PROTON = 2
"""More electrons than this times the nuclear charge is no molecule (H⁻ has 2 per proton, O²⁻ 1.25)."""


def closest_pair(pos: np.ndarray) -> tuple[int, int, float]:
    """The two closest atoms of ``pos`` (N >= 2, Å) and their distance; O(N log N) with a k-d tree."""
    if len(pos) <= 64:
        d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
        d[np.diag_indices_from(d)] = np.inf
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        return int(min(i, j)), int(max(i, j)), float(d[i, j])
    from scipy.spatial import cKDTree
    dist, idx = cKDTree(pos).query(pos, k=2)
    i = int(np.argmin(dist[:, 1]))
    j = int(idx[i, 1])
    return min(i, j), max(i, j), float(dist[i, 1])


@dataclass
class Molecule:
    z: np.ndarray
    pos: np.ndarray
    id: str
    charge: int = 0
    multiplicity: int | None = None
    smiles: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    inferred: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        self.id = str(self.id)
        try:
            self.z = np.asarray(self.z, dtype=np.int64).reshape(-1)
            self.pos = np.asarray(self.pos, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise InvalidRecord(self.id, f"cannot read atoms/positions as numbers ({e})") from None
        self.charge = int(self.charge)
        self.validate()
        self.inferred = tuple(self.inferred)
        if self.multiplicity is None:
            self.multiplicity = 1 if self.n_electrons % 2 == 0 else 2
            self.inferred = tuple(dict.fromkeys(self.inferred + ("multiplicity",)))
        self.multiplicity = int(self.multiplicity)
        unpaired = self.multiplicity - 1
        if self.multiplicity < 1 or unpaired > self.n_electrons or (self.n_electrons - unpaired) % 2:
            raise InvalidRecord(self.id, f"multiplicity {self.multiplicity} impossible with "
                                         f"{self.n_electrons} electrons")

    def validate(self) -> None:
        n = self.z.shape[0]
        if n == 0:
            raise InvalidRecord(self.id, "zero atoms")
        if self.pos.ndim != 2 or self.pos.shape[1] != 3:
            raise InvalidRecord(self.id, f"positions must have shape (N, 3), got {self.pos.shape}")
        if self.pos.shape[0] != n:
            raise InvalidRecord(self.id, f"{n} atomic numbers but {self.pos.shape[0]} positions")
        bad = (self.z < 1) | (self.z > MAX_Z)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidRecord(self.id, f"unknown element with atomic number {int(self.z[i])} at atom {i}")
        finite = np.isfinite(self.pos).all(axis=1)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise InvalidRecord(self.id, f"non-finite coordinates {self.pos[i].tolist()} at atom {i}")
        self._check_charge()

    def check_atoms_apart(self) -> Molecule:
        """Raise ``InvalidRecord`` when two atoms are closer than ``MIN_ATOM_DISTANCE_A`` (coincident: a broken
        record, such as an SDF with every atom at the origin); the readers of files call it on every record.
        Returns the molecule."""
        if self.n_atoms >= 2:
            i, j, d = closest_pair(self.pos)
            if d < MIN_ATOM_DISTANCE_A:
                raise InvalidRecord(self.id, f"coincident atoms: atoms {i} and {j} are {d:.3f} Å apart "
                                             f"(< {MIN_ATOM_DISTANCE_A} Å)")
        return self

    def _check_charge(self) -> None:
        protons = int(self.z.sum())
        if self.n_electrons <= 0:
            raise InvalidRecord(self.id, f"impossible charge {self.charge:+d}: leaves {self.n_electrons} electrons "
                                         f"(nuclear charge {protons})")
        if self.n_electrons > MAX_ELECTRONS_PER_PROTON * protons:
            raise InvalidRecord(self.id, f"impossible charge {self.charge:+d}: {self.n_electrons} electrons on a "
                                         f"nuclear charge of {protons} (more than {MAX_ELECTRONS_PER_PROTON} per "
                                         "proton)")

    def with_charge_state(self, charge: int | None = None, multiplicity: int | None = None) -> Molecule:
        """A copy with ``charge`` / ``multiplicity`` set where given (no longer inferred), re-validated; the
        multiplicity is inferred again when only the charge is set and the multiplicity was inferred."""
        inferred = tuple(k for k in self.inferred
                         if not (k == "charge" and charge is not None) and k != "multiplicity")
        mult = multiplicity if multiplicity is not None else (
            None if "multiplicity" in self.inferred else self.multiplicity)
        return replace(self, charge=self.charge if charge is None else charge, multiplicity=mult,
                       inferred=inferred)

    @property
    def n_atoms(self) -> int:
        return int(self.z.shape[0])

    @property
    def n_electrons(self) -> int:
        return int(self.z.sum()) - self.charge

    @property
    def symbols(self) -> list[str]:
        return [z_to_symbol(z) for z in self.z]

    @property
    def formula(self) -> str:
        syms = self.symbols
        order = sorted(set(syms), key=lambda s: (s != "C", s != "H", s))
        return "".join(f"{s}{syms.count(s) if syms.count(s) > 1 else ''}" for s in order)

    def to_xyz(self) -> str:
        """XYZ text (Å) with the id on the comment line."""
        lines = [str(self.n_atoms), self.id]
        lines += [f"{s:2s} {x: .8f} {y: .8f} {w: .8f}" for s, (x, y, w) in zip(self.symbols, self.pos)]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-friendly description (arrays as lists)."""
        def plain(v):
            return v.tolist() if isinstance(v, np.ndarray) else v
        return {"id": self.id, "z": self.z.tolist(), "pos": self.pos.tolist(), "charge": self.charge,
                "multiplicity": self.multiplicity, "smiles": self.smiles,
                "labels": {k: plain(v) for k, v in self.labels.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Molecule:
        labels = {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in d.get("labels", {}).items()}
        return cls(z=d["z"], pos=d["pos"], id=d["id"], charge=d.get("charge", 0),
                   multiplicity=d.get("multiplicity"), smiles=d.get("smiles"), labels=labels)

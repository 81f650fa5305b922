"""The ``Molecule`` record: one conformation with optional labels.

Positions are in Å, shape (N, 3) float64; atomic numbers shape (N,) int64.
``labels`` maps a name to a float or an array (for example ``energy`` in kcal/mol and ``forces``
(N, 3) in kcal/mol/Å for rMD17, or the 12 QM9 targets).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidRecord
from .units import MAX_Z, z_to_symbol


@dataclass
class Molecule:
    z: np.ndarray
    pos: np.ndarray
    id: str
    charge: int = 0
    multiplicity: int | None = None
    smiles: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.id = str(self.id)
        try:
            self.z = np.asarray(self.z, dtype=np.int64).reshape(-1)
            self.pos = np.asarray(self.pos, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise InvalidRecord(self.id, f"cannot read atoms/positions as numbers ({e})") from None
        self.charge = int(self.charge)
        self.validate()
        if self.multiplicity is None:
            self.multiplicity = 1 if self.n_electrons % 2 == 0 else 2
        self.multiplicity = int(self.multiplicity)
        if self.multiplicity < 1 or (self.n_electrons - (self.multiplicity - 1)) % 2:
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
        if self.n_electrons < 0:
            raise InvalidRecord(self.id, f"charge {self.charge} leaves a negative electron count")

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

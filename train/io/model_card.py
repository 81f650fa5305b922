"""The model card of an exported student: the domain it was trained on, and the verdict on a structure.

A card is plain data (JSON inside the model file) made from the run's training structures at export time:
the elements (atomic numbers), the compositions (Hill formulas, with how many training structures had each and
their energy range), the energy range over all training structures (eV) and the range of per-atom force norms
(eV/Å), plus what the data was (the training data spec, the split, how many structures).

``ModelCard.verdict(z, energy, forces)`` says whether a structure lies in that domain:

* ``refused``: an element the training data never had (the model has no information about it: its embedding row
  was never trained), fewer than 2 atoms, or positions that are not finite. Such a structure gets no energy.
* ``warn``: a composition never seen in training; an interatomic distance (within ``distance_cutoff``) that no
  training structure had for that pair of elements, to within one 0.1 Å bin (a bond stretched or squeezed
  beyond what the model saw: a C-C of 2.1 Å in ethanol), or a pair of elements never that close in training; an
  energy outside ``[min - margin, max + margin]`` of the training energies of the same composition (of all
  training structures when the composition is unseen), ``margin = max(10 % of the span, 2 std)``; a largest
  per-atom force norm above the training maximum by the same rule.
* ``in``: none of these.

Importing this module imports neither torch nor the training code (the model loader uses it).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from edg.edg_core.errors import EDGError
from edg.edg_core.units import ELEMENTS, MAX_Z

DISTANCE_BIN = 0.1  # Å: distances seen in training are kept as occupied bins of this width, widened by one bin
SPAN_MARGIN = 0.10  # fraction of the training span allowed beyond min/max
STD_MARGIN = 2.0    # standard deviations allowed beyond min/max (the larger of the two margins is used)
STATUSES = ("in", "warn", "refused")


class CardError(EDGError, ValueError):
    """A model card that is not what EDG writes (a missing or mistyped field): the file is refused."""


def pair_name(a: int, b: int) -> str:
    """``"H-C"``: the element pair of atomic numbers ``a``, ``b``, lighter first."""
    a, b = sorted((int(a), int(b)))
    return f"{ELEMENTS[a] if 0 < a <= MAX_Z else a}-{ELEMENTS[b] if 0 < b <= MAX_Z else b}"


def _pairs(z, pos, cutoff: float):
    """(pair names (P,), distances (P,) Å) of the atom pairs of one structure closer than ``cutoff``."""
    z = np.asarray(z)
    pos = np.asarray(pos, dtype=np.float64)
    i, j = np.triu_indices(len(z), k=1)
    d = np.linalg.norm(pos[i] - pos[j], axis=1)
    near = d < cutoff
    return [pair_name(a, b) for a, b in zip(z[i][near], z[j][near])], d[near]


def _intervals(bins: set[int]) -> list[list[float]]:
    """Occupied bins (indices of ``DISTANCE_BIN``), widened by one bin each side, as merged [lo, hi] Å."""
    wide = sorted({b + o for b in bins for o in (-1, 0, 1) if b + o >= 0})
    out: list[list[float]] = []
    for b in wide:
        lo, hi = round(b * DISTANCE_BIN, 6), round((b + 1) * DISTANCE_BIN, 6)
        if out and abs(out[-1][1] - lo) < 1e-9:
            out[-1][1] = hi
        else:
            out.append([lo, hi])
    return out


def formula(z) -> str:
    """Hill formula of atomic numbers ``z`` (C first, then H, then the rest alphabetically): ``C2H6O``."""
    counts = Counter(int(a) for a in z)
    symbols = {ELEMENTS[a] if 0 < a <= MAX_Z else f"Z{a}": n for a, n in counts.items()}
    first = [s for s in ("C", "H") if s in symbols] if "C" in symbols else []
    order = first + sorted(s for s in symbols if s not in first)
    return "".join(f"{s}{symbols[s] if symbols[s] > 1 else ''}" for s in order)


@dataclass
class Range:
    """Summary of values seen in training: ``min``, ``max``, ``mean``, ``std`` (population) and ``n``."""
    min: float
    max: float
    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values) -> Range:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.size == 0:
            raise CardError("no values to summarise")
        return cls(float(v.min()), float(v.max()), float(v.mean()), float(v.std()), int(v.size))

    def margin(self) -> float:
        """How far beyond [min, max] a value may lie before it is far outside: max(10 % span, 2 std)."""
        return max(SPAN_MARGIN * (self.max - self.min), STD_MARGIN * self.std)

    def outside(self, x: float) -> bool:
        m = self.margin()
        return not (self.min - m <= x <= self.max + m)

    def describe(self, unit: str) -> str:
        m = self.margin()
        return f"[{self.min - m:.4f}, {self.max + m:.4f}] {unit} (seen {self.min:.4f}..{self.max:.4f})"


@dataclass
class Verdict:
    """Whether a structure lies in the training domain: ``status`` in ``in``, ``warn``, ``refused``; ``reasons``
    says why (one short sentence each; empty when ``in``)."""
    status: str = "in"
    reasons: list[str] = field(default_factory=list)

    def add(self, status: str, reason: str) -> None:
        if STATUSES.index(status) > STATUSES.index(self.status):
            self.status = status
        self.reasons.append(reason)

    def to_dict(self) -> dict:
        return {"status": self.status, "reasons": list(self.reasons)}

    def __str__(self) -> str:
        return self.status if not self.reasons else f"{self.status}: {'; '.join(self.reasons)}"


@dataclass
class ModelCard:
    """The training domain of an exported student (see the module docstring). Energies in eV, forces in eV/Å.

    ``elements``: atomic numbers seen; ``formulas``: Hill formula -> energy ``Range`` of its training structures;
    ``energy``: ``Range`` over all training structures; ``force_norm``: ``Range`` of per-atom force norms;
    ``atoms``: ``Range`` of atoms per structure; ``data``: the training data (``spec``, ``split``, ``split_id``,
    ``structures``); ``distances``: element pair (``"C-C"``) -> the [lo, hi] Å intervals its distances below
    ``distance_cutoff`` Å covered in training (occupied 0.1 Å bins widened by one bin)."""
    elements: list[int]
    formulas: dict[str, Range]
    energy: Range
    force_norm: Range
    atoms: Range
    data: dict
    distances: dict[str, list[list[float]]] = field(default_factory=dict)
    distance_cutoff: float = 5.0
    units: dict = field(default_factory=lambda: {"energy": "eV", "forces": "eV/Å", "positions": "Å"})

    @classmethod
    def from_training(cls, z_list, energies, forces_list, data: dict, pos_list=None,
                      distance_cutoff: float = 5.0) -> ModelCard:
        """The card of training structures: ``z_list`` M arrays (n_m,), ``energies`` (M,) eV, ``forces_list``
        M arrays (n_m, 3) eV/Å, ``pos_list`` M arrays (n_m, 3) Å (None: no distance check), ``data`` what the
        training data was, ``distance_cutoff`` (Å, the model's cutoff) the range of the distance check."""
        if not len(z_list):
            raise CardError("no training structures to describe")
        energies = np.asarray(energies, dtype=np.float64)
        by_formula: dict[str, list[float]] = {}
        for z, e in zip(z_list, energies):
            by_formula.setdefault(formula(z), []).append(float(e))
        norms = np.concatenate([np.linalg.norm(np.asarray(f, dtype=np.float64), axis=1) for f in forces_list])
        bins: dict[str, set[int]] = {}
        for z, pos in zip(z_list, pos_list if pos_list is not None else []):
            names, d = _pairs(z, pos, distance_cutoff)
            for name, b in zip(names, (d // DISTANCE_BIN).astype(int)):
                bins.setdefault(name, set()).add(int(b))
        return cls(elements=sorted({int(a) for z in z_list for a in z}),
                   formulas={k: Range.of(v) for k, v in sorted(by_formula.items())},
                   energy=Range.of(energies), force_norm=Range.of(norms),
                   atoms=Range.of([len(z) for z in z_list]), data=dict(data),
                   distances={k: _intervals(v) for k, v in sorted(bins.items())},
                   distance_cutoff=float(distance_cutoff))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "model card") -> ModelCard:
        """A card read back from JSON, every field checked (a hand-edited or foreign card is a ``CardError``)."""
        if not isinstance(d, dict):
            raise CardError(f"{where}: expected an object, got {type(d).__name__}")
        need = {"elements", "formulas", "energy", "force_norm", "atoms", "data", "units", "distances",
                "distance_cutoff"}
        if set(d) != need:
            raise CardError(f"{where}: fields {sorted(d)} differ from {sorted(need)}")
        elements = d["elements"]
        if (not isinstance(elements, list) or not elements
                or not all(type(a) is int and 0 < a <= MAX_Z for a in elements)):
            raise CardError(f"{where}: elements must be a non-empty list of atomic numbers 1..{MAX_Z}")
        if not isinstance(d["formulas"], dict) or not d["formulas"]:
            raise CardError(f"{where}: formulas must be a non-empty object")
        if not isinstance(d["data"], dict) or not isinstance(d["units"], dict):
            raise CardError(f"{where}: data and units must be objects")
        cut = d["distance_cutoff"]
        if not isinstance(cut, (int, float)) or isinstance(cut, bool) or not 0 < cut <= 100:
            raise CardError(f"{where}: distance_cutoff must be a number of Å in (0, 100]")
        if not isinstance(d["distances"], dict) or not all(
                isinstance(k, str) and isinstance(v, list) and len(v) <= 10_000 and all(
                    isinstance(iv, list) and len(iv) == 2 and all(isinstance(x, (int, float)) and
                                                                  not isinstance(x, bool) for x in iv)
                    and 0 <= iv[0] < iv[1] for iv in v) for k, v in d["distances"].items()):
            raise CardError(f"{where}: distances must map element pairs to [lo, hi] intervals in Å")
        return cls(elements=list(elements),
                   formulas={str(k): _range(v, f"{where}: formulas.{k}") for k, v in d["formulas"].items()},
                   energy=_range(d["energy"], f"{where}: energy"),
                   force_norm=_range(d["force_norm"], f"{where}: force_norm"),
                   atoms=_range(d["atoms"], f"{where}: atoms"), data=d["data"], units=d["units"],
                   distances={k: [[float(a), float(b)] for a, b in v] for k, v in d["distances"].items()},
                   distance_cutoff=float(cut))

    def element_names(self) -> str:
        return ", ".join(ELEMENTS[a] for a in self.elements)

    def check_structure(self, z, pos) -> Verdict:
        """The verdict before any prediction: refused for unseen elements, < 2 atoms or non-finite positions;
        a warning for an unseen composition."""
        v = Verdict()
        z = np.asarray(z)
        unseen = sorted({int(a) for a in z} - set(self.elements))
        if unseen:
            names = ", ".join(ELEMENTS[a] if 0 < a <= MAX_Z else f"Z={a}" for a in unseen)
            v.add("refused", f"element{'s' if len(unseen) > 1 else ''} {names} never seen in training "
                             f"(seen: {self.element_names()})")
        if len(z) < 2:
            v.add("refused", f"{len(z)} atom(s): a molecule needs at least 2")
        if not np.all(np.isfinite(np.asarray(pos, dtype=np.float64))):
            v.add("refused", "positions that are not finite numbers")
        if v.status != "refused":
            f = formula(z)
            if f not in self.formulas:
                seen = ", ".join(list(self.formulas)[:5]) + (", ..." if len(self.formulas) > 5 else "")
                v.add("warn", f"composition {f} never seen in training (seen: {seen})")
            if self.distances:
                self._check_distances(v, z, pos)
        return v

    def _check_distances(self, v: Verdict, z, pos) -> None:
        """Warn for the pair (the farthest outside, one per element pair) whose distance training never had."""
        names, d = _pairs(z, pos, self.distance_cutoff)
        worst: dict[str, tuple[float, float]] = {}  # pair -> (how far outside, distance)
        for name, x in zip(names, d):
            seen = self.distances.get(name)
            if seen is None:
                worst.setdefault(name, (math.inf, float(x)))
                continue
            gap = min(0.0 if lo <= x < hi else min(abs(x - lo), abs(x - hi)) for lo, hi in seen)
            if gap > 0 and gap > worst.get(name, (0.0, 0.0))[0]:
                worst[name] = (gap, float(x))
        for name, (gap, x) in sorted(worst.items()):
            if math.isinf(gap):
                v.add("warn", f"{name} pair at {x:.2f} Å: that pair was never within {self.distance_cutoff:g} Å "
                              "in training")
            else:
                spans = ", ".join(f"{lo:.1f}-{hi:.1f}" for lo, hi in self.distances[name][:4])
                v.add("warn", f"{name} distance {x:.2f} Å never seen in training (seen: {spans} Å)")

    def check_prediction(self, v: Verdict, z, energy: float, forces) -> Verdict:
        """Add the energy and force checks of a predicted structure to its verdict ``v`` (and return it)."""
        ref = self.formulas.get(formula(z), self.energy)
        if not math.isfinite(energy) or ref.outside(energy):
            v.add("warn", f"energy {energy:.4f} eV far outside the training range {ref.describe('eV')}")
        if forces is not None and len(forces):
            top = float(np.linalg.norm(np.asarray(forces, dtype=np.float64), axis=1).max())
            r = self.force_norm
            if not math.isfinite(top) or top > r.max + r.margin():
                v.add("warn", f"largest atomic force {top:.4f} eV/Å above the training range "
                              f"(at most {r.max + r.margin():.4f}; seen {r.max:.4f})")
        return v


def _range(d, where: str) -> Range:
    keys = {"min", "max", "mean", "std", "n"}
    if not isinstance(d, dict) or set(d) != keys:
        raise CardError(f"{where}: expected an object with {sorted(keys)}")
    if not all(isinstance(d[k], (int, float)) and not isinstance(d[k], bool) and math.isfinite(d[k])
               for k in ("min", "max", "mean", "std")) or type(d["n"]) is not int:
        raise CardError(f"{where}: min, max, mean, std must be finite numbers and n an integer")
    if not d["min"] <= d["max"] or d["std"] < 0 or d["n"] < 1:
        raise CardError(f"{where}: min {d['min']} > max {d['max']}, a negative std or n < 1")
    return Range(float(d["min"]), float(d["max"]), float(d["mean"]), float(d["std"]), d["n"])

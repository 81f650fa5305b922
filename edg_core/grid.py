"""Cube grids: the box on which ED and ESP are sampled (all lengths in bohr).

A grid point (i, j, k) sits at ``origin + (i, j, k) * spacing``; arrays are indexed [i, j, k]
(x slowest, z fastest), the Gaussian cube order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .units import ANGSTROM_IN_BOHR

DEFAULT_SPACING_BOHR = 0.4
DEFAULT_PADDING_BOHR = 4.0


@dataclass(frozen=True)
class CubeGrid:
    origin: tuple[float, float, float]  # bohr
    spacing: tuple[float, float, float]  # bohr
    shape: tuple[int, int, int]

    @property
    def n_points(self) -> int:
        return int(np.prod(self.shape))

    def axes(self) -> list[np.ndarray]:
        """The x, y, z coordinates (bohr) of the grid planes."""
        return [o + s * np.arange(n) for o, s, n in zip(self.origin, self.spacing, self.shape)]

    def points(self) -> np.ndarray:
        """All grid points, shape (n_points, 3), bohr, in cube order."""
        x, y, z = np.meshgrid(*self.axes(), indexing="ij")
        return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)

    def to_dict(self) -> dict:
        return {"origin": list(self.origin), "spacing": list(self.spacing), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> CubeGrid:
        return cls(tuple(map(float, d["origin"])), tuple(map(float, d["spacing"])), tuple(map(int, d["shape"])))


def grid_for_positions(pos_angstrom: np.ndarray, spacing: float = DEFAULT_SPACING_BOHR,
                       padding: float = DEFAULT_PADDING_BOHR) -> CubeGrid:
    """The cube grid that encloses the atoms (Å) with ``padding`` bohr on every side (EDBench convention)."""
    p = np.asarray(pos_angstrom, dtype=np.float64) * ANGSTROM_IN_BOHR
    lo = p.min(axis=0) - padding
    hi = p.max(axis=0) + padding
    shape = np.ceil((hi - lo) / spacing).astype(int) + 1
    return CubeGrid(tuple(lo.tolist()), (spacing,) * 3, tuple(int(n) for n in shape))


def budget_problem(stage: str, n_atoms: int, max_atoms: int, max_grid_points: int = 0,
                   grid: CubeGrid | None = None, grid_name: str = "cube grid",
                   pos_angstrom: np.ndarray | None = None) -> str | None:
    """Why a molecule is too large for a stage's ``max_atoms`` / ``max_grid_points`` budget (0 = no limit), or
    None: the one rule the DFT and render workers refuse molecules by, up front, naming the size. The grid is
    checked only when ``grid`` is given; ``pos_angstrom`` adds the molecule's extent (Å) to a grid refusal."""
    if max_atoms and n_atoms > max_atoms:
        return f"too large for the {stage} budget: {n_atoms} atoms > max_atoms {max_atoms}"
    if max_grid_points and grid is not None and grid.n_points > max_grid_points:
        why = (f"too large for the {stage} budget: {grid_name} {tuple(grid.shape)} = {grid.n_points} points > "
               f"max_grid_points {max_grid_points}")
        if pos_angstrom is not None:
            extent = np.ptp(np.asarray(pos_angstrom, dtype=np.float64), axis=0)
            why += f" (extent {' x '.join(f'{x:.1f}' for x in extent)} A)"
        return why
    return None

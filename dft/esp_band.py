"""Fast CPU ESP: exact values only near the ED isosurface, a fitted point-charge model elsewhere.

The renderer colours the ED isosurface (rho = 0.05 e/bohr^3) by the ESP interpolated from the grid, so it
reads the ESP only at the corners of grid cells the isosurface passes through. ``band_mask`` marks those
corners plus every point whose density lies in a band around the isovalue; the exact ESP (the expensive
``int1e_grids`` integrals) is evaluated there only. All other points get the potential of atomic point
charges fitted by least squares to the exact band values (total charge constrained, as in ESP-charge
fitting), which is smooth, finite and cheap: (points x atoms) operations.
"""
from __future__ import annotations

import numpy as np

from .fields import electronic_potential_cpu, nuclear_potential

MIN_MODEL_DISTANCE_BOHR = 0.5
"""The point-charge model uses max(|r - R_A|, this): points that deep inside an atom are never rendered."""


def _cell_extrema(ed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of the 8 corners of every grid cell, shapes (nx-1, ny-1, nz-1)."""
    corners = [ed[i:ed.shape[0] - 1 + i, j:ed.shape[1] - 1 + j, k:ed.shape[2] - 1 + k]
               for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    return np.minimum.reduce(corners), np.maximum.reduce(corners)


def band_mask(ed: np.ndarray, iso: float = 0.05, band: tuple[float, float] = (0.01, 0.25)) -> np.ndarray:
    """Boolean grid (same shape as ``ed``): points whose ESP the isosurface renderer can read.

    True where ``band[0] <= ed <= band[1]`` and at all 8 corners of every cell the ``iso`` surface crosses.
    """
    ed = np.asarray(ed, dtype=np.float64)
    mask = (ed >= band[0]) & (ed <= band[1])
    lo, hi = _cell_extrema(ed)
    crossing = (lo < iso) & (hi >= iso)
    n0, n1, n2 = crossing.shape
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                mask[i:i + n0, j:j + n1, k:k + n2] |= crossing
    return mask


def fit_point_charges(r_atoms: np.ndarray, points: np.ndarray, values: np.ndarray,
                      total_charge: float) -> np.ndarray:
    """Atomic charges q (natm,) minimising sum_p (sum_A q_A/|r_p - R_A| - V_p)^2 subject to sum q = total.

    ``r_atoms`` (natm, 3) and ``points`` (npts, 3) in bohr; ``values`` (npts,) Hartree/e.
    """
    a = 1.0 / np.maximum(np.linalg.norm(points[:, None, :] - r_atoms[None, :, :], axis=-1),
                         MIN_MODEL_DISTANCE_BOHR)
    n = r_atoms.shape[0]
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = a.T @ a
    kkt[:n, n] = kkt[n, :n] = 1.0
    rhs = np.concatenate([a.T @ values, [total_charge]])
    return np.linalg.lstsq(kkt, rhs, rcond=None)[0][:n]


def point_charge_potential(r_atoms: np.ndarray, q: np.ndarray, points: np.ndarray) -> np.ndarray:
    """sum_A q_A / max(|r - R_A|, MIN_MODEL_DISTANCE_BOHR) at ``points`` (npts, 3) bohr -> (npts,)."""
    out = np.empty(points.shape[0])
    for s in range(0, points.shape[0], 32768):
        d = np.linalg.norm(points[s:s + 32768, None, :] - r_atoms[None, :, :], axis=-1)
        out[s:s + 32768] = (q[None, :] / np.maximum(d, MIN_MODEL_DISTANCE_BOHR)).sum(axis=1)
    return out


def esp_band_cpu(pmol, dm: np.ndarray, points: np.ndarray, ed: np.ndarray, iso: float = 0.05,
                 band: tuple[float, float] = (0.01, 0.25), chunk: int = 0,
                 max_memory_mb: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """ESP on a cube grid, exact inside ``band_mask`` and point-charge-modelled outside.

    ``points`` (npts, 3) bohr in cube order and ``ed`` (nx, ny, nz) the density on the same grid.
    Returns (esp (npts,) Hartree/e, mask (npts,) bool: True where the value is exact).
    """
    ed = np.asarray(ed)
    if ed.ndim != 3 or ed.size != points.shape[0]:
        raise ValueError(f"esp_band_cpu needs the density as a 3-D grid of {points.shape[0]} points, got {ed.shape}")
    mask = band_mask(ed, iso, band).reshape(-1)
    exact_pts = points[mask]
    exact = nuclear_potential(pmol, exact_pts) - electronic_potential_cpu(pmol, dm, exact_pts, chunk,
                                                                          max_memory_mb)
    r_atoms = pmol.atom_coords(unit="Bohr")
    q = fit_point_charges(r_atoms, exact_pts, exact, float(pmol.charge))
    out = np.empty(points.shape[0])
    out[mask] = exact
    out[~mask] = point_charge_potential(r_atoms, q, points[~mask])
    return out, mask

"""Fast CPU ESP: exact values near the ED isosurface, interpolated from a coarse exact grid elsewhere.

The renderer colours the ED isosurface (rho = 0.05 e/bohr^3) by the ESP interpolated from the grid, so it
reads the ESP only at the corners of grid cells the isosurface passes through. ``band_mask`` marks those
corners plus every point whose density lies in a band around the isovalue; the exact ESP (the expensive
``int1e_grids`` integrals) is evaluated there and on a coarse sub-grid (every ``stride``-th point along each
axis, plus the last plane). At all other points the ESP minus the short-range part of the nuclear
potential (sum_A Z_A erfc(r_A/sigma)/r_A, which holds the 1/r singularities and vanishes outside the
molecule) is interpolated trilinearly from the coarse exact values, and that short-range part, cheap to
evaluate exactly (points x atoms), is added back. Outside the molecule this interpolates the small, smooth
ESP itself; inside it interpolates a function without singularities.
"""
from __future__ import annotations

import numpy as np

from .fields import NUCLEUS_CUTOFF_BOHR, electronic_potential_cpu, nuclear_potential


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


def coarse_axes(shape: tuple[int, int, int], stride: int) -> list[np.ndarray]:
    """Indices of the coarse sub-grid along each axis: every ``stride``-th index and always the last one."""
    return [np.unique(np.append(np.arange(0, n, stride), n - 1)) for n in shape]


def esp_band_cpu(pmol, dm: np.ndarray, points: np.ndarray, ed: np.ndarray, *, iso: float = 0.05,
                 band: tuple[float, float] = (0.01, 0.25), stride: int = 3, sigma: float = 1.0, chunk: int = 0,
                 max_memory_mb: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """ESP on a cube grid, exact inside ``band_mask`` and on a coarse sub-grid, interpolated elsewhere.

    ``points`` (npts, 3) bohr in cube order and ``ed`` (nx, ny, nz) the density on the same grid.
    Returns (esp (npts,) Hartree/e, exact (npts,) bool: True where the value was computed exactly).
    """
    from scipy.interpolate import RegularGridInterpolator
    ed = np.asarray(ed)
    if ed.ndim != 3 or ed.size != points.shape[0]:
        raise ValueError(f"esp_band_cpu needs the density as a 3-D grid of {points.shape[0]} points, "
                         f"got shape {ed.shape}")
    if sigma <= 0 or stride < 1:
        raise ValueError(f"esp_band_cpu: need sigma > 0 and stride >= 1, got sigma={sigma}, stride={stride}")
    shape = ed.shape
    band_pts = band_mask(ed, iso, band)
    axes = coarse_axes(shape, stride)
    coarse = np.zeros(shape, dtype=bool)
    coarse[np.ix_(*axes)] = True
    exact = (band_pts | coarse).reshape(-1)
    sel = points[exact]
    values = np.full(points.shape[0], np.nan)
    values[exact] = nuclear_potential(pmol, sel) - electronic_potential_cpu(pmol, dm, sel, chunk, max_memory_mb)
    short = short_range_nuclear(pmol, points, sigma)
    smooth = values - short
    pts3 = points.reshape(*shape, 3)
    axis_coords = [pts3[:, 0, 0, 0][axes[0]], pts3[0, :, 0, 1][axes[1]], pts3[0, 0, :, 2][axes[2]]]
    interp = RegularGridInterpolator(axis_coords, smooth.reshape(shape)[np.ix_(*axes)], method="linear")
    values[~exact] = interp(points[~exact]) + short[~exact]
    return values, exact


def short_range_nuclear(pmol, points: np.ndarray, sigma: float) -> np.ndarray:
    """sum_A Z_A erfc(r_A/sigma)/r_A: the nuclear singularities alone, negligible beyond ~3 sigma (bohr)."""
    from scipy.special import erfc
    r_nuc = pmol.atom_coords(unit="Bohr")
    z = pmol.atom_charges().astype(np.float64)
    out = np.empty(points.shape[0])
    for s in range(0, points.shape[0], 32768):
        d = np.maximum(np.linalg.norm(points[s:s + 32768, None, :] - r_nuc[None], axis=-1), NUCLEUS_CUTOFF_BOHR)
        out[s:s + 32768] = (z * erfc(d / sigma) / d).sum(axis=1)
    return out

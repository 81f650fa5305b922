"""ED and ESP from cube files, resampled onto EDG's grid: the renderer's input without running any DFT.

Units: cube grids and positions inside them in bohr, ED in e/bohr^3, ESP in Hartree/e (what Psi4's CUBEPROP
and our DFT stage write); molecule positions in Å. The target grid is ``grid_for_positions`` of the molecule
(0.4 bohr spacing, 4.0 bohr padding: EDBench's convention), so the renderer sees the same grid whether the
fields came from our DFT or from someone's cube files. Values are interpolated trilinearly; points outside the
cube take the value of the nearest cube point (the cube's own padding is 4 bohr, where ED is ~1e-3 of its
isosurface level). When the cube's atoms sit in another frame than the molecule's (a program that moved the
molecule to its centre of mass or principal axes), the rigid transform between the two sets of atoms is found
and the grid points are carried into the cube's frame before interpolation. Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cube import MAX_CUBE_POINTS, Cube, read_cube
from .errors import InvalidRecord
from .grid import DEFAULT_PADDING_BOHR, DEFAULT_SPACING_BOHR, CubeGrid, grid_for_positions
from .units import ANGSTROM_IN_BOHR

__all__ = ["CubeFields", "trilinear", "frame_transform", "resample_cube", "fields_from_cubes"]

SAME_FRAME_ANGSTROM = 1e-3
"""Cube atoms within this of the molecule's atoms: the same frame (cube files keep 6 decimals in bohr)."""
MAX_FRAME_RMSD_ANGSTROM = 0.05
"""Largest RMSD after the best rigid fit for which cube atoms count as the molecule's, moved (Psi4 may
symmetrise a geometry by a few mÅ); beyond it the cube belongs to another geometry and is refused."""


@dataclass
class CubeFields:
    """One molecule's ED (e/bohr^3) and ESP (Hartree/e), float32 arrays of ``grid.shape`` on ``grid`` (bohr):
    the attributes of ``render.worker.Fields``, which ``render.cube_input`` builds from it."""
    grid: CubeGrid
    ed: np.ndarray
    esp: np.ndarray


def trilinear(values: np.ndarray, grid: CubeGrid, points: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """``values`` (grid.shape) on ``grid`` interpolated at ``points`` (M, 3), bohr -> (M,) float64.
    Points outside the grid take the value at the nearest face (clamped)."""
    values = np.asarray(values, dtype=np.float64)
    shape = np.array(grid.shape)
    flat = values.reshape(-1)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    out = np.empty(len(points))
    origin, spacing = np.asarray(grid.origin), np.asarray(grid.spacing)
    for s in range(0, len(points), chunk):
        f = (points[s:s + chunk] - origin) / spacing
        f = np.clip(f, 0.0, shape - 1)
        i0 = np.minimum(np.floor(f).astype(np.int64), np.maximum(shape - 2, 0))
        t = f - i0
        i1 = np.minimum(i0 + 1, shape - 1)
        acc = np.zeros(len(f))
        for cx in (0, 1):
            wx = t[:, 0] if cx else 1.0 - t[:, 0]
            ix = (i1 if cx else i0)[:, 0] * strides[0]
            for cy in (0, 1):
                wy = t[:, 1] if cy else 1.0 - t[:, 1]
                iy = (i1 if cy else i0)[:, 1] * strides[1]
                for cz in (0, 1):
                    wz = t[:, 2] if cz else 1.0 - t[:, 2]
                    acc += wx * wy * wz * flat[ix + iy + (i1 if cz else i0)[:, 2]]
        out[s:s + chunk] = acc
    return out


def frame_transform(record: str, z, pos_angstrom, cube: Cube) -> tuple[np.ndarray, np.ndarray] | None:
    """``(R, t)`` with ``x_cube = R @ x + t`` (bohr) carrying the molecule's frame into the cube's, or ``None``
    when they are one frame (or the cube lists no atoms). Raises ``InvalidRecord`` naming ``record`` when the
    cube's atoms are not the molecule's (other elements, count, or geometry)."""
    if len(cube.z) == 0:
        return None
    z = np.asarray(z, dtype=np.int64)
    a = np.asarray(pos_angstrom, dtype=np.float64)
    if len(cube.z) != len(z) or not np.array_equal(cube.z, z):
        raise InvalidRecord(record, f"the cube's {len(cube.z)} atoms are not the molecule's {len(z)} "
                                    "(elements or order differ)")
    b = np.asarray(cube.pos, dtype=np.float64)
    if np.abs(a - b).max() < SAME_FRAME_ANGSTROM:
        return None
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    u, _, vt = np.linalg.svd((a - ca).T @ (b - cb))
    rot = vt.T @ u.T  # orthogonal; a mirror image is still the same density seen from the other side
    rmsd = float(np.sqrt((((a - ca) @ rot.T - (b - cb)) ** 2).sum(axis=1).mean()))
    if rmsd > MAX_FRAME_RMSD_ANGSTROM:
        raise InvalidRecord(record, f"the cube's atoms do not match the molecule's geometry (RMSD {rmsd:.3f} Å "
                                    f"after the best rigid fit, limit {MAX_FRAME_RMSD_ANGSTROM} Å)")
    return rot, (cb - rot @ ca) * ANGSTROM_IN_BOHR


def resample_cube(cube: Cube, grid: CubeGrid, transform=None) -> np.ndarray:
    """The cube's values at the points of ``grid`` (bohr, the molecule's frame), float32 of ``grid.shape``;
    ``transform`` (from ``frame_transform``) carries the points into the cube's frame first."""
    pts = grid.points()
    if transform is not None:
        rot, t = transform
        pts = pts @ rot.T + t
    return trilinear(cube.data, cube.grid, pts).astype(np.float32).reshape(grid.shape)


def fields_from_cubes(record: str, z, pos_angstrom, ed_cube: str | Path, esp_cube: str | Path,
                      spacing: float = DEFAULT_SPACING_BOHR, padding: float = DEFAULT_PADDING_BOHR,
                      max_points: int = MAX_CUBE_POINTS) -> CubeFields:
    """ED and ESP cube files of one molecule (``z``, ``pos_angstrom`` Å) -> ``CubeFields`` on
    ``grid_for_positions(pos, spacing, padding)``. Any problem (unreadable or oversized cube, cubes of another
    molecule) is one ``InvalidRecord`` naming ``record`` and the file."""
    grid = grid_for_positions(pos_angstrom, spacing, padding)
    if grid.n_points > max_points:
        raise InvalidRecord(record, f"target grid {grid.shape} = {grid.n_points} points > max_points {max_points}")
    arrays = []
    for path in (ed_cube, esp_cube):
        try:
            cube = read_cube(path, max_points=max_points)
            arrays.append(resample_cube(cube, grid, frame_transform(record, z, pos_angstrom, cube)))
        except InvalidRecord as e:
            raise InvalidRecord(record, f"{path}: {e.problem}") from None
    return CubeFields(grid, arrays[0], arrays[1])

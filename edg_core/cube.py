"""Gaussian cube files (the format PyMOL, VMD and cubegen use) for ED and ESP grids.

Layout: two comment lines; ``natoms ox oy oz``; three ``n vx vy vz`` axis lines; one line per atom
``Z charge x y z``; then the values with x slowest and z fastest, six per line. Lengths are in bohr
(a negative axis count means Å; the reader accepts both, the writer always writes bohr).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidRecord
from .grid import CubeGrid
from .io import atomic_path
from .units import ANGSTROM_IN_BOHR, BOHR_IN_ANGSTROM


@dataclass
class Cube:
    """A cube file's content: grid (bohr), atoms (atomic numbers, positions in Å) and values (nx, ny, nz)."""
    grid: CubeGrid
    z: np.ndarray
    pos: np.ndarray  # Å
    data: np.ndarray
    comment: str = ""


def write_cube(path: str | Path, grid: CubeGrid, data, z, pos_angstrom, comment: str = "EDG cube") -> None:
    """Write ``data`` (grid.shape, any float dtype, numpy or cupy) as a Gaussian cube file, atomically."""
    data = np.asarray(data.get() if hasattr(data, "get") else data, dtype=np.float64)
    if tuple(data.shape) != tuple(grid.shape):
        raise ValueError(f"{path}: data shape {data.shape} != grid shape {grid.shape}")
    z = np.asarray(z, dtype=np.int64)
    pos = np.asarray(pos_angstrom, dtype=np.float64) * ANGSTROM_IN_BOHR
    nx, ny, nz = grid.shape
    head = [comment.replace("\n", " ")[:200], "Outer loop: X, middle: Y, inner: Z (bohr)",
            f"{len(z):5d} {grid.origin[0]:12.6f} {grid.origin[1]:12.6f} {grid.origin[2]:12.6f}",
            f"{nx:5d} {grid.spacing[0]:12.6f} {0.0:12.6f} {0.0:12.6f}",
            f"{ny:5d} {0.0:12.6f} {grid.spacing[1]:12.6f} {0.0:12.6f}",
            f"{nz:5d} {0.0:12.6f} {0.0:12.6f} {grid.spacing[2]:12.6f}"]
    head += [f"{int(a):5d} {float(a):12.6f} {x:12.6f} {y:12.6f} {w:12.6f}" for a, (x, y, w) in zip(z, pos)]
    row_fmt = (" %12.5E" * 6 + "\n") * (nz // 6) + ((" %12.5E" * (nz % 6) + "\n") if nz % 6 else "")
    body = "".join(row_fmt % tuple(row) for row in data.reshape(nx * ny, nz))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(head) + "\n" + body)


def read_cube(path: str | Path) -> Cube:
    """Read a Gaussian cube file (bohr or Å axes; MO cubes with a negative atom count included)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
        natm_line = lines[2].split()
        natm = int(natm_line[0])
        origin = np.array([float(x) for x in natm_line[1:4]])
        axes, counts = [], []
        for line in lines[3:6]:
            f = line.split()
            counts.append(int(f[0]))
            axes.append([float(x) for x in f[1:4]])
        axes = np.array(axes)
        if not np.allclose(axes - np.diag(np.diag(axes)), 0.0):
            raise ValueError("non-orthogonal (skewed) cube axes are not supported")
        angstrom_axes = counts[0] < 0
        counts = [abs(c) for c in counts]
        spacing = np.diag(axes)
        if angstrom_axes:
            origin, spacing = origin * ANGSTROM_IN_BOHR, spacing * ANGSTROM_IN_BOHR
        atoms = np.array([[float(x) for x in line.split()[:5]] for line in lines[6:6 + abs(natm)]]).reshape(-1, 5)
        start = 6 + abs(natm) + (1 if natm < 0 else 0)  # MO cubes carry one extra line of orbital ids
        values = np.array(" ".join(lines[start:]).split(), dtype=np.float64)
    except (IndexError, ValueError) as e:
        raise InvalidRecord(str(path), f"not a readable cube file ({e})") from None
    n = int(np.prod(counts))
    if values.size != n:
        raise InvalidRecord(str(path), f"cube holds {values.size} values, header says {counts} = {n}")
    grid = CubeGrid(tuple(origin.tolist()), tuple(spacing.tolist()), tuple(counts))
    pos_bohr = atoms[:, 2:5] if not angstrom_axes else atoms[:, 2:5] * ANGSTROM_IN_BOHR
    return Cube(grid=grid, z=atoms[:, 0].astype(np.int64), pos=pos_bohr * BOHR_IN_ANGSTROM,
                data=values.reshape(counts), comment=lines[0])

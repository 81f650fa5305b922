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


MAX_CUBE_POINTS = 32_000_000
"""Largest grid ``read_cube`` accepts by default (256 MB as float64): a 0.4-bohr grid of a 60-Å box."""
MAX_CUBE_ATOMS = 10_000
MAX_CHARS_PER_VALUE = 40
"""A value in a cube file is 12-18 characters; a file larger than its header's points allow is refused."""


def _header_problem(natm: int, counts: list[int], spacing: np.ndarray, max_points: int) -> str | None:
    if abs(natm) > MAX_CUBE_ATOMS:
        return f"header says {abs(natm)} atoms (more than {MAX_CUBE_ATOMS})"
    if any(c == 0 for c in counts):
        return f"header says a grid of {counts} points"
    n = int(np.prod([abs(c) for c in counts], dtype=np.int64))
    if n > max_points:
        return f"header says {counts} = {n} grid points (more than max_points {max_points})"
    if not (np.isfinite(spacing).all() and (np.abs(spacing) > 0).all()):
        return f"grid spacing {spacing.tolist()} is not finite and positive"
    return None


def read_cube(path: str | Path, max_points: int = MAX_CUBE_POINTS) -> Cube:
    """Read a Gaussian cube file (bohr or Å axes; MO cubes with a negative atom count included).

    Hostile input is one ``InvalidRecord`` naming the file: a header asking for more than ``max_points`` grid
    points or ``MAX_CUBE_ATOMS`` atoms, or a file larger than its header's values can fill, is refused before
    the values are read; so are skewed axes, a value count that does not match the header and non-finite values.
    """
    import warnings
    path = Path(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:  # a non-UTF-8 value fails to parse below
            lines = [f.readline() for _ in range(6)]
            if not lines[5].strip():
                raise ValueError("the file ends inside the 6-line header")
            natm_line = lines[2].split()
            natm = int(natm_line[0])
            origin = np.array([float(x) for x in natm_line[1:4]])
            axes, counts = [], []
            for line in lines[3:6]:
                fields = line.split()
                counts.append(int(fields[0]))
                axes.append([float(x) for x in fields[1:4]])
            axes = np.array(axes)
            if axes.shape != (3, 3) or origin.shape != (3,):
                raise ValueError("header lines 3-6 need a count and three numbers each")
            if not np.allclose(axes - np.diag(np.diag(axes)), 0.0):
                raise ValueError("non-orthogonal (skewed) cube axes are not supported")
            spacing = np.diag(axes)
            why = _header_problem(natm, counts, spacing, max_points)
            if why:
                raise ValueError(why)
            n = int(np.prod([abs(c) for c in counts]))
            size = path.stat().st_size
            if size > 200 * (abs(natm) + 8) + MAX_CHARS_PER_VALUE * n:
                raise ValueError(f"{size} bytes is more than {n} values can fill")
            atom_lines = [f.readline() for _ in range(abs(natm) + (1 if natm < 0 else 0))]
            if atom_lines and not atom_lines[-1].strip():
                raise ValueError(f"the file ends inside the {abs(natm)} atom lines")
            atoms = np.array([[float(x) for x in line.split()[:5]] for line in atom_lines[:abs(natm)]],
                             dtype=np.float64).reshape(-1, 5)  # MO cubes carry one extra line of orbital ids
            body = f.read()
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # numpy < 2.3 only warns on a bad token
            values = np.fromstring(body, dtype=np.float64, sep=" ")
    except (IndexError, ValueError, DeprecationWarning, UnicodeDecodeError, OSError) as e:
        raise InvalidRecord(str(path), f"not a readable cube file ({e})") from None
    angstrom_axes = counts[0] < 0
    counts = [abs(c) for c in counts]
    if angstrom_axes:
        origin, spacing = origin * ANGSTROM_IN_BOHR, spacing * ANGSTROM_IN_BOHR
    if values.size != n:
        raise InvalidRecord(str(path), f"cube holds {values.size} values, header says {counts} = {n}")
    if not np.isfinite(values).all():
        raise InvalidRecord(str(path), f"cube holds {int((~np.isfinite(values)).sum())} non-finite values")
    grid = CubeGrid(tuple(origin.tolist()), tuple(spacing.tolist()), tuple(counts))
    pos_bohr = atoms[:, 2:5] if not angstrom_axes else atoms[:, 2:5] * ANGSTROM_IN_BOHR
    return Cube(grid=grid, z=atoms[:, 0].astype(np.int64), pos=pos_bohr * BOHR_IN_ANGSTROM,
                data=values.reshape(counts), comment=lines[0].rstrip("\r\n"))

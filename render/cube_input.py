"""Render items from cube files (no DFT): ``(Molecule, Fields)`` pairs for ``edg render --input edbench:DIR``.

``edbench_items(spec)`` reads the records of an ``edbench:DIR`` spec (``edg_core.readers.edbench``) and, for
each, its ``Mol1_Dt.cube`` and ``Mol1_ESP.cube`` resampled onto the molecule's grid (0.4 bohr spacing, 4.0
bohr padding; ``edg_core.cube_fields``). A record whose SDF or cubes are missing or unreadable comes back as
one ``InvalidRecord`` naming it, and the next record is read. With ``lazy=True`` the items are
``(Molecule, CubeRef)``: a few bytes each, the cubes read by whichever worker renders the molecule
(``CubeRef.load``), so that a Ray driver does not read every cube itself.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from edg.edg_core.errors import InvalidRecord
from edg.edg_core.grid import DEFAULT_PADDING_BOHR, DEFAULT_SPACING_BOHR
from edg.edg_core.molecule import Molecule

from .worker import Fields


@dataclass(frozen=True)
class CubeRef:
    """Where one record's ``Mol1_Dt.cube`` / ``Mol1_ESP.cube`` are and the grid to resample them onto."""
    folder: str
    spacing: float = DEFAULT_SPACING_BOHR
    padding: float = DEFAULT_PADDING_BOHR
    max_points: int | None = None

    def load(self, mol: Molecule) -> Fields:
        """The record's ``Fields`` (ED e/bohr^3, ESP Hartree/e, float32 on ``grid_for_positions(mol.pos)``);
        raises ``InvalidRecord`` naming ``mol`` and the file."""
        from pathlib import Path

        from edg.edg_core.readers.edbench import cube_fields_of
        kw = {"spacing": self.spacing, "padding": self.padding}
        if self.max_points is not None:
            kw["max_points"] = self.max_points
        f = cube_fields_of(mol, Path(self.folder), **kw)
        return Fields(f.grid, f.ed, f.esp)


def edbench_items(spec, spacing: float = DEFAULT_SPACING_BOHR, padding: float = DEFAULT_PADDING_BOHR,
                  max_points: int | None = None, lazy: bool = False
                  ) -> Iterator[tuple[Molecule, Fields | CubeRef] | InvalidRecord]:
    """``(molecule, Fields)`` per record of ``spec`` (text or ``DatasetSpec``, dataset ``edbench``), or
    ``(molecule, CubeRef)`` with ``lazy``. ``max_points`` caps the cube and target grid sizes (default
    ``edg_core.cube.MAX_CUBE_POINTS``)."""
    from edg.edg_core.datasets import resolve
    from edg.edg_core.readers.edbench import edbench_set
    spec = resolve(spec)
    if spec.name != "edbench":
        raise ValueError(f"edbench_items needs an edbench: spec, not {str(spec)!r}")
    for n, item in enumerate(edbench_set(spec).records()):
        if spec.limit is not None and n >= spec.limit:
            return
        if isinstance(item, InvalidRecord):
            yield item
            continue
        mol, folder = item
        ref = CubeRef(str(folder), spacing, padding, max_points)
        if lazy:
            yield mol, ref
            continue
        try:
            yield mol, ref.load(mol)
        except InvalidRecord as e:
            yield e

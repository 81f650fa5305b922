"""Render items from cube files (no DFT): ``(Molecule, Fields)`` pairs for ``edg render --input edbench:DIR``.

``edbench_items(spec)`` reads the records of an ``edbench:DIR`` spec (``edg_core.readers.edbench``) and, for
each, its ``Mol1_Dt.cube`` and ``Mol1_ESP.cube`` resampled onto the molecule's grid (0.4 bohr spacing, 4.0
bohr padding; ``edg_core.cube_fields``). A record whose SDF or cubes are missing or unreadable comes back as
one ``InvalidRecord`` naming it, and the next record is read.
"""
from __future__ import annotations

from collections.abc import Iterator

from edg.edg_core.errors import InvalidRecord
from edg.edg_core.grid import DEFAULT_PADDING_BOHR, DEFAULT_SPACING_BOHR
from edg.edg_core.molecule import Molecule

from .worker import Fields


def edbench_items(spec, spacing: float = DEFAULT_SPACING_BOHR, padding: float = DEFAULT_PADDING_BOHR,
                  max_points: int | None = None) -> Iterator[tuple[Molecule, Fields] | InvalidRecord]:
    """``(molecule, Fields)`` per record of ``spec`` (text or ``DatasetSpec``, dataset ``edbench``); ED in
    e/bohr^3 and ESP in Hartree/e as float32 numpy arrays on ``grid_for_positions(mol.pos, spacing, padding)``.
    ``max_points`` caps the cube and target grid sizes (default ``edg_core.cube.MAX_CUBE_POINTS``)."""
    from edg.edg_core.datasets import resolve
    from edg.edg_core.readers.edbench import cube_fields_of, edbench_set
    spec = resolve(spec)
    if spec.name != "edbench":
        raise ValueError(f"edbench_items needs an edbench: spec, not {str(spec)!r}")
    kw = {"spacing": spacing, "padding": padding}
    if max_points is not None:
        kw["max_points"] = max_points
    for n, item in enumerate(edbench_set(spec).records()):
        if spec.limit is not None and n >= spec.limit:
            return
        if isinstance(item, InvalidRecord):
            yield item
            continue
        mol, folder = item
        try:
            f = cube_fields_of(mol, folder, **kw)
        except InvalidRecord as e:
            yield e
            continue
        yield mol, Fields(f.grid, f.ed, f.esp)

"""Our DFT results written in EDBench's layout, so that EDBench's tools (and ``edbench:DIR``) read them.

``export_edbench(results, folder)`` writes ``folder/raw/<set>.csv`` (ED5-EC's columns: the label column holds
our E1..E6, Hartree, in EDBench's order) and ``folder/raw/psi4_grid0.4_cubes/<index>/`` with ``Mol1.sdf`` (Å),
``Mol1_Dt.cube`` (ED, e/bohr^3) and ``Mol1_ESP.cube`` (ESP, Hartree/e), both on the result's own grid (bohr;
0.4 bohr spacing and 4.0 bohr padding with the DFT stage's defaults, EDBench's settings). Indices are 0, 1, ...
in the order given. Nothing is written outside ``folder``.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edg.edg_core.errors import InvalidRecord
from edg.edg_core.molecule import Molecule
from edg.edg_core.readers.edbench import CUBES, LABELS, write_csv, write_record

from .result import DFTResult, load_result

ENERGY_SET = "ed_energy_5w"


def export_edbench(results: Iterable[DFTResult | str | Path], folder: str | Path,
                   set_name: str = ENERGY_SET) -> list[str]:
    """Write ``results`` (``DFTResult`` objects or result-file paths) as one EDBench set in ``folder``;
    returns the indices written. A result without fields, or an unreadable file, is an ``InvalidRecord``."""
    folder = Path(folder)
    cubes = folder / "raw" / CUBES
    rows = []
    for i, r in enumerate(results):
        if not isinstance(r, DFTResult):
            r = load_result(r)
        if r.ed is None or r.esp is None or r.grid is None:
            raise InvalidRecord(r.id, "DFT result has no ED/ESP fields (run edg dft with fields on)")
        mol = Molecule(z=r.z, pos=r.pos, id=r.id, charge=r.charge, multiplicity=r.multiplicity)
        index = str(i)
        write_record(cubes, index, mol, r.grid, r.ed, r.esp)
        rows.append({"index": index, "smiles": "", "labels": dict(r.energies)})
    names = LABELS.get(set_name)
    if names and rows and not set(names) <= set(rows[0]["labels"]):
        raise InvalidRecord(str(folder), f"set {set_name} needs labels {names}; results carry E1..E6")
    write_csv(folder / "raw" / f"{set_name}.csv", set_name, rows)
    return [r["index"] for r in rows]

"""Regenerate the embedded default data set in edg_core/data/ (run once; the outputs are committed).

QM9: the first 40 molecules in gdb order from qm9pack, Geom3D targets (see edg_core/readers/qm9.py).
rMD17: the first 24 ethanol and 16 aspirin frames of ``train_01`` from the pre-split rMD17 files.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from edg.edg_core.readers.qm9 import load_qm9
from edg.edg_core.readers.rmd17 import load_rmd17

OUT = Path(__file__).resolve().parent.parent / "edg_core" / "data"


def frame(mol, extra: str = "", forces: np.ndarray | None = None) -> str:
    labels = " ".join(f"{k}={v:.15g}" for k, v in mol.labels.items() if isinstance(v, float))
    props = "Properties=species:S:1:pos:R:3" + (":forces:R:3" if forces is not None else "")
    lines = [str(mol.n_atoms), f'id={mol.id} {extra}{labels} {props}'.strip()]
    for i, (s, p) in enumerate(zip(mol.symbols, mol.pos)):
        cols = [f"{x:.10f}" for x in p] + ([f"{x:.8f}" for x in forces[i]] if forces is not None else [])
        lines.append(f"{s} " + " ".join(cols))
    return "\n".join(lines) + "\n"


def main(rmd17_root: str = "../shared/data/rmd17") -> None:
    table = load_qm9()
    with open(OUT / "qm9_first40.extxyz", "w") as f:
        for m in table.molecules(range(40)):
            f.write(frame(m, extra=f'smiles="{m.smiles}" '))
    with open(OUT / "rmd17_frames.extxyz", "w") as f:
        for name, n in (("ethanol", 24), ("aspirin", 16)):
            fr = load_rmd17(rmd17_root, name)["train"][:n]
            for m in fr.molecules():
                forces = m.labels.pop("forces")
                m.labels.pop("split")
                f.write(frame(m, forces=forces))


if __name__ == "__main__":
    main(*sys.argv[1:])

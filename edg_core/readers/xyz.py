"""XYZ and extended XYZ (multi-frame) files, positions in Å.

Plain XYZ: ``N``, a comment line, then ``N`` lines ``symbol x y z``. Extended XYZ (ASE/QUIP) puts
``key=value`` pairs on the comment line (``energy=-76.4``, ``charge=0``, ``multiplicity=1``, ``id=...``);
scalar ones become labels. Extra per-atom columns beyond x y z are ignored unless ``Properties=`` names
``forces``. Frames follow each other in one file.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DataSourceError, InvalidRecord
from ..molecule import Molecule
from ..units import symbol_to_z

_KV = re.compile(r"""(\w+)=("[^"]*"|'[^']*'|\S+)""")


def _parse_comment(comment: str) -> dict[str, str]:
    return {k: shlex.split(v)[0] if v[:1] in "\"'" else v for k, v in _KV.findall(comment)}


def _number(tok: str) -> float:
    """Tolerant float parser: accepts '1.', Fortran 'D' exponents and '*^' (Mathematica, as in QM9 files)."""
    return float(tok.replace("*^", "e").replace("D", "e").replace("d", "e"))


def _forces_columns(props: str | None) -> slice | None:
    """Column slice of forces in an extended-XYZ ``Properties=species:S:1:pos:R:3:forces:R:3`` string."""
    if not props:
        return None
    parts = props.split(":")
    col = 0
    for name, _kind, n in zip(parts[0::3], parts[1::3], parts[2::3]):
        if name.lower() in ("forces", "force"):
            return slice(col, col + int(n))
        col += int(n)
    return None


def read_xyz(path: str | Path) -> Iterator[Molecule | InvalidRecord]:
    """Yield each frame of an (extended) XYZ file; a malformed frame is yielded as an ``InvalidRecord``."""
    path = Path(path)
    if not path.exists():
        raise DataSourceError(f"XYZ file {path} does not exist")
    lines = path.read_text().splitlines()
    i, frame = 0, 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        rec = f"{path.name}:frame {frame}"
        try:
            n = int(lines[i].split()[0])
        except ValueError:
            yield InvalidRecord(rec, f"line {i + 1}: expected an atom count, got {lines[i]!r}")
            return
        comment = lines[i + 1] if i + 1 < len(lines) else ""
        body = lines[i + 2:i + 2 + n]
        i += 2 + n
        frame += 1
        kv = _parse_comment(comment)
        rec_id = kv.get("id") or f"{path.stem}:{frame - 1}"
        try:
            if len(body) < n:
                raise InvalidRecord(rec_id, f"{path.name}: truncated frame, {n} atoms announced, {len(body)} lines")
            toks = [ln.split() for ln in body]
            if any(len(t) < 4 for t in toks):
                raise InvalidRecord(rec_id, f"{path.name}: an atom line has fewer than 4 columns")
            try:
                z = [int(t[0]) if t[0].isdigit() else symbol_to_z(t[0]) for t in toks]
            except ValueError as e:
                raise InvalidRecord(rec_id, f"{path.name}: {e}") from None
            pos = np.array([[_number(c) for c in t[1:4]] for t in toks])
            labels = {}
            for k, v in kv.items():
                if k in ("id", "charge", "multiplicity", "Properties", "Lattice", "pbc", "smiles"):
                    continue
                try:
                    labels[k] = _number(v)
                except ValueError:
                    pass
            fcols = _forces_columns(kv.get("Properties"))
            if fcols is not None:
                # Properties columns count from the species column; atom lines are species x y z ...
                labels["forces"] = np.array([[_number(c) for c in t[fcols]] for t in toks])
            yield Molecule(z=z, pos=pos, id=rec_id, charge=int(float(kv.get("charge", 0))),
                           multiplicity=int(float(kv["multiplicity"])) if "multiplicity" in kv else None,
                           smiles=kv.get("smiles"), labels=labels)
        except InvalidRecord as e:
            yield e

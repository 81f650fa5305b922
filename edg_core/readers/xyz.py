"""XYZ and extended XYZ (multi-frame) files, positions in Å.

Plain XYZ: ``N``, a comment line, then ``N`` lines ``symbol x y z``. Extended XYZ (ASE/QUIP) puts
``key=value`` pairs on the comment line (``energy=-76.4``, ``charge=0``, ``multiplicity=1``, ``id=...``);
scalar ones become labels. Extra per-atom columns beyond x y z are ignored unless ``Properties=`` names
``forces``. Frames follow each other in one file.

A frame is accepted only when it is whole: a count line (one integer), a comment line, exactly that many atom
lines (symbol or atomic number, then three finite numbers), and after them the next count line or the end of
the file. Anything else (a count that disagrees with the atom lines, a non-numeric or missing column, bad
``charge=``/``multiplicity=``, bytes that are not UTF-8, NaN/inf coordinates, labels or forces) makes that frame
an ``InvalidRecord`` naming the file, the frame index and id, the line and the reason; the reader then
resynchronises at the next count line, so every good frame around a bad one is kept.
"""
from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DataSourceError, InvalidRecord
from ..io import text_lines
from ..molecule import Molecule
from ..units import symbol_to_z

_KV = re.compile(r"""(\w+)=("[^"]*"|'[^']*'|\S+)""")
_COUNT = re.compile(r"^\s*\d{1,9}\s*$")  # an atom count; more digits are not one
_NOT_LABELS = ("id", "charge", "multiplicity", "Properties", "Lattice", "pbc", "smiles")


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


class _Bad(Exception):
    """A problem at a line of the current frame (1-based line number)."""

    def __init__(self, line: int, reason: str):
        self.line, self.reason = line, reason


def _is_count(line: str | None) -> bool:
    return line is not None and bool(_COUNT.match(line))


def _integer(key: str, value: str, line: int) -> int:
    try:
        f = float(value)
    except ValueError:
        raise _Bad(line, f"{key}={value!r} is not an integer") from None
    if not math.isfinite(f) or f != int(f):
        raise _Bad(line, f"{key}={value!r} is not an integer")
    return int(f)


def _frame(lines: list[str | None], i: int, name: str) -> tuple[Molecule, int]:
    """Parse the frame whose count line is ``lines[i]``; returns it and the index of the line after it.
    Raises ``_Bad`` (line, reason) for a malformed frame."""
    n = int(lines[i])
    if n == 0:
        raise _Bad(i + 1, "atom count 0")
    if i + 1 >= len(lines):
        raise _Bad(i + 1, "file ends after the atom count (no comment line)")
    comment = lines[i + 1]
    if comment is None:
        raise _Bad(i + 2, "comment line is not UTF-8 text")
    try:
        kv = _parse_comment(comment)
        fcols = _forces_columns(kv.get("Properties"))
    except ValueError as e:  # an unbalanced quote, a Properties= count that is not a number
        raise _Bad(i + 2, f"comment line cannot be parsed ({e}): {comment.strip()[:60]!r}") from None
    need = max(4, fcols.stop if fcols is not None else 0)
    z, pos, forces = [], [], []
    for k in range(n):
        j = i + 2 + k
        if j >= len(lines):
            raise _Bad(j, f"truncated frame: {n} atoms announced but the file ends after {k} atom lines")
        ln = lines[j]
        if ln is None:
            raise _Bad(j + 1, "atom line is not UTF-8 text")
        toks = ln.split()
        if _is_count(ln) or not toks:
            raise _Bad(j + 1, f"{n} atoms announced but only {k} atom lines follow "
                              f"(line {j + 1} is {'empty' if not toks else 'a count line'})")
        if len(toks) < need:
            raise _Bad(j + 1, f"atom line needs {need} columns (symbol x y z"
                              f"{' + forces' if need > 4 else ''}), got {len(toks)}: {ln.strip()!r}")
        try:
            z.append(int(toks[0]) if toks[0].isdigit() else symbol_to_z(toks[0]))
        except ValueError as e:
            raise _Bad(j + 1, str(e)) from None
        row = []
        for c in (toks[1:4] + (toks[fcols] if fcols is not None else [])):
            try:
                v = _number(c)
            except ValueError:
                raise _Bad(j + 1, f"{c!r} is not a number") from None
            if not math.isfinite(v):
                raise _Bad(j + 1, f"non-finite value {c!r}")
            row.append(v)
        pos.append(row[:3])
        forces.append(row[3:])
    end = i + 2 + n
    nxt = end
    while nxt < len(lines) and lines[nxt] is not None and not lines[nxt].strip():
        nxt += 1
    if nxt < len(lines) and not _is_count(lines[nxt]):
        raise _Bad(nxt + 1, f"after {n} atom lines expected the next frame's atom count or the end of the file, "
                            f"got {(lines[nxt] or '<not UTF-8>').strip()[:60]!r} (atom count too small?)")
    labels = {}
    for k, v in kv.items():
        if k in _NOT_LABELS:
            continue
        try:
            x = _number(v)
        except ValueError:
            continue  # a text annotation, not a label
        if not math.isfinite(x):
            raise _Bad(i + 2, f"label {k}={v} is not finite")
        labels[k] = x
    if fcols is not None:
        labels["forces"] = np.array(forces, dtype=np.float64)
    charge = _integer("charge", kv["charge"], i + 2) if "charge" in kv else 0
    mult = _integer("multiplicity", kv["multiplicity"], i + 2) if "multiplicity" in kv else None
    if mult is not None and mult < 1:
        raise _Bad(i + 2, f"multiplicity={kv['multiplicity']} must be >= 1")
    rec_id = kv.get("id") or f"{name}"
    try:
        mol = Molecule(z=z, pos=np.array(pos, dtype=np.float64), id=rec_id, charge=charge, multiplicity=mult,
                       smiles=kv.get("smiles"), labels=labels)
    except InvalidRecord as e:
        raise _Bad(i + 1, e.problem) from None
    return mol, nxt


def _frame_id(lines: list[str | None], i: int, default: str) -> str:
    """The ``id=`` of the frame at count line ``i`` when its comment line can be read, else ``default``."""
    if i + 1 < len(lines) and lines[i + 1] is not None:
        try:
            return _parse_comment(lines[i + 1]).get("id") or default
        except ValueError:  # an unbalanced quote
            return default
    return default


def read_xyz(path: str | Path) -> Iterator[Molecule | InvalidRecord]:
    """Yield each frame of an (extended) XYZ file; a malformed frame is yielded as an ``InvalidRecord`` and
    reading resumes at the next count line (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise DataSourceError(f"XYZ file {path} does not exist")
    lines = text_lines(path)  # a line that is not UTF-8 is None: it fails its frame, not the file
    i, frame = 0, 0
    while i < len(lines):
        if lines[i] is not None and not lines[i].strip():
            i += 1
            continue
        if not _is_count(lines[i]):
            # no frame starts here: report the stretch up to the next count line as one bad record
            j = i + 1
            while j < len(lines) and not _is_count(lines[j]):
                j += 1
            shown = (lines[i] or "<not UTF-8>").strip()[:60]
            yield InvalidRecord(f"{path.stem}:line{i + 1}",
                                f"{path.name}, before frame {frame}, line {i + 1}: expected an atom count, got "
                                f"{shown!r} (lines {i + 1}-{j} skipped)")
            i = j
            continue
        default_id = f"{path.stem}:{frame}"
        try:
            mol, i_next = _frame(lines, i, default_id)
        except _Bad as e:
            rec_id = _frame_id(lines, i, default_id)
            yield InvalidRecord(rec_id, f"{path.name}, frame {frame}, line {e.line}: {e.reason}")
            # resynchronise: the next count line after this frame's comment line (atom lines never are one)
            j = i + 2
            while j < len(lines) and not _is_count(lines[j]):
                j += 1
            i, frame = j, frame + 1
            continue
        yield mol
        i, frame = i_next, frame + 1

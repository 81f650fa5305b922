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
resynchronises at the next count line, so every good frame around a bad one is kept. A count line is any line
of digits: one too large to be a frame (over ``MAX_FRAME_ATOMS``) fails its own frame, not the one before it.

Refused as well, each an ``InvalidRecord``: a periodic cell (``Lattice=`` without ``pbc="F F F"``, or any ``T``
in ``pbc=``; EDG computes isolated molecules), and whatever ``Molecule`` refuses (atoms closer than
``molecule.MIN_ATOM_DISTANCE_A``, impossible charges and multiplicities).

The file is read once, as a stream (``readers.stream``): memory holds one frame and one line, whatever the file
size, so a FIFO or standard input (``-``) reads like a file. Charge and multiplicity come from the comment line;
a frame without them takes the ``charge``/``multiplicity`` given to ``read_xyz`` (the spec options ``?charge=``
and ``?multiplicity=``), else charge 0 and the lowest multiplicity its electron count allows, recorded as
inferred in ``Molecule.inferred``.
"""
from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import InvalidRecord
from ..molecule import Molecule
from ..units import symbol_to_z
from .stream import STDIN, input_lines, line_problem

_KV = re.compile(r"""(\w+)=("[^"]*"|'[^']*'|\S+)""")
_COUNT = re.compile(r"^\s*\d+\s*$")
MAX_FRAME_ATOMS = 10_000_000
"""Largest atom count a frame may announce; a larger count line is a bad frame of its own."""
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


_EOF = object()


class _Lines:
    """A stream of lines with one line of look-ahead; ``number`` is the 1-based number of the last line taken."""

    def __init__(self, lines):
        self._it = iter(lines)
        self._ahead = None
        self._have = False
        self.number = 0

    def peek(self):
        """The next line without taking it (``_EOF`` at the end)."""
        if not self._have:
            self._ahead, self._have = next(self._it, _EOF), True
        return self._ahead

    def take(self):
        line = self.peek()
        self._have = False
        if line is not _EOF:
            self.number += 1
        return line


def _is_count(line) -> bool:
    return isinstance(line, str) and line_problem(line) is None and bool(_COUNT.match(line))


def _is_blank(line) -> bool:
    return isinstance(line, str) and line_problem(line) is None and not line.strip()


def _integer(key: str, value: str, line: int) -> int:
    try:
        f = float(value)
    except ValueError:
        raise _Bad(line, f"{key}={value!r} is not an integer") from None
    if not math.isfinite(f) or f != int(f):
        raise _Bad(line, f"{key}={value!r} is not an integer")
    return int(f)


def _periodic(kv: dict[str, str]) -> bool:
    """Whether an extended-XYZ comment describes a periodic cell: any ``T`` in ``pbc=``, or a ``Lattice=``
    without ``pbc=`` (the extXYZ default is then periodic in all three directions)."""
    if "pbc" in kv:
        return any(t.upper() in ("T", "TRUE", "1") for t in kv["pbc"].split())
    return "Lattice" in kv


def _stated(key: str, kv: dict[str, str], line: int, given: int | None) -> int | None:
    """The frame's ``charge=``/``multiplicity=``, else ``given`` (the spec's); both, disagreeing, is an error."""
    if key not in kv:
        return given
    value = _integer(key, kv[key], line)
    if given is not None and value != given:
        raise _Bad(line, f"{key}={value} on the comment line but ?{key}={given} in the spec")
    return value


def _comment(lines: _Lines, count_line: int, ids: list[str]) -> dict[str, str]:
    """Take the comment line after the count line; ``ids[0]`` becomes the frame's ``id=`` when it has one."""
    comment = lines.take()
    if comment is _EOF:
        raise _Bad(count_line, "file ends after the atom count (no comment line)")
    if line_problem(comment):
        raise _Bad(lines.number, f"comment line is {line_problem(comment)}")
    try:
        kv = _parse_comment(comment)
    except ValueError as e:  # an unbalanced quote
        raise _Bad(lines.number, f"comment line cannot be parsed ({e}): {comment.strip()[:60]!r}") from None
    ids[0] = kv.get("id") or ids[0]
    return kv


def _atom_lines(lines: _Lines, n: int, need: int, fcols: slice | None):
    """Take ``n`` atom lines; returns (z, pos rows, force rows). A count or blank line where an atom line
    should be is left for the resynchronisation."""
    z, pos, forces = [], [], []
    for k in range(n):
        ln = lines.peek()
        if ln is _EOF:
            raise _Bad(lines.number, f"truncated frame: {n} atoms announced but the file ends after {k} atom lines")
        toks = ln.split() if type(ln) is str else None  # None: not UTF-8 or too long (line_problem says which)
        if toks is not None and (not toks or (len(toks) == 1 and _is_count(ln))):
            raise _Bad(lines.number + 1, f"{n} atoms announced but only {k} atom lines follow "
                                         f"(line {lines.number + 1} is {'a count line' if toks else 'empty'})")
        lines.take()
        j = lines.number
        if toks is None:
            raise _Bad(j, f"atom line is {line_problem(ln)}")
        if len(toks) < need:
            raise _Bad(j, f"atom line needs {need} columns (symbol x y z"
                          f"{' + forces' if need > 4 else ''}), got {len(toks)}: {ln.strip()!r}")
        try:
            z.append(int(toks[0]) if toks[0].isdigit() else symbol_to_z(toks[0]))
        except ValueError as e:
            raise _Bad(j, str(e)) from None
        row = [_finite(c, j) for c in (toks[1:4] if fcols is None else toks[1:4] + toks[fcols])]
        pos.append(row[:3])
        forces.append(row[3:])
    return z, pos, forces


def _finite(tok: str, line: int) -> float:
    """``tok`` as a finite float (``_number``'s spellings); ``_Bad`` otherwise."""
    try:
        v = float(tok)
    except ValueError:
        try:
            v = _number(tok)
        except ValueError:
            raise _Bad(line, f"{tok!r} is not a number") from None
    if not math.isfinite(v):
        raise _Bad(line, f"non-finite value {tok!r}")
    return v


def _labels(kv: dict[str, str], line: int) -> dict:
    labels = {}
    for k, v in kv.items():
        if k in _NOT_LABELS:
            continue
        try:
            x = _number(v)
        except ValueError:
            continue  # a text annotation, not a label
        if not math.isfinite(x):
            raise _Bad(line, f"label {k}={v} is not finite")
        labels[k] = x
    return labels


def _frame(lines: _Lines, ids: list[str], charge: int | None, multiplicity: int | None) -> Molecule:
    """Take and parse the frame whose count line is next; ``ids[0]`` holds its id (the default until its
    comment line names one). Raises ``_Bad`` (line, reason) for a malformed frame, leaving the lines after the
    problem untaken."""
    count_text = lines.take().strip()
    count_line = lines.number
    n = int(count_text)
    kv = _comment(lines, count_line, ids)
    comment_line = lines.number
    if n == 0:
        raise _Bad(count_line, "atom count 0")
    if n > MAX_FRAME_ATOMS:
        raise _Bad(count_line, f"atom count {count_text} is over the {MAX_FRAME_ATOMS:,} atoms a frame may have")
    if _periodic(kv):
        cell = " ".join(f"{k}={kv[k]!r}" for k in ("Lattice", "pbc") if k in kv)
        raise _Bad(comment_line, f"periodic cell ({cell}): EDG computes isolated molecules; write pbc=\"F F F\" "
                                 "for a molecule in vacuum")
    try:
        fcols = _forces_columns(kv.get("Properties"))
    except ValueError as e:  # a Properties= count that is not a number
        raise _Bad(comment_line, f"comment line cannot be parsed ({e})") from None
    need = max(4, fcols.stop if fcols is not None else 0)
    z, pos, forces = _atom_lines(lines, n, need, fcols)
    while _is_blank(lines.peek()):
        lines.take()
    nxt = lines.peek()
    if nxt is not _EOF and not _is_count(nxt):
        shown = nxt.strip()[:60] if not line_problem(nxt) else f"<{line_problem(nxt)}>"
        raise _Bad(lines.number + 1, f"after {n} atom lines expected the next frame's atom count or the end of the "
                                     f"file, got {shown!r} (atom count too small?)")
    labels = _labels(kv, comment_line)
    if fcols is not None:
        labels["forces"] = np.array(forces, dtype=np.float64)
    charge = _stated("charge", kv, comment_line, charge)
    multiplicity = _stated("multiplicity", kv, comment_line, multiplicity)
    if multiplicity is not None and multiplicity < 1:
        raise _Bad(comment_line, f"multiplicity={kv.get('multiplicity', multiplicity)} must be >= 1")
    try:
        return Molecule(z=z, pos=np.array(pos, dtype=np.float64), id=ids[0], charge=charge or 0,
                        multiplicity=multiplicity, smiles=kv.get("smiles"), labels=labels,
                        inferred=("charge",) if charge is None else ()).check_atoms_apart()
    except InvalidRecord as e:
        raise _Bad(count_line, e.problem) from None


def _skip_to_count(lines: _Lines) -> int:
    """Take lines up to (not including) the next count line or the end; returns the last line number taken."""
    while (ln := lines.peek()) is not _EOF and not _is_count(ln):
        lines.take()
    return lines.number


def read_xyz(path: str | Path, name: str | None = None, charge: int | None = None,
             multiplicity: int | None = None) -> Iterator[Molecule | InvalidRecord]:
    """Yield each frame of an (extended) XYZ file (``-``: standard input), read once as a stream; a malformed
    frame is yielded as an ``InvalidRecord`` and reading resumes at the next count line (see the module
    docstring). ``name``: the file name messages and default ids use (default: ``path``'s). ``charge`` /
    ``multiplicity``: the values of frames that do not state them (``None``: charge 0 and the lowest
    multiplicity, both marked inferred)."""
    shown = Path(name or ("<stdin>" if str(path) == STDIN else path))
    stem = shown.stem.strip("<>")
    lines = _Lines(input_lines(path))
    frame = 0
    while (ln := lines.peek()) is not _EOF:
        if _is_blank(ln):
            lines.take()
            continue
        if not _is_count(ln):  # no frame starts here: the stretch up to the next count line is one bad record
            start = lines.number + 1
            text = ln.strip()[:60] if not line_problem(ln) else f"<{line_problem(ln)}>"
            lines.take()
            end = _skip_to_count(lines)
            yield InvalidRecord(f"{stem}:line{start}", f"{shown.name}, before frame {frame}, line {start}: expected "
                                                       f"an atom count, got {text!r} (lines {start}-{end} skipped)")
            continue
        ids = [f"{stem}:{frame}"]
        try:
            yield _frame(lines, ids, charge, multiplicity)
        except _Bad as e:
            yield InvalidRecord(ids[0], f"{shown.name}, frame {frame}, line {e.line}: {e.reason}")
            _skip_to_count(lines)
        frame += 1

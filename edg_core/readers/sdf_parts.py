"""Byte ranges of one large SDF file, cut at record boundaries, so that many workers each read their own part.

A record ends with a line ``$$$$``; record ``i`` is the ``i``-th record of the whole file (0-based), whoever
reads it. ``sdf_parts(path, n)`` cuts the file into ``n`` parts of about equal bytes; each ``SDFPart`` knows the
index of its first record, so a worker reading part ``k`` names its records exactly as a reader of the whole
file would. Finding a cut reads from the target byte to the next ``$$$$`` line; finding a part's first index
counts ``$$$$`` lines before it (a byte scan, no molecule parsed: 225 MB/s measured on a shared core).
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK_BYTES = 16 << 20
END = b"$$$$"


@dataclass(frozen=True)
class SDFPart:
    """Bytes ``[start, end)`` of ``path``, beginning at a record boundary; its first record is ``first_index``."""
    path: str
    start: int
    end: int
    first_index: int

    def records(self) -> Iterator[tuple[int, int, bytes]]:
        """``(index, byte offset, record text)`` of each record in the part (text without its ``$$$$`` line);
        a last record without a ``$$$$`` line counts when it holds anything but whitespace."""
        index, lines, at = self.first_index, [], self.start
        pos = self.start
        with open(self.path, "rb") as f:
            f.seek(self.start)
            while pos < self.end:
                line = f.readline()
                if not line:
                    break
                pos += len(line)
                if line.rstrip(b"\r\n") == END:
                    yield index, at, b"".join(lines)
                    index, lines, at = index + 1, [], pos
                else:
                    lines.append(line)
        if any(x.strip() for x in lines):
            yield index, at, b"".join(lines)


def _is_end(line: bytes) -> bool:
    return line.rstrip(b"\r\n") == END


_END_LINE = re.compile(rb"^\$\$\$\$\r?$", re.M)


def cut_at(path: str | Path, target: int, size: int | None = None) -> int:
    """The first record boundary at or after byte ``target``: 0, the file size, and the byte after each
    ``$$$$`` line are boundaries."""
    size = os.path.getsize(path) if size is None else size
    if target <= 0:
        return 0
    if target >= size:
        return size
    with open(path, "rb") as f:
        back = max(0, target - 8)  # a $$$$ line with its line end is at most 6 bytes
        f.seek(back)
        window = f.read(target - back)
        nl = window.rfind(b"\n")
        if nl >= 0:
            line_start = back + nl + 1
        else:
            line_start = 0 if back == 0 else None  # None: the line began long before, it is no $$$$ line
        if line_start == target:
            before = window[:nl].rsplit(b"\n", 1)
            if before[-1].rstrip(b"\r") == END and (len(before) > 1 or back == 0):
                return target
        pos = target if line_start is None else line_start
        f.seek(pos)
        if line_start is None:
            pos += len(f.readline())
        while True:
            line = f.readline()
            if not line:
                return size
            pos += len(line)
            if _is_end(line):
                return pos


def _count_end_lines(chunk: bytes) -> int:
    """``$$$$`` lines in ``chunk`` (which starts at a line start): byte counts when every line-start ``$$$$``
    ends its line (the usual case, ~1 GB/s), else the exact regular expression."""
    text = b"\n" + chunk
    starts = text.count(b"\n" + END)
    if starts == text.count(b"\n" + END + b"\n") + text.count(b"\n" + END + b"\r\n"):
        return starts
    return len(_END_LINE.findall(chunk))


def count_records(path: str | Path, start: int = 0, end: int | None = None) -> int:
    """``$$$$`` lines in bytes ``[start, end)`` (``start`` a line start): records that end there."""
    end = os.path.getsize(path) if end is None else end
    n, pos = 0, start
    with open(path, "rb") as f:
        f.seek(start)
        while pos < end:
            chunk = f.read(min(CHUNK_BYTES, end - pos))
            if not chunk:
                break
            pos += len(chunk)
            if pos < end and not chunk.endswith(b"\n"):
                tail = f.readline()[:end - pos]  # whole lines only, so no $$$$ line is split
                chunk += tail
                pos += len(tail)
            n += _count_end_lines(chunk)
    return n


def sdf_parts(path: str | Path, n_parts: int) -> list[SDFPart]:
    """``n_parts`` parts of about ``size / n_parts`` bytes each, cut at record boundaries; together they cover
    the file once, in order (a part may be empty when there are fewer records than parts)."""
    if n_parts < 1:
        raise ValueError(f"n_parts must be >= 1, got {n_parts}")
    path = str(path)
    size = os.path.getsize(path)
    cuts = [0] + [cut_at(path, (k * size) // n_parts, size) for k in range(1, n_parts)] + [size]
    parts, first = [], 0
    for a, b in zip(cuts, cuts[1:]):
        parts.append(SDFPart(path, a, b, first))
        first += count_records(path, a, b) if b > a else 0
    return parts


def sdf_part(path: str | Path, k: int, n_parts: int) -> SDFPart:
    """Part ``k`` of ``sdf_parts(path, n_parts)``, found without cutting the others: two cuts and a count of
    the records before it."""
    if not 0 <= k < n_parts:
        raise ValueError(f"part {k} of {n_parts}: need 0 <= k < {n_parts}")
    path = str(path)
    size = os.path.getsize(path)
    a = cut_at(path, (k * size) // n_parts, size) if k else 0
    b = cut_at(path, ((k + 1) * size) // n_parts, size) if k + 1 < n_parts else size
    return SDFPart(path, a, max(a, b), count_records(path, 0, a) if a else 0)

"""Input files read as streams: one pass, memory bounded by the longest line (``MAX_LINE_BYTES``), not the file.

``open_input(path)`` opens a file, ``-`` (standard input) or a FIFO for reading in binary; a directory or a file
that cannot be read is one ``DataSourceError`` line. ``text_lines_of(f)`` yields its lines decoded one by one.
A one-shot input (standard input, a FIFO, a character device) cannot be read twice, but the stage commands count
records before they start (``len(source)``): ``Spool`` copies such an input once, in 1 MiB chunks, to a temporary
file that every later pass reads (deleted when the ``Spool`` is collected or the process ends).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import DataSourceError

STDIN = "-"
MAX_LINE_BYTES = 1 << 20
"""Longest line a text reader holds (1 MiB): a longer one is read past in chunks and reported as ``TOO_LONG``."""


class _TooLong(str):
    """The marker ``text_lines_of`` yields for a line over ``MAX_LINE_BYTES`` (its length is in ``nbytes``)."""
    nbytes = 0


TOO_LONG = "<line longer than 1 MiB>"


def line_problem(line) -> str | None:
    """Why a line from ``text_lines_of`` cannot be read as text (None: it can)."""
    if line is None:
        return "not UTF-8 text"
    if isinstance(line, _TooLong):
        return f"line of {line.nbytes} bytes, over the {MAX_LINE_BYTES}-byte limit of one line"
    return None


def is_one_shot(path: str | os.PathLike) -> bool:
    """Whether ``path`` can be read only once: ``-`` (standard input), a FIFO, a socket or a character device."""
    if str(path) == STDIN:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


def check_readable(path: str | os.PathLike, what: str = "input") -> None:
    """Raise ``DataSourceError`` (one line) unless ``path`` is ``-`` or an existing, readable non-folder."""
    if str(path) == STDIN:
        return
    p = Path(path)
    if p.is_dir():
        raise DataSourceError(f"{what} {str(p)!r} is a folder, not a file of molecules "
                              "(give one .xyz/.sdf/.smi file; edg data info also reads shard folders)")
    if not p.exists():
        raise DataSourceError(f"{what} {str(p)!r}: no such file")
    if not os.access(p, os.R_OK):
        raise DataSourceError(f"{what} {str(p)!r} cannot be read (permission denied)")


@contextlib.contextmanager
def open_input(path: str | os.PathLike, what: str = "input") -> Iterator[BinaryIO]:
    """``path`` opened for binary reading (``-``: standard input, left open); a folder, a missing or an
    unreadable file is one ``DataSourceError`` line."""
    if str(path) == STDIN:
        yield sys.stdin.buffer
        return
    check_readable(path, what)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataSourceError(f"{what} {str(path)!r} cannot be read ({e.strerror})") from None
    with f:
        yield f


def text_lines_of(f: BinaryIO) -> Iterator[str | None]:
    """Each line of ``f`` (``\\n`` or ``\\r\\n`` ends) decoded on its own: ``None`` for a line that is not UTF-8,
    a ``TOO_LONG`` marker for one over ``MAX_LINE_BYTES`` (see ``line_problem``). At most one line is held."""
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            n = len(raw)
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(MAX_LINE_BYTES)
                n += len(raw)
            marker = _TooLong(TOO_LONG)
            marker.nbytes = n
            yield marker
            continue
        try:
            yield raw.decode("utf-8").rstrip("\n").rstrip("\r")
        except UnicodeDecodeError:
            yield None


def input_lines(path: str | os.PathLike, what: str = "input") -> Iterator[str | None]:
    """``text_lines_of`` the file at ``path`` (``-``: standard input), opened by ``open_input``."""
    with open_input(path, what) as f:
        yield from text_lines_of(f)


class Spool:
    """A one-shot input (``is_one_shot``) copied once to a temporary file on first use; ``path`` is that file.

    The copy streams 1 MiB at a time; the file lives as long as this object (or the process)."""

    def __init__(self, source: str | os.PathLike, suffix: str = ""):
        self.source, self.suffix = str(source), suffix
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        if self._path is None:
            fd, name = tempfile.mkstemp(prefix="edg-input-", suffix=self.suffix)
            weakref.finalize(self, _unlink, name)
            with os.fdopen(fd, "wb") as out, open_input(self.source) as f:
                shutil.copyfileobj(f, out, 1 << 20)
            self._path = Path(name)
        return self._path


def _unlink(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name)

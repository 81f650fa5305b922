"""Atomic file writes and progress bars: the two habits every long EDG loop shares."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error remove it.

    Readers therefore never see a half-written file, and a crash leaves only a ``.tmp`` file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def append_jsonl(path: str | os.PathLike, obj) -> None:
    """Append one JSON line (a manifest entry); a single ``write`` of a short line is atomic enough on POSIX."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(obj, sort_keys=True, default=str) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The entries of a JSON-lines file (a local path or an fsspec URL); [] when it does not exist."""
    from . import storage
    if not storage.exists(path):
        return []
    out = []
    for line in storage.read_bytes(path).decode().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash: ignore it
    return out


def progress(it: Iterable[T], desc: str, total: int | None = None, disable: bool | None = None) -> Iterable[T]:
    """A tqdm bar on a terminal (stderr), silent in non-interactive runs unless EDG_PROGRESS=1."""
    if disable is None:
        disable = not (sys.stderr.isatty() or os.environ.get("EDG_PROGRESS") == "1")
    from tqdm.auto import tqdm
    return tqdm(it, desc=desc, total=total, disable=disable, dynamic_ncols=True, mininterval=0.5)

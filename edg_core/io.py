"""Atomic file writes and progress bars: the two habits every long EDG loop shares."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from .errors import DiskFullError

T = TypeVar("T")


# Temporary files of atomic writes: ``.<name>.<host>-<pid>-<random>.tmp`` beside the target, so that a later
# run can tell a file left by a killed writer (same host, process gone) from one being written right now.
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")
_LEGACY_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # before the writer's pid was in the name
FOREIGN_TEMP_AGE_S = 24 * 3600  # a temp file of another host (shared file system) older than this is stale
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def temp_name(target: str) -> str:
    """A temporary file name for writing ``target`` (a file name): see ``TEMP_RE``."""
    return f".{target}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def _no_space(path: Path, e: OSError) -> DiskFullError:
    return DiskFullError(e.errno, f"no space left writing {path} ({os.strerror(e.errno)})", str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error remove it.

    Readers therefore never see a half-written file; a killed process leaves only a temporary file, which
    ``remove_stale_temps`` deletes at the start of the next run. The file gets the mode a plain ``open``
    would give (0666 minus the umask). A full disk or quota raises ``DiskFullError`` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / temp_name(path.name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in NO_SPACE and not isinstance(e, DiskFullError):
            raise _no_space(path, e) from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def is_stale_temp(path: str | os.PathLike, now: float | None = None) -> bool:
    """True for a temporary file of ``atomic_path`` whose writer is gone: written on this host by a process
    that no longer runs, or on another host (or by an older EDG) more than ``FOREIGN_TEMP_AGE_S`` ago."""
    path = Path(path)
    m = TEMP_RE.match(path.name)
    if m is not None and m["host"] == _HOST:
        return not _pid_alive(int(m["pid"]))
    if m is None and not _LEGACY_TEMP_RE.match(path.name):
        return False
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > FOREIGN_TEMP_AGE_S


def scratch_dir(prefix: str) -> Path:
    """A fresh temporary folder ``<tmp>/<prefix><host>-<pid>-<random>`` (staging copies of remote files):
    ``remove_stale_scratch(prefix)`` deletes those whose process was killed before it could clean up."""
    import tempfile
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{_HOST}-{os.getpid()}-"))


def remove_stale_scratch(prefix: str) -> list[Path]:
    """Delete this host's ``scratch_dir(prefix)`` folders whose process no longer runs; returns them."""
    import shutil
    import tempfile
    pat = re.compile(rf"^{re.escape(prefix)}{_HOST}-(\d+)-")
    removed = []
    for entry in os.scandir(tempfile.gettempdir()):
        m = pat.match(entry.name)
        if m and entry.is_dir(follow_symlinks=False) and not _pid_alive(int(m[1])):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete the temporary files that killed writers left in ``folder`` (see ``is_stale_temp``); files being
    written by live processes stay. Returns the files removed. A missing folder has none."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    walk = os.walk(folder) if recursive else [(str(folder), [], [e.name for e in os.scandir(folder) if e.is_file()])]
    for dirpath, _, files in walk:
        for f in files:
            if f.endswith(".tmp") and f.startswith("."):
                p = Path(dirpath) / f
                if is_stale_temp(p):
                    p.unlink(missing_ok=True)
                    removed.append(p)
    return removed


def text_lines(path: str | os.PathLike) -> list[str | None]:
    """A text file's lines (``\n`` or ``\r\n`` line ends), each decoded on its own: a line that is not UTF-8
    is None, so that a reader fails the one record it belongs to, not the file (XYZ frames, SMILES lines)."""
    out: list[str | None] = []
    for raw in Path(path).read_bytes().split(b"\n"):
        try:
            out.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError:
            out.append(None)
    if out and out[-1] == "":
        out.pop()
    return out


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def append_jsonl(path: str | os.PathLike, obj) -> None:
    """Append one JSON line (a manifest entry); a single ``write`` of a short line is atomic enough on POSIX."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "a") as f:
            f.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    except OSError as e:
        if e.errno in NO_SPACE:
            raise _no_space(path, e) from e
        raise


def parse_jsonl(data: bytes) -> list[dict]:
    """The entries of JSON-lines text; a line cut by a crash (not JSON) is skipped."""
    out = []
    for line in data.decode().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The entries of a JSON-lines file (a local path or an fsspec URL); [] when it does not exist. (This module
    imports nothing of ``edg_core.storage``, which builds on it: a URL is read with ``fsspec.open``.)"""
    s = str(path)
    if "://" in s and not s.startswith("file://"):
        import fsspec
        try:
            with fsspec.open(s, "rb") as f:
                return parse_jsonl(f.read())
        except FileNotFoundError:
            return []
    p = Path(s[len("file://"):] if s.startswith("file://") else s)
    return parse_jsonl(p.read_bytes()) if p.exists() else []


def progress(it: Iterable[T], desc: str, total: int | None = None, disable: bool | None = None) -> Iterable[T]:
    """A tqdm bar on a terminal (stderr), silent in non-interactive runs unless EDG_PROGRESS=1."""
    if disable is None:
        disable = not (sys.stderr.isatty() or os.environ.get("EDG_PROGRESS") == "1")
    from tqdm.auto import tqdm
    return tqdm(it, desc=desc, total=total, disable=disable, dynamic_ncols=True, mininterval=0.5)

"""Verified downloads and safe archive extraction, for data sets fetched from the internet.

``download(url, dest, sha256=..., md5=...)`` streams a URL to ``dest`` (written to a temporary name by
``io.atomic_path`` and renamed once complete and verified), refusing more than ``max_bytes``; a checksum
mismatch removes the file and raises. ``extract_tar(archive, out)`` unpacks a tar archive (any compression)
member by member, refusing absolute paths, ``..`` components, paths through a symlink already in ``out``
that leads outside it (``storage.local_path_for``), links, devices, more than ``max_bytes`` of content in total,
reserved names (the completion marker), and a path the archive uses both as a file and as a folder. A
truncated or malformed archive, or any refusal, is one ``DataSourceError`` line, and every file and folder the
extraction had created is removed again: a failed extraction leaves nothing behind.

``fetch_archive`` puts these together for ``edg fetch``: download, extract, check, and then write the completion
marker ``FETCH_MARKER`` (``.edg-fetched.json`` in the output folder, a name no archive member may use) with the
archive's digests. A rerun reads the marker, checks its layout (a malformed marker is a one-line error) and
compares any ``sha256``/``md5`` given with the digests it records, so "verified" always means compared.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import re
import shutil
import tarfile
import urllib.request
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import DataSourceError, DiskFullError, StorageError
from .io import atomic_path, write_json_atomic
from .storage import local_path_for

GIB = 1024 ** 3
FETCH_MARKER = ".edg-fetched.json"  # the completion marker of a fetched folder; no archive member may write it


class ChecksumError(DataSourceError):
    """A downloaded file does not have the expected checksum."""


class UnsafeArchiveError(DataSourceError):
    """An archive member would land outside the output folder, is not a plain file/folder, or is too large."""


@dataclass
class Digests:
    """Checksums of a file: hex sha256 and md5, and its size in bytes."""
    sha256: str
    md5: str
    size: int


def file_digests(path: str | Path, chunk: int = 1 << 20) -> Digests:
    """sha256 and md5 of a file, read once."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
            md5.update(block)
            size += len(block)
    return Digests(sha.hexdigest(), md5.hexdigest(), size)


def _check(d: Digests, sha256: str | None, md5: str | None, where) -> Digests:
    for name, want, got in (("sha256", sha256, d.sha256), ("md5", md5, d.md5)):
        if want and want.strip().lower() != got:
            raise ChecksumError(f"{where}: {name} is {got}, expected {want.strip().lower()} "
                                "(corrupt or different download)")
    return d


def verify(path: str | Path, sha256: str | None = None, md5: str | None = None) -> Digests:
    """The file's digests; raises ``ChecksumError`` (naming the file and both values) on a mismatch."""
    return _check(file_digests(path), sha256, md5, path)


def download(url: str, dest: str | Path, sha256: str | None = None, md5: str | None = None,
             max_bytes: int = 8 * GIB, timeout: float = 60.0) -> Digests:
    """Stream ``url`` to ``dest`` and verify it. An existing ``dest`` that verifies is kept (no download).

    Returns the file's digests (print them when no checksum was given, so the user can compare them with
    the publisher's). Raises ``DataSourceError`` for an unreachable URL or a body over ``max_bytes``,
    ``ChecksumError`` for a mismatch (the bad file never appears at ``dest``), ``DiskFullError`` naming
    ``dest`` when the disk fills up. The body is streamed into ``io.atomic_path(dest)``'s temporary file and
    verified there, so ``dest`` only ever holds a whole, verified download; a killed download leaves a
    temporary file that ``io.remove_stale_temps`` removes."""
    dest = Path(dest)
    if dest.exists() and (sha256 or md5):
        try:
            return verify(dest, sha256, md5)
        except ChecksumError:
            dest.unlink()
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as f:  # noqa: S310
                n = 0
                while block := resp.read(1 << 20):
                    n += len(block)
                    if n > max_bytes:
                        raise DataSourceError(f"{url}: more than {max_bytes} bytes; refusing (raise max_bytes)")
                    f.write(block)
            digests = _check(file_digests(tmp), sha256, md5, f"{url} -> {dest}")  # a mismatch never reaches dest
    except (DataSourceError, DiskFullError):
        raise
    except (OSError, ValueError) as e:
        raise DataSourceError(f"cannot download {url}: {e}") from None
    return digests


def _safe_name(name: str, strip: int) -> PurePosixPath | None:
    """``name`` without its first ``strip`` parts (None when nothing is left). An absolute name or one with a
    drive is refused here, before stripping would hide it; ``..`` and symlinks are ``_target``'s job."""
    p = PurePosixPath(name)
    if p.is_absolute() or (p.parts and ":" in p.parts[0]):
        raise UnsafeArchiveError(f"archive member {name!r} points outside the output folder")
    parts = [x for x in p.parts if x not in ("", ".")]
    if len(parts) <= strip:
        return None
    return PurePosixPath(*parts[strip:])


def _target(out: Path, rel: PurePosixPath, name: str) -> Path:
    """``out/rel`` through ``storage.local_path_for``: refuses ``..`` and paths that a symlink already in
    ``out`` would lead outside it."""
    try:
        return local_path_for(out, rel.as_posix())
    except StorageError as e:
        raise UnsafeArchiveError(f"archive member {name!r} points outside the output folder ({e})") from None


def extract_tar(archive: str | Path, out: str | Path, strip_components: int = 0,
                max_bytes: int = 16 * GIB, max_members: int = 100_000,
                reserved: Collection[str] = (FETCH_MARKER,)) -> list[Path]:
    """Unpack ``archive`` (tar, tar.gz, tar.bz2, tar.xz) into ``out``; returns the files written.

    Only regular files and folders are accepted; every member must stay inside ``out`` after dropping its
    first ``strip_components`` path parts, may not be (or lie under) a ``reserved`` path relative to ``out``
    (the completion marker), and may not need a folder where the archive or ``out`` has a file or the other
    way round; the files' total size is capped at ``max_bytes``. Files are written through ``io.atomic_path``
    (a temporary name, then renamed). Any failure (an ``UnsafeArchiveError`` naming the offending member, or a
    truncated or corrupt archive: one ``DataSourceError`` line) first removes every file and folder this call
    created, so an extraction either completes or leaves ``out`` as it was (files it replaced stay replaced)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []  # files and folders this extraction made, in creation order
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        raise DataSourceError(f"{archive}: not a readable tar archive ({_one_line(e)})") from None
    try:
        with tf:
            return _extract_members(tf, archive, out, strip_components, max_bytes, max_members,
                                    {PurePosixPath(r) for r in reserved}, created)
    except BaseException as e:
        _remove_created(created)
        if isinstance(e, (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)) or (
                isinstance(e, OSError) and not isinstance(e, (DataSourceError, DiskFullError))):
            raise DataSourceError(f"{archive}: truncated or corrupt archive ({type(e).__name__}: {_one_line(e)}); "
                                  "nothing was extracted") from None
        raise


def _extract_members(tf: tarfile.TarFile, archive, out: Path, strip: int, max_bytes: int, max_members: int,
                     reserved: set[PurePosixPath], created: list[Path]) -> list[Path]:
    written, total = [], 0
    for i, m in enumerate(tf):
        if i >= max_members:
            raise UnsafeArchiveError(f"{archive}: more than {max_members} members; refusing")
        rel = _safe_name(m.name, strip)
        if rel is None:
            continue
        if any(rel == r or r in rel.parents for r in reserved):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} uses the reserved name {rel.as_posix()!r} "
                                     "(EDG's completion marker); refusing")
        if not (m.isdir() or m.isfile()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a link or special file; refusing")
        target = _target(out, rel, m.name)
        _make_folders(out, target if m.isdir() else target.parent, archive, m.name, created)
        if m.isdir():
            continue
        if target.is_dir():
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a file where the archive or the output "
                                     "folder has a folder; refusing")
        total += m.size
        if total > max_bytes:
            raise UnsafeArchiveError(f"{archive}: more than {max_bytes} bytes of content; refusing")
        existed = target.exists()
        src = tf.extractfile(m)
        with src, atomic_path(target) as tmp, open(tmp, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20)
        if not existed:
            created.append(target)
        written.append(target)
    return written


def _make_folders(out: Path, folder: Path, archive, name: str, created: list[Path]) -> None:
    """Create ``folder`` (inside ``out``) and its missing parents, recording each one made; a file in the way
    (the archive wrote it as a file before, or it was in ``out``) is an ``UnsafeArchiveError``."""
    missing, p = [], folder
    while p != out and not p.is_dir():
        if p.exists() or p.is_symlink():
            raise UnsafeArchiveError(f"{archive}: member {name!r} needs {p.relative_to(out).as_posix()!r} to be a "
                                     "folder, but it is a file; refusing")
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        p.mkdir()
        created.append(p)


def _remove_created(created: list[Path]) -> None:
    """Remove what a failed extraction made, newest first (folders only when empty: nothing else was there)."""
    for p in reversed(created):
        try:
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            else:
                p.unlink()
        except OSError:
            pass


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


# ---------------------------------------------------------------- fetch: download + extract + marker
_HEX = {"sha256": re.compile(r"[0-9a-f]{64}"), "md5": re.compile(r"[0-9a-f]{32}")}
MAX_MARKER_BYTES = 1 << 20


def read_marker(out: str | Path, sha256: str | None = None, md5: str | None = None) -> dict | None:
    """The completion marker of ``out`` (``None`` when absent), after checking its layout (``url`` and
    ``digests`` with hex ``sha256``/``md5`` and an integer ``size``: else a one-line ``DataSourceError``) and
    that the ``sha256``/``md5`` given, if any, are the archive's (else ``ChecksumError``)."""
    marker = Path(out) / FETCH_MARKER
    if not marker.exists() and not marker.is_symlink():
        return None
    fix = f"delete {marker} to fetch again"
    try:
        if not marker.is_file() or marker.is_symlink() or marker.stat().st_size > MAX_MARKER_BYTES:
            raise ValueError("not a small plain file")
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise DataSourceError(f"{marker}: not a completion marker EDG wrote ({_one_line(e)}); {fix}") from None
    problem = _marker_problem(info)
    if problem:
        raise DataSourceError(f"{marker}: not a completion marker EDG wrote ({problem}); {fix}")
    _check(Digests(**{k: info["digests"][k] for k in ("sha256", "md5", "size")}), sha256, md5,
           f"{out} (fetched before, per {marker.name})")
    return info


def _marker_problem(info) -> str | None:
    if not isinstance(info, dict):
        return f"a JSON {type(info).__name__}, not an object"
    d = info.get("digests")
    if not isinstance(info.get("url"), str) or not isinstance(d, dict):
        return "no 'url' string or 'digests' object"
    for k, pattern in _HEX.items():
        if not isinstance(d.get(k), str) or not pattern.fullmatch(d[k]):
            return f"digests.{k} is not a hex digest"
    if type(d.get("size")) is not int or d["size"] < 0:
        return "digests.size is not a byte count"
    return None


def fetch_archive(url: str, out: str | Path, archive_name: str, sha256: str | None = None, md5: str | None = None,
                  max_bytes: int = 8 * GIB, keep_archive: bool = False,
                  check: Callable[[Path], dict] | None = None) -> dict:
    """Download ``url`` to ``out/archive_name``, verify it, unpack it into ``out`` (``extract_tar``; at most
    4 x ``max_bytes`` of content), run ``check(out)`` (whose dict is stored in the marker), then write the
    completion marker with the archive's digests. A folder that has a marker returns it at once (after
    ``read_marker``'s checks). Returns the marker's content: ``url``, ``digests`` (sha256, md5, size) and
    what ``check`` returned. The archive is removed after unpacking unless ``keep_archive``, and after a failed
    extraction too (the archive is corrupt)."""
    import dataclasses
    out = Path(out)
    done = read_marker(out, sha256, md5)
    if done is not None:
        return done
    archive = out / archive_name
    digests = download(url, archive, sha256=sha256, md5=md5, max_bytes=max_bytes)
    try:
        extract_tar(archive, out, max_bytes=4 * max_bytes, reserved=(FETCH_MARKER, archive_name))
    except DataSourceError:
        if not keep_archive:
            archive.unlink(missing_ok=True)
        raise
    extra = check(out) if check is not None else {}
    if not keep_archive:
        archive.unlink()
    info = {**extra, "url": url, "digests": dataclasses.asdict(digests)}
    write_json_atomic(out / FETCH_MARKER, info)
    return info

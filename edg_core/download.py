"""Verified downloads and safe archive extraction, for data sets fetched from the internet.

``download(url, dest, sha256=..., md5=...)`` streams a URL to ``dest`` (written to a temporary name by
``io.atomic_path`` and renamed once complete and verified), refusing more than ``max_bytes``; a checksum
mismatch removes the file and raises. ``extract_tar(archive, out)`` unpacks a tar archive (any compression)
member by member, refusing absolute paths, ``..`` components, paths through a symlink already in ``out``
that leads outside it (``storage.local_path_for``), links, devices and more than ``max_bytes`` of content in total.
"""
from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import DataSourceError, DiskFullError, StorageError
from .io import atomic_path
from .storage import local_path_for

GIB = 1024 ** 3


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
                max_bytes: int = 16 * GIB, max_members: int = 100_000) -> list[Path]:
    """Unpack ``archive`` (tar, tar.gz, tar.bz2, tar.xz) into ``out``; returns the files written.

    Only regular files and folders are accepted; every member must stay inside ``out`` after dropping its
    first ``strip_components`` path parts; the files' total size is capped at ``max_bytes``. Files are
    written through ``io.atomic_path`` (a temporary name, then renamed), so an interrupted extraction never
    leaves a truncated file under its final name. Raises ``UnsafeArchiveError`` naming the offending member
    (nothing is written for it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, total = [], 0
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise DataSourceError(f"{archive}: not a readable tar archive ({e})") from None
    with tf:
        for i, m in enumerate(tf):
            if i >= max_members:
                raise UnsafeArchiveError(f"{archive}: more than {max_members} members; refusing")
            rel = _safe_name(m.name, strip_components)
            if rel is None:
                continue
            if m.isdir():
                _target(out, rel, m.name).mkdir(parents=True, exist_ok=True)
                continue
            if not m.isfile():
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a link or special file; refusing")
            total += m.size
            if total > max_bytes:
                raise UnsafeArchiveError(f"{archive}: more than {max_bytes} bytes of content; refusing")
            target = _target(out, rel, m.name)
            src = tf.extractfile(m)
            with src, atomic_path(target) as tmp, open(tmp, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)
            written.append(target)
    return written

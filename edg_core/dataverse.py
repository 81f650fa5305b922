"""Files of a published Dataverse dataset (e.g. Harvard Dataverse), downloaded through its file API and verified.

``list_files(server, doi)`` reads the dataset's file list (``/api/datasets/:persistentId/versions/
:latest-published/files``); ``fetch_files`` streams each file from ``/api/access/datafile/<id>`` (the original
upload, ``?format=original``, for files Dataverse ingested as tables) to ``out/<directoryLabel>/<name>`` through
``download.download``, refusing a body larger than the size the listing declares and checking the checksum the
listing gives (MD5 and SHA-256 inside ``download``; SHA-1/SHA-512 here, on a temporary name). A file that
verifies already is not downloaded again. Names from the listing are untrusted: one that would land outside
``out`` is refused (``storage.local_path_for``). ``unpack`` extracts tar archives (``download.extract_tar``)
and zip archives (the same rules: plain files only, inside the folder, a size cap).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .download import ChecksumError, UnsafeArchiveError, download, extract_tar
from .errors import DataSourceError, StorageError
from .io import atomic_path
from .storage import local_path_for

HARVARD = "https://dataverse.harvard.edu"
MAX_LISTING_BYTES = 16 << 20
OTHER_HASHES = {"SHA-1": "sha1", "SHA-512": "sha512"}


@dataclass(frozen=True)
class DataverseFile:
    """One file of a dataset version: its id, path inside the dataset, size in bytes (-1: not given), checksum
    (type as Dataverse names it: MD5, SHA-1, SHA-256, SHA-512) and whether to ask for the original upload."""
    id: int
    path: str
    size: int
    checksum_type: str | None
    checksum: str | None
    original: bool = False


def list_files(server: str, doi: str, timeout: float = 60.0) -> list[DataverseFile]:
    """The files of the latest published version of dataset ``doi`` (``doi:10.7910/DVN/...``) on ``server``."""
    query = urllib.parse.urlencode({"persistentId": doi})
    url = f"{server.rstrip('/')}/api/datasets/:persistentId/versions/:latest-published/files?{query}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (https or a test's loopback)
            body = resp.read(MAX_LISTING_BYTES + 1)
    except (OSError, ValueError) as e:
        raise DataSourceError(f"cannot list the files of {doi} on {server}: {e}") from None
    if len(body) > MAX_LISTING_BYTES:
        raise DataSourceError(f"{url}: file listing larger than {MAX_LISTING_BYTES} bytes; refusing")
    try:
        entries = json.loads(body)["data"]
        return [_entry(e) for e in entries]
    except (ValueError, KeyError, TypeError) as e:
        raise DataSourceError(f"{url}: not a Dataverse file listing ({type(e).__name__}: {e})") from None


def _entry(e: dict) -> DataverseFile:
    df = e["dataFile"]
    original = bool(df.get("originalFileName"))
    name = df["originalFileName"] if original else (e.get("label") or df["filename"])
    folder = (e.get("directoryLabel") or "").strip("/")
    size = df.get("originalFileSize") if original else df.get("filesize")
    checksum = df.get("checksum") or ({"type": "MD5", "value": df["md5"]} if df.get("md5") else {})
    return DataverseFile(int(df["id"]), f"{folder}/{name}" if folder else name, int(size) if size is not None else -1,
                         checksum.get("type"), checksum.get("value"), original)


def fetch_file(server: str, f: DataverseFile, out: str | Path, timeout: float = 60.0) -> Path:
    """Download ``f`` to ``out/<f.path>``, verified; returns the path. Raises ``ChecksumError`` (the file is
    not left under its name), ``DataSourceError`` or ``StorageError`` (a path leading out of ``out``)."""
    try:
        dest = local_path_for(out, f.path)
    except StorageError as e:
        raise DataSourceError(f"Dataverse file {f.id} {f.path!r}: {e}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = f"{server.rstrip('/')}/api/access/datafile/{f.id}" + ("?format=original" if f.original else "")
    max_bytes = f.size if f.size >= 0 else 64 << 30
    kind = (f.checksum_type or "").upper()
    if kind in ("MD5", "SHA-256", ""):
        download(url, dest, sha256=f.checksum if kind == "SHA-256" else None,
                 md5=f.checksum if kind == "MD5" else None, max_bytes=max_bytes, timeout=timeout)
        return dest
    if kind not in OTHER_HASHES:
        raise DataSourceError(f"Dataverse file {f.path}: unknown checksum type {f.checksum_type!r}")
    if dest.exists() and _digest(dest, OTHER_HASHES[kind]) == f.checksum.lower():
        return dest
    unverified = dest.with_name(dest.name + ".unverified")
    download(url, unverified, max_bytes=max_bytes, timeout=timeout)
    got = _digest(unverified, OTHER_HASHES[kind])
    if got != f.checksum.lower():
        unverified.unlink()
        raise ChecksumError(f"{url} -> {dest}: {kind} is {got}, expected {f.checksum.lower()} "
                            "(corrupt or different download)")
    unverified.replace(dest)
    return dest


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def unpack(archive: Path, out: Path, max_bytes: int = 256 << 30, max_members: int = 5_000_000) -> list[Path]:
    """Extract a tar or zip archive into ``out`` (``download.extract_tar``'s rules for both); returns the
    files written."""
    if not archive.name.lower().endswith(".zip"):
        return extract_tar(archive, out, max_bytes=max_bytes, max_members=max_members)
    written: list[Path] = []
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataSourceError(f"{archive}: not a readable zip archive ({e})") from None
    try:
        with zf:
            _unzip(zf, archive, out, written, max_bytes, max_members)
    except BaseException:
        for path in written:  # a refused or broken archive leaves nothing of itself behind
            path.unlink(missing_ok=True)
        raise
    return written


def _unzip(zf: zipfile.ZipFile, archive: Path, out: Path, written: list[Path], max_bytes: int,
           max_members: int) -> None:
    """Each member of ``zf`` into ``out`` (appending the files written to ``written``), or a refusal."""
    total = 0
    for i, info in enumerate(zf.infolist()):
        if i >= max_members:
            raise UnsafeArchiveError(f"{archive}: more than {max_members} members; refusing")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a link; refusing")
        try:
            target = local_path_for(out, info.filename)
        except StorageError as e:
            raise UnsafeArchiveError(f"archive member {info.filename!r} points outside the output folder "
                                     f"({e})") from None
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        total += info.file_size
        if total > max_bytes:
            raise UnsafeArchiveError(f"{archive}: more than {max_bytes} bytes of content; refusing")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, atomic_path(target) as tmp, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        written.append(target)

"""Where EDG keeps files: local paths, shared file systems, or any fsspec URL (``s3://``, ``gs://``, ...).

Two tools, used by every stage that writes:

* small functions that take a local path or a URL alike (``exists``, ``open_read``, ``read_bytes``,
  ``list_files``, ``upload``, ``join``);
* ``Mirror``: a local working copy of a folder that may be remote. Code writes into ``mirror.local`` with the
  usual atomic local writes; ``push()`` uploads what changed, ``pull()`` fetches what others wrote,
  ``commit(rel)`` uploads one file at once. For a local folder the mirror *is* the folder and both are no-ops,
  so callers never branch on where the run lives.

Remote files are uploaded whole (an object store never shows a half-written object); on file systems that
can rename, an upload goes to a temporary name first. Temporary files (``*.tmp``) are never uploaded.
``local:///abs/path`` names a local folder through fsspec: it behaves like a remote URL (staging, uploads,
listings) and is how the tests check the remote code path across processes. ``file:///abs/path`` is simply
that local path.

Safety: ``check_location`` refuses an unknown protocol (or one whose package is missing) with a clear error,
and ``memory://`` for output that must outlive the process (every CLI ``--out``) unless
``$EDG_ALLOW_MEMORY_OUT=1`` (tests that run a command in-process set it). Every remote key that becomes a local
path goes through ``local_path_for``: a key with ``..``, an absolute key, or one that resolves through a symlink
to somewhere outside the working copy is refused (``StorageError``), never written.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import StorageError
from .io import atomic_path, remove_stale_scratch, remove_stale_temps, scratch_dir, temp_name, write_json_atomic

__all__ = ["is_remote", "plain_path", "check_location", "local_path_for", "url_to_fs", "join", "exists", "size",
           "open_read", "read_bytes", "list_files", "upload", "download", "Mirror", "cache_root", "staging_dir"]


def is_remote(path) -> bool:
    """True for an fsspec URL other than a plain local one (``s3://``, ``gs://``, ``memory://``, ``local://``)."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def plain_path(path):
    """``file:///abs/path`` -> ``/abs/path``; anything else unchanged."""
    s = str(path)
    return s[len("file://"):] if s.startswith("file://") else path


ALLOW_MEMORY_ENV = "EDG_ALLOW_MEMORY_OUT"


def check_location(loc, persistent: bool = False):
    """Validate a folder or file location given by a user and return it in the form EDG uses: a local path
    unchanged, ``file:///x`` as ``/x``, any other URL as a string once its protocol is known and usable.

    ``persistent``: the location must outlive this process (a command's ``--out``): ``memory://`` is refused
    there unless ``$EDG_ALLOW_MEMORY_OUT=1`` (in-process tests). Raises ``StorageError``."""
    if loc is None:
        return loc
    if not is_remote(loc):
        return plain_path(loc)
    s = str(loc)
    url_to_fs(s)  # unknown protocol / missing package: a clear StorageError
    if persistent and s.split("://", 1)[0] == "memory" and os.environ.get(ALLOW_MEMORY_ENV) != "1":
        raise StorageError(f"{s}: memory:// lives only as long as this process, so its output would be lost "
                           f"when the command ends; use a folder or a durable URL (s3://, gs://, ...) "
                           f"(set {ALLOW_MEMORY_ENV}=1 to allow it for in-process tests)")
    return s


def check_writable(loc, what: str = "--out") -> None:
    """Raise ``StorageError`` (one line) when a local output location cannot be written: a part of its path is a
    file, or it (or, while it does not exist, its nearest existing folder) refuses writing to this user.
    A URL is left to its file system."""
    if loc is None or is_remote(loc):
        return
    p = Path(plain_path(loc)).absolute()
    probe = p
    while not probe.exists() and not probe.is_symlink():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != p and not probe.is_dir():
        raise StorageError(f"{what} {loc}: cannot be created, {probe} is a file, not a folder")
    if probe.is_dir():
        ok = os.access(probe, os.W_OK | os.X_OK)
    else:
        ok = os.access(probe, os.W_OK)
    if not ok:
        raise StorageError(f"{what} {loc}: cannot be written ({probe} is read-only for this user)")


def url_to_fs(url: str):
    """(fsspec file system, path without the protocol) for ``url``; an unknown protocol or a missing
    file-system package raises ``StorageError``."""
    import fsspec
    from fsspec.registry import known_implementations, registry
    url = str(url)
    try:
        return fsspec.core.url_to_fs(url)
    except ValueError as e:
        proto = url.split("://", 1)[0]
        if proto not in known_implementations and proto not in registry:
            known = ", ".join(sorted({"file", "local", "memory", "s3", "gs", "gcs", "az", "abfs", "http", "https",
                                      "hdfs", "sftp", "ssh"}))
            raise StorageError(f"{url}: unknown storage protocol {proto!r} (use a local path or an fsspec URL: "
                               f"{known}, ...)") from None
        raise StorageError(f"{url}: {e}") from None
    except ImportError as e:
        raise StorageError(f"{url}: the {url.split('://', 1)[0]}:// file system needs a package that is not "
                           f"installed ({e})") from None


def local_path_for(root: str | os.PathLike, rel: str) -> Path:
    """``root/rel`` for a key ``rel`` that came from a remote listing (or any untrusted source), refusing
    keys that would land outside ``root``: absolute keys, ``..`` components, and paths whose existing parts
    are symlinks leading out of ``root``. Raises ``StorageError``."""
    root = Path(root)
    parts = rel.replace("\\", "/").split("/")
    if not rel or rel.startswith(("/", "\\")) or ".." in parts:
        raise StorageError(f"remote key {rel!r} would be written outside the working copy {root}; refused")
    target = root.joinpath(*[p for p in parts if p not in ("", ".")])
    base = root.resolve()
    real = target.resolve()  # follows every symlink that exists along the way
    if real != base and base not in real.parents:
        raise StorageError(f"remote key {rel!r} resolves to {real}, outside the working copy {root} "
                           "(a symlink?); refused")
    return target


def unstrip(url: str, path: str) -> str:
    """The URL of ``path`` (as an fsspec listing gives it: ``bucket/key`` or ``/abs/key``) on the file system
    of ``url``."""
    return f"{str(url).split('://', 1)[0]}://{path}"


def join(base, *parts: str):
    """``base/part/...``: a ``Path`` for a local base, a URL string for a remote one."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return Path(plain_path(base)).joinpath(*parts)


def exists(path) -> bool:
    if is_remote(path):
        fs, p = url_to_fs(path)
        return fs.exists(p)
    return Path(plain_path(path)).exists()


def size(path) -> int:
    if is_remote(path):
        fs, p = url_to_fs(path)
        return int(fs.size(p))
    return Path(plain_path(path)).stat().st_size


def open_read(path):
    """A binary file object for a local path or a URL."""
    if is_remote(path):
        fs, p = url_to_fs(path)
        return fs.open(p, "rb")
    return open(plain_path(path), "rb")


def read_bytes(path) -> bytes:
    with open_read(path) as f:
        return f.read()


def list_files(folder, pattern: str = "*") -> list[str]:
    """Sorted paths (local) or URLs (remote) of the files matching ``pattern`` directly in ``folder``;
    an absent folder has none."""
    if is_remote(folder):
        fs, root = url_to_fs(folder)
        if not fs.exists(root):
            return []
        return sorted(unstrip(str(folder), p) for p in fs.glob(f"{root.rstrip('/')}/{pattern}"))
    folder = Path(plain_path(folder))
    return sorted(str(p) for p in folder.glob(pattern)) if folder.is_dir() else []


def upload(local: str | os.PathLike, url: str) -> None:
    """Copy the local file to ``url`` whole: a renaming file system gets a temporary name first."""
    fs, p = url_to_fs(url)
    parent = p.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        tmp = f"{parent}/{temp_name(p.rsplit('/', 1)[-1])}" if parent else temp_name(p)
        fs.put_file(str(local), tmp)
        fs.mv(tmp, p)
    else:
        fs.put_file(str(local), p)


def download(url: str, local: str | os.PathLike) -> None:
    """Copy ``url`` to the local file, atomically (write then rename)."""
    fs, p = url_to_fs(url)
    with atomic_path(local) as tmp:
        fs.get_file(p, str(tmp))


def cache_root() -> Path:
    """EDG's cache folder: ``$EDG_CACHE``, or ``~/.cache/edg`` when unset or empty."""
    return Path(os.environ.get("EDG_CACHE") or Path.home() / ".cache" / "edg")


def staging_dir(url: str) -> Path:
    """The default local working copy of a remote folder: ``<cache_root>/staging/<hash of the URL>``, so a
    rerun on the same machine finds what it had."""
    return cache_root() / "staging" / hashlib.sha1(str(url).rstrip("/").encode()).hexdigest()[:16]


def _scratch(prefix: str) -> Path:
    """A temporary folder of this process; folders of killed processes with the same prefix are removed."""
    remove_stale_scratch(prefix)
    return scratch_dir(prefix)


_STATE = ".edg-mirror.json"  # a working copy's record of what it last synced (never uploaded)


def _version(info: dict) -> tuple:
    """What tells two versions of a remote file apart: size and whatever stamp the file system keeps."""
    stamp = next((info[k] for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "updated", "created")
                  if info.get(k) is not None), "")
    if hasattr(stamp, "timestamp"):  # some file systems give a datetime from info() and a float from find()
        stamp = stamp.timestamp()
    return int(info.get("size") or 0), str(stamp)


class Mirror:
    """A local working copy ``local`` of the folder ``url`` (a path or a URL).

    ``exclude``: glob patterns of relative paths that are neither pulled nor pushed (bulky files that their
    writers upload themselves, such as DFT result files or shards), matched with ``fnmatch`` (``*`` crosses
    ``/``: ``fields/*`` is everything under ``fields/``); ``pull`` does not even list a folder they exclude
    whole. ``local`` defaults to ``staging_dir(url)`` for a remote folder, or a fresh temporary folder with
    ``temporary=True`` (Ray actors, whose copies are thrown away).
    """

    def __init__(self, url, local: str | os.PathLike | None = None, exclude: Iterable[str] = (),
                 temporary: bool = False):
        self.remote = str(url).rstrip("/") if is_remote(url) else None
        self.exclude = tuple(exclude)
        self.temporary = temporary and self.remote is not None and local is None
        if self.remote is None:
            self.local = Path(plain_path(url))
        elif local is not None:
            self.local = Path(local)
        else:
            self.local = _scratch("edg-mirror-") if temporary else staging_dir(self.remote)
        self.local.mkdir(parents=True, exist_ok=True)
        if self.remote is not None:  # a reused working copy: drop what interrupted downloads left
            remove_stale_temps(self.local)
        # rel -> [(size, mtime_ns) of the local copy, _version of the remote file] at the last sync; kept in
        # local/.edg-mirror.json so that a working copy reused later knows what it holds
        self._seen: dict[str, list] = {}
        if self.remote is not None and (self.local / _STATE).exists():
            import json
            self._seen = {k: [tuple(a), tuple(b)] for k, (a, b) in
                          json.loads((self.local / _STATE).read_text()).items()}
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """Where the folder lives: the URL, or the local path."""
        return self.remote or str(self.local)

    def where(self, rel: str):
        """The durable location of ``rel`` (a URL for a remote folder), for readers in other processes."""
        return join(self.remote, rel) if self.remote else self.local / rel

    def _skip(self, rel: str) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return name.endswith(".tmp") or rel == _STATE or any(fnmatch.fnmatch(rel, pat) for pat in self.exclude)

    def _excluded_folder(self, rel: str) -> bool:
        """Whether the exclude patterns exclude every file under the folder ``rel``, so that ``pull`` need not
        list it. ``fnmatch``'s ``*`` matches any characters, ``/`` included, so a pattern ``Q*`` that matches
        ``rel/`` matches every path that starts with ``rel/`` too (``fields/*``, ``dft/fields/*``, ``*/cache/*``);
        a pattern that does not end in ``*`` (``*.tar``) never excludes a whole folder."""
        return any(pat.endswith("*") and fnmatch.fnmatch(f"{rel}/", pat) for pat in self.exclude)

    def _remote_files(self, fs, root: str) -> list[tuple[str, dict]]:
        """(relative path, listing entry) of every remote file under ``root`` that is neither excluded nor
        temporary, sorted. The tree is listed one folder at a time, and a folder whose files are all excluded
        (``_excluded_folder``) is never listed: the bulky result files cost nothing here."""
        found, todo = [], [root]
        while todo:
            folder = todo.pop()
            fs.invalidate_cache(folder)  # a listing cached by an earlier pull may be out of date
            for info in fs.ls(folder, detail=True):
                path = info["name"].rstrip("/")
                rel = path[len(root):].lstrip("/")
                if info.get("type") == "directory":
                    if path != folder and rel and not self._excluded_folder(rel):
                        todo.append(path)
                elif rel and not self._skip(rel):
                    found.append((rel, info))
        return sorted(found, key=lambda x: x[0])

    def _local_files(self) -> Iterator[tuple[str, Path]]:
        for dirpath, _, files in os.walk(self.local):
            for f in files:
                p = Path(dirpath) / f
                rel = p.relative_to(self.local).as_posix()
                if self._skip(rel):
                    continue
                if p.is_symlink():  # never upload what a link points to outside the working copy
                    try:
                        local_path_for(self.local, rel)
                    except StorageError:
                        continue
                yield rel, p

    def _synced(self, rel: str, fs, rpath: str) -> None:
        """Note that ``rel`` is the same here and there (after an upload or a download)."""
        st = (self.local / rel).stat()
        self._seen[rel] = [(st.st_size, st.st_mtime_ns), _version(fs.info(rpath))]

    def _changed_here(self, rel: str) -> bool:
        try:
            st = (self.local / rel).stat()
        except FileNotFoundError:
            return False
        return rel not in self._seen or self._seen[rel][0] != (st.st_size, st.st_mtime_ns)

    def _save(self) -> None:
        write_json_atomic(self.local / _STATE, self._seen)

    def commit(self, rel: str, keep: bool = True) -> None:
        """Upload ``local/rel`` now (and delete the local copy unless ``keep``); a local folder: nothing."""
        if self.remote is None:
            return
        fs, root = url_to_fs(self.remote)
        with self._lock:
            upload(local_path_for(self.local, rel), join(self.remote, rel))
            if keep:
                self._synced(rel, fs, f"{root.rstrip('/')}/{rel}")
            else:
                (self.local / rel).unlink(missing_ok=True)
                self._seen.pop(rel, None)

    def push(self) -> int:
        """Upload every local file changed since the last sync; returns how many."""
        if self.remote is None:
            return 0
        fs, root = url_to_fs(self.remote)
        n = 0
        with self._lock:
            for rel, p in list(self._local_files()):
                if not self._changed_here(rel):
                    continue
                upload(p, join(self.remote, rel))
                self._synced(rel, fs, f"{root.rstrip('/')}/{rel}")
                n += 1
            if n:
                self._save()
        return n

    def pull(self) -> int:
        """Fetch every remote file changed since the last sync, unless its local copy changed too (the local
        one wins: the next push sends it). A file never synced here is fetched when missing or of another
        size. Excluded folders are not even listed (``_remote_files``). Returns how many were fetched."""
        if self.remote is None:
            return 0
        fs, root = url_to_fs(self.remote)
        if not fs.exists(root):
            return 0
        root = root.rstrip("/")
        n = 0
        with self._lock:
            for rel, info in self._remote_files(fs, root):
                local, version = local_path_for(self.local, rel), _version(info)
                if not local.exists():
                    stale = True
                elif rel in self._seen:
                    stale = self._seen[rel][1] != version and not self._changed_here(rel)
                else:
                    stale = local.stat().st_size != version[0]
                if stale:
                    download(join(self.remote, rel), local)
                    n += 1
                if stale or rel not in self._seen:
                    st = local.stat()
                    self._seen[rel] = [(st.st_size, st.st_mtime_ns), version]
            self._save()
        return n

    def close(self) -> None:
        """Remove a temporary working copy (one made with ``temporary=True``)."""
        if self.temporary:
            import shutil
            shutil.rmtree(self.local, ignore_errors=True)

    @contextlib.contextmanager
    def autosync(self, every_s: float = 60.0) -> Iterator[Mirror]:
        """Push in a background thread every ``every_s`` seconds while the block runs, and once at its end."""
        if self.remote is None:
            yield self
            return
        stop = threading.Event()

        def loop():
            while not stop.wait(every_s):
                try:
                    self.push()
                except Exception:  # a failed periodic sync is retried; the final push raises
                    import logging
                    logging.getLogger(__name__).warning("sync of %s failed; will retry", self.remote,
                                                        exc_info=True)
        t = threading.Thread(target=loop, name="edg-mirror-sync", daemon=True)
        t.start()
        try:
            yield self
        finally:
            stop.set()
            t.join()
            self.push()

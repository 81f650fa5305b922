"""A run folder: where one EDG run writes, opened once where a command starts and handed to everything below.

``RunFolder.open(location)`` (a local folder or an fsspec URL) is the one place a run's output location becomes
storage. It

1. refuses, before any work and in one line naming the path (``RunFolderRefused``): ``/``, the home folder
   (or a folder above it), and a non-empty folder that is not an EDG run unless ``overwrite`` (``--overwrite``);
2. takes the single-writer lease (``edg_core.lease``): a second run on the same folder is refused naming the
   holder; a dead holder's lease is taken over once its heartbeat expires (at once for a dead pid on this host);
3. writes the marker ``edg-run.json`` that says "an EDG run lives here";
4. owns the working copy (``storage.Mirror``) of a URL folder, the failure manifest (``failure_log``), the
   progress file (``progress_path``), the removal of what interrupted writes left (``remove_interrupted_writes``)
   and the layout of what each stage writes (``DFTLayout``; shard folders: ``edg_core.shards``).

Workers on other processes or nodes get ``writer()``: a small picklable ``RunWriter`` bound to the same
folder, that writes a file locally and uploads it whole for a URL. A sub-folder of a run (the pipeline's
``dft/``, ``shards/ed``) is ``run.child("dft")``: the same lease and working copy.

Run folders written before the marker existed are recognised by their content (``LEGACY_CONTENT``: ``stages/``,
``fields/``, shards, ``failures.jsonl``, ``progress.json``, ``config.yaml``, ...) and resume as before.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import storage
from .errors import EDGError
from .failure_log import FAILURES
from .io import remove_stale_scratch, remove_stale_temps, scratch_dir, write_json_atomic
from .lease import HEARTBEAT_S, LEASE_NAME, FsspecLeaseFile, Lease, LocalLeaseFile

log = logging.getLogger(__name__)

MARKER = "edg-run.json"
PROGRESS = "progress.json"
# what a run folder of an EDG older than the marker holds (any one of them makes it an EDG run)
LEGACY_CONTENT = ("stages", "fields", "cubes", "shards", "dft", FAILURES, PROGRESS, "config.yaml", "manifest.json",
                  "dft_config.yaml", "render_config.yaml", ".edg-mirror.json", "*.tar", "*.tar.keys",
                  "*.failures.jsonl", LEASE_NAME)


class RunFolderRefused(EDGError):
    """An output location EDG will not write into (it would clobber something)."""


class DFTLayout:
    """What the DFT stage writes in its run folder (the one place these paths are spelled)::

        fields/<pp>/<key>.npz   one DFTResult per molecule; pp = 2 hex digits of SHA-1(key) (256 folders)
        fields/<key>.npz        the flat layout of older runs (still read)
        cubes/<key>.<ed|esp>.cube   optional Gaussian cubes
    """
    FIELDS = "fields"
    CUBES = "cubes"
    BULKY = ("fields/*", "cubes/*")  # uploaded whole by the workers that write them, never mirrored

    @staticmethod
    def result_rel(key: str) -> str:
        return f"{DFTLayout.FIELDS}/{hashlib.sha1(key.encode()).hexdigest()[:2]}/{key}.npz"

    @staticmethod
    def flat_result_rel(key: str) -> str:
        return f"{DFTLayout.FIELDS}/{key}.npz"

    @staticmethod
    def cube_rel(key: str, name: str) -> str:
        return f"{DFTLayout.CUBES}/{key}.{name}.cube"


# files that writers upload whole and readers read in place, at any depth of a run: never in a working copy
BULKY = (*DFTLayout.BULKY, *(f"*/{g}" for g in DFTLayout.BULKY), "*.tar", "*.tar.keys")
# nor the lease, which lives at the run's location only (a copy pushed back could overwrite a newer one)
NOT_MIRRORED = (*BULKY, LEASE_NAME)


def _refusal(location: str, local: Path | None) -> str | None:
    """Why ``location`` must never be an output folder (``/``, the home folder or one above it), or None."""
    if local is None:
        return None
    real = local.expanduser().resolve()
    if real == Path(real.anchor):
        return f"{location}: refusing to write a run into the file-system root"
    home = Path.home().resolve()
    if real == home or real in home.parents:
        return f"{location}: refusing to write a run into the home folder{'' if real == home else ' or above it'}"
    return None


def _names(location: str, local: Path | None) -> list[str] | None:
    """The entries directly in the folder (None: it does not exist)."""
    if local is not None:
        return sorted(os.listdir(local)) if local.is_dir() else None
    fs, root = storage.url_to_fs(location)
    if not fs.exists(root):
        return None
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))


def is_run(names: list[str]) -> bool:
    """Whether a folder with these entries is an EDG run: its marker, or the content of an older run."""
    return MARKER in names or any(fnmatch.fnmatch(n, pat) for n in names for pat in LEGACY_CONTENT)


@dataclass
class LeaseSettings:
    """Seconds between heartbeats, and after how long without one a holder counts as dead (None: 3x)."""
    heartbeat_s: float = HEARTBEAT_S
    expiry_s: float | None = None


class RunFolder:
    """One run's output folder; see the module docstring. Build with ``open`` (checks + lease) or ``at``
    (the object only: ``acquire()`` later, as ``Pipeline.run`` does)."""

    def __init__(self, url: str, mirror: storage.Mirror, prefix: str = "", root: RunFolder | None = None):
        self.url = url                # the folder: a local path or a URL string
        self.mirror = mirror          # the working copy (the folder itself when local)
        self.prefix = prefix          # "" for the folder that was opened, "dft/" for run.child("dft")
        self._root = root or self
        self.lease: Lease | None = None
        self.overwrite = False

    # ------------------------------------------------------------ opening and closing
    @classmethod
    def at(cls, location, work_dir: str | os.PathLike | None = None, temporary: bool = True) -> RunFolder:
        """The run folder at ``location`` without checks or lease. A URL gets a working copy: ``work_dir``,
        else a temporary one (``temporary``; stage commands) or ``$EDG_CACHE/staging/<hash>`` (the pipeline,
        so a rerun on this machine finds its copy)."""
        loc = storage.check_location(str(location), persistent=False)
        return cls(str(loc), _LazyMirror(str(loc), work_dir, temporary))

    @classmethod
    def open(cls, location, *, overwrite: bool = False, work_dir: str | os.PathLike | None = None,
             temporary: bool = True, lease: LeaseSettings | None = None, command: str = "") -> RunFolder:
        """``at(location)``, then ``acquire``: refusals, lease, marker."""
        return cls.at(location, work_dir, temporary).acquire(overwrite=overwrite, lease=lease, command=command)

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.url)

    def _local_location(self) -> Path | None:
        return None if self.remote else Path(self.url)

    def check(self, overwrite: bool = False) -> None:
        """Refuse (``RunFolderRefused``) a location this run must not write into; see the module docstring."""
        local = self._local_location()
        why = _refusal(self.url, local)
        if why:
            raise RunFolderRefused(why)
        names = _names(self.url, local)
        if names and not is_run(names) and not overwrite:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise RunFolderRefused(f"{self.url}: not empty and not an EDG run (holds {shown}); choose an empty or "
                                   f"new folder, or pass --overwrite to write into it anyway")
        if local is not None and local.exists() and not local.is_dir():
            raise RunFolderRefused(f"{self.url}: is a file, not a folder")

    def acquire(self, overwrite: bool = False, lease: LeaseSettings | None = None, command: str = "") -> RunFolder:
        """Check the location, take the lease, write the marker; returns self. ``close()`` releases."""
        if self._root is not self:
            raise EDGError(f"{self.url}: a sub-folder of a run shares its run's lease; acquire the run")
        self.check(overwrite)
        self.overwrite = overwrite
        settings = lease or LeaseSettings()
        if self.remote:
            file = FsspecLeaseFile(str(storage.join(self.url, LEASE_NAME)))  # creates the folder as needed
        else:
            Path(self.url).mkdir(parents=True, exist_ok=True)
            file = LocalLeaseFile(Path(self.url) / LEASE_NAME)
        self.lease = Lease(file, self.url, settings.heartbeat_s, settings.expiry_s).acquire()
        try:
            self._write_marker(command)
        except BaseException:
            self.close()
            raise
        return self

    def _write_marker(self, command: str) -> None:
        if storage.exists(self.where(MARKER)):
            return
        write_json_atomic(self.local / MARKER, {"edg_run": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime()),
                                                "command": command})
        self.commit(MARKER)

    def close(self) -> None:
        """Release the lease (the working copy stays until ``discard_working_copy``)."""
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        self.discard_working_copy()

    def discard_working_copy(self) -> None:
        """Remove a temporary working copy (stage commands); nothing for a local folder or a staging copy."""
        if self._root is self and isinstance(self.mirror, _LazyMirror):
            self.mirror.close()

    # ------------------------------------------------------------ where things are
    @property
    def local(self) -> Path:
        """Where this process reads and writes the folder's small files (the folder itself when local)."""
        return self._root.mirror.local / self.prefix if self.prefix else self._root.mirror.local

    def where(self, rel: str = ""):
        """The durable location of ``rel`` (a URL string for a remote run, else a ``Path``)."""
        full = f"{self.prefix}{rel}".rstrip("/")
        if not full:
            return self._root.url if self.remote else Path(self._root.url)
        return storage.join(self._root.url, *full.split("/"))

    def child(self, rel: str) -> RunFolder:
        """The sub-folder ``rel`` of this run: the same lease and working copy."""
        prefix = f"{self.prefix}{rel.strip('/')}/"
        return RunFolder(str(self.where(rel.strip("/"))), self._root.mirror, prefix, self._root)

    @property
    def progress_path(self) -> Path:
        """The progress file (``progress.json``) of a stage writing into this folder."""
        return self.local / PROGRESS

    def failure_log(self, name: str = FAILURES):
        """The failure manifest of this folder (``failures.jsonl``, or ``<file>.failures.jsonl``)."""
        from .failure_log import FailureLog
        return FailureLog(self, name)

    def writer(self) -> RunWriter:
        """A small picklable writer bound to this folder, for workers in other processes or on other nodes."""
        return RunWriter(str(self.where()))

    # ------------------------------------------------------------ syncing the working copy
    def commit(self, rel: str) -> None:
        """Upload ``rel`` (of this folder) now when the run is remote; nothing for a local folder."""
        self._root.mirror.commit(f"{self.prefix}{rel}")

    def pull(self) -> int:
        return self._root.mirror.pull()

    def push(self) -> int:
        return self._root.mirror.push()

    def autosync(self, every_s: float):
        return self._root.mirror.autosync(every_s)

    def remove_interrupted_writes(self, *folders: str) -> list[Path]:
        """Remove the temp files that writers killed mid-write left in this folder's top level and in the
        sub-``folders`` (only those of dead processes: ``edg_core.io.remove_stale_temps``). Local runs only: a
        remote run's files are uploaded whole."""
        if self.remote:
            return []
        root = Path(self.url)
        removed = remove_stale_temps(root, recursive=False)
        for f in folders:
            removed += remove_stale_temps(root / f)
        for p in removed:
            log.info("removed %s (left by an interrupted write)", p)
        return removed


class _LazyMirror:
    """The run's ``storage.Mirror``, made on first use (so that a refused run makes no working copy)."""

    def __init__(self, url: str, work_dir, temporary: bool):
        self.url, self.work_dir, self.temporary = url, work_dir, temporary
        self._mirror: storage.Mirror | None = None

    def get(self) -> storage.Mirror:
        if self._mirror is None:
            self._mirror = storage.Mirror(self.url, local=self.work_dir, exclude=NOT_MIRRORED,
                                          temporary=self.temporary and self.work_dir is None)
        return self._mirror

    def __getattr__(self, name):
        return getattr(self.get(), name)

    def close(self) -> None:
        if self._mirror is not None:
            self._mirror.close()


@dataclass
class RunWriter:
    """A writer bound to a run folder (``RunFolder.writer()``), sent to workers: ``with w.file(rel) as p:``
    write the local file ``p``; on leaving the block it is in the run (uploaded whole, and the staged copy
    removed, for a URL run). Pickles as its location only."""
    url: str

    def __post_init__(self):
        self.url = str(storage.plain_path(self.url))
        self._staging: Path | None = None

    def __getstate__(self):
        return {"url": self.url}

    def __setstate__(self, state):
        self.url = state["url"]
        self._staging = None

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.url)

    def where(self, rel: str):
        return storage.join(self.url, *rel.split("/"))

    @contextlib.contextmanager
    def file(self, rel: str) -> Iterator[Path]:
        if not self.remote:
            path = Path(self.url) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            yield path
            return
        if self._staging is None:
            remove_stale_scratch("edg-writer-")
            self._staging = scratch_dir("edg-writer-")
        local = storage.local_path_for(self._staging, rel)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield local
            if local.exists():
                storage.upload(local, str(self.where(rel)))
        finally:
            local.unlink(missing_ok=True)

    def close(self) -> None:
        if self._staging is not None:
            import shutil
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def read_marker(run: RunFolder) -> dict | None:
    """The marker's content, or None for a folder without one."""
    where = run.where(MARKER)
    return json.loads(storage.read_bytes(where)) if storage.exists(where) else None

"""The single-writer lease of a run folder: ``<run>/edg-lease.json``, so that two runs never write one output.

The lease file holds the holder's ``host``, ``pid``, ``started`` and ``heartbeat`` (Unix seconds), a random
``token`` and the ``expiry_s`` it promises to keep. While a run holds it, a background thread rewrites
``heartbeat`` every ``heartbeat_s`` seconds. Another run on the same folder is refused (``LeaseHeld``, one line
naming the holder) unless the holder is gone:

* its heartbeat is older than its ``expiry_s`` (default 3 x ``heartbeat_s``): it died on some node, or its
  node lost the folder; or
* it ran on this host and its pid no longer exists: taken over at once.

A takeover is logged (``took over the lease of ...``). Heartbeats are compared with this machine's clock, so
nodes sharing an output need clocks within a fraction of ``expiry_s`` of each other (NTP gives milliseconds).

Atomicity. Local folder: the lease is created with ``O_CREAT | O_EXCL`` (exactly one of two simultaneous runs
wins); a takeover renames the stale file aside, checks that what it moved is the stale lease it judged (else
puts it back and refuses), and creates the new lease with ``O_EXCL`` again. fsspec URL: creation uses
``open(mode="xb")`` (exclusive on local, memory and object stores that support conditional writes; a file
system without it falls back to exists-then-write). A takeover there is delete-then-create: two runs that both
judge the same stale lease expired within the same moment (milliseconds between their reads) could both
proceed; each re-reads the lease after writing it and the loser of the last write refuses, which narrows but
does not close that window. Each heartbeat re-reads the lease first and stops, logging an error, when another
run has taken it over.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from .errors import EDGError
from .io import temp_name, write_bytes_atomic

log = logging.getLogger(__name__)

LEASE_NAME = "edg-lease.json"
HEARTBEAT_S = 30.0


class LeaseHeld(EDGError):
    """Another live run holds the lease of the folder."""


@dataclass(frozen=True)
class LeaseHolder:
    """What a lease file says: who holds the folder and since when (Unix seconds)."""
    host: str
    pid: int
    started: float
    heartbeat: float
    token: str
    expiry_s: float

    def line(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {_stamp(self.started)}"

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseHolder | None:
        """The holder, or None for a file cut short (a writer killed mid-write: treated as expired)."""
        try:
            d = json.loads(data)
            return cls(str(d["host"]), int(d["pid"]), float(d["started"]), float(d["heartbeat"]), str(d["token"]),
                       float(d["expiry_s"]))
        except (ValueError, KeyError, TypeError):
            return None

    def gone(self, now: float) -> str | None:
        """Why this holder no longer holds the lease (its heartbeat expired, its process is dead), or None."""
        if now - self.heartbeat > self.expiry_s:
            return f"its last heartbeat was {now - self.heartbeat:.0f} s ago (expiry {self.expiry_s:g} s)"
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return "its process no longer runs on this host"
        return None


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- where the lease file lives
class LocalLeaseFile:
    """The lease file in a local folder (atomic create, rename and replace)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)

    def __str__(self) -> str:
        return self.path

    def create(self, data: bytes) -> bool:
        """Write ``data`` if there is no lease file; False when there is one."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def read(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def replace(self, data: bytes) -> None:
        write_bytes_atomic(self.path, data)  # temp file + rename: a reader sees the old or the new lease

    def remove_if(self, expected: bytes) -> bool:
        """Remove the lease file if it still holds ``expected``; False (nothing removed) otherwise. The file is
        first renamed aside (a temp name that the next run removes if this process dies here)."""
        folder, name = os.path.split(self.path)
        aside = os.path.join(folder, temp_name(name))
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        with open(aside, "rb") as f:
            moved = f.read()
        if moved != expected:  # another run replaced it meanwhile: put its lease back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.unlink(aside)
            return False
        os.unlink(aside)
        return True


class FsspecLeaseFile:
    """The lease file at an fsspec URL; see the module docstring for the race window of a takeover."""

    def __init__(self, url: str):
        from .storage import url_to_fs
        self.url = url
        self.fs, self.path = url_to_fs(url)

    def __str__(self) -> str:
        return self.url

    def create(self, data: bytes) -> bool:
        parent = self.path.rsplit("/", 1)[0]
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError):  # no exclusive mode here: check, then write
            if self.fs.exists(self.path):
                return False
            self.fs.pipe_file(self.path, data)
        return self.read() == data  # the last of two simultaneous writers wins; the other refuses

    def read(self) -> bytes | None:
        try:
            self.fs.invalidate_cache(self.path)
            return self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None

    def replace(self, data: bytes) -> None:
        self.fs.pipe_file(self.path, data)

    def remove_if(self, expected: bytes) -> bool:
        if self.read() != expected:
            return False
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            return False
        return True


# ---------------------------------------------------------------- the lease
class Lease:
    """The lease of one run folder, held by this process: ``acquire()`` (or ``LeaseHeld``), a heartbeat
    thread, ``release()``. ``heartbeat_s``/``expiry_s``: seconds (``expiry_s`` defaults to 3 x
    ``heartbeat_s``); ``where`` names the folder in messages."""

    def __init__(self, file: LocalLeaseFile | FsspecLeaseFile, where: str, heartbeat_s: float = HEARTBEAT_S,
                 expiry_s: float | None = None):
        self.file, self.where = file, where
        self.heartbeat_s = float(heartbeat_s)
        self.expiry_s = float(expiry_s if expiry_s is not None else 3 * self.heartbeat_s)
        self.holder: LeaseHolder | None = None
        self.took_over: str | None = None  # the line logged when this run took over a dead holder's lease
        self.lost: str | None = None       # set when another run took the lease while this one held it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written: bytes = b""

    def _mine(self) -> LeaseHolder:
        now = time.time()
        return LeaseHolder(socket.gethostname(), os.getpid(), now, now, uuid.uuid4().hex, self.expiry_s)

    def acquire(self) -> Lease:
        """Take the lease, taking over a dead holder's (logged); raise ``LeaseHeld`` naming a live holder."""
        me = self._mine()
        data = me.to_bytes()
        for _ in range(3):  # create, or take over a dead holder, or learn who holds it
            if self.file.create(data):
                self.holder, self._written = me, data
                self._start_heartbeat()
                return self
            current = self.file.read()
            if current is None:
                continue  # released between our create and our read: try again
            other = LeaseHolder.from_bytes(current)
            why = "its lease file is unreadable" if other is None else other.gone(time.time())
            if why is None:
                raise LeaseHeld(f"{self.where}: another EDG run is writing here ({other.line()}, last heartbeat "
                                f"{time.time() - other.heartbeat:.0f} s ago); wait for it to finish, or use "
                                f"another output")
            if self.file.remove_if(current):
                who = other.line() if other else "an unreadable lease"
                self.took_over = f"{self.where}: took over the lease of {who}: {why}"
                log.warning(self.took_over)
                print(f"[lease] {self.took_over}", flush=True)
        raise LeaseHeld(f"{self.where}: could not take the lease ({self.file}); another run is taking it")

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="edg-lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.beat()
            except Exception:  # a missed heartbeat is retried; only expiry_s of them loses the lease
                log.warning("heartbeat of the lease %s failed; will retry", self.file, exc_info=True)

    def beat(self) -> None:
        """Refresh the heartbeat now (the thread calls this every ``heartbeat_s``)."""
        if self.holder is None or self.lost:
            return
        current = self.file.read()
        if current != self._written:
            other = LeaseHolder.from_bytes(current) if current else None
            self.lost = (f"{self.where}: this run's lease was taken over by "
                         f"{other.line() if other else 'another run'}; stop this run, its output is now written "
                         f"by the other")
            log.error(self.lost)
            self._stop.set()
            return
        self.holder = LeaseHolder(**{**asdict(self.holder), "heartbeat": time.time()})
        data = self.holder.to_bytes()
        self.file.replace(data)
        self._written = data

    def release(self) -> None:
        """Stop the heartbeat and remove the lease file if it is still this run's."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.holder is not None and not self.lost:
            try:
                self.file.remove_if(self._written)
            except OSError:
                log.warning("could not remove the lease %s; the next run takes it over once it expires",
                            self.file, exc_info=True)
        self.holder = None

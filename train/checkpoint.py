"""Checkpoints as plain data, and the keep-last-N / every-k policy every training loop shares.

A checkpoint file holds only tensors, numbers, strings, None, lists, tuples and dicts (configs as plain
dicts), so it loads with ``torch.load(weights_only=True)``: a file someone else made cannot run code when
it is read. ``save_checkpoint`` refuses anything else before writing; ``load_checkpoint`` refuses a file
that would need full unpickling, with an error naming the file and the way out: ``--unsafe-load-pickle``
on the command line, or ``EDG_UNSAFE_LOAD_PICKLE=1`` in the environment (the flag sets it, so Ray workers
started from that process inherit it), for an old file the user made and trusts.

``Checkpoints(folder, every, keep_last)`` keeps a run's resumable state as ``<folder>/epoch-NNNNNN.pt``
(NNNNNN = epochs finished), written atomically every ``every`` epochs and after the last epoch, pruned to
the newest ``keep_last``; ``best.pt`` beside them holds the best model so far when the loop has a
validation metric. Importing this module does not import torch (the CLI adds its flag from here).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path

from edg_core.errors import EDGError
from edg_core.io import atomic_path

log = logging.getLogger(__name__)

UNSAFE_ENV = "EDG_UNSAFE_LOAD_PICKLE"
UNSAFE_FLAG = "--unsafe-load-pickle"
UNSAFE_HELP = ("UNSAFE: also load old checkpoints that need full Python unpickling, which runs any code the "
               "file contains; only for files you made yourself (default: refuse them)")


class CheckpointError(EDGError):
    """A checkpoint file is missing, corrupt, of the wrong kind, or not plain data."""


def add_unsafe_flag(parser) -> None:
    """The ``--unsafe-load-pickle`` flag of every command that loads checkpoints (``cluster.cli`` acts on it)."""
    parser.add_argument(UNSAFE_FLAG, dest="unsafe_load_pickle", action="store_true", help=UNSAFE_HELP)


def allow_unsafe_pickle(on: bool = True) -> None:
    """Let ``load_checkpoint`` fall back to full unpickling in this process and the processes it starts."""
    if on:
        os.environ[UNSAFE_ENV] = "1"
    else:
        os.environ.pop(UNSAFE_ENV, None)


def unsafe_allowed(unsafe: bool | None = None) -> bool:
    return bool(unsafe) if unsafe is not None else os.environ.get(UNSAFE_ENV) == "1"


def check_plain(obj, where: str = "checkpoint") -> None:
    """Raise ``CheckpointError`` naming the first value that ``torch.load(weights_only=True)`` would refuse."""
    import torch
    if isinstance(obj, (int, float, bool, str, bytes, type(None), torch.Tensor, torch.Size, torch.dtype)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, (dict, OrderedDict)):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"{where}: key {k!r} of type {type(k).__name__} is not plain data")
            check_plain(v, f"{where}.{k}")
        return
    raise CheckpointError(f"{where}: a {type(obj).__module__}.{type(obj).__name__} is not plain data "
                          f"(tensors, numbers, strings, lists, dicts); convert it before saving")


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` (plain data only, checked first) to ``path`` atomically."""
    import torch
    path = Path(path)
    check_plain(state, path.name)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu", what: str = "checkpoint",
                    unsafe: bool | None = None) -> dict:
    """A checkpoint's content, read with ``weights_only=True``. A file that needs full unpickling (an old
    EDG checkpoint, or a hostile one) is refused unless ``unsafe`` (default: ``EDG_UNSAFE_LOAD_PICKLE=1``)."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not unsafe_allowed(unsafe):
            lines = [x.strip() for x in str(e).splitlines() if x.strip()]
            reason = next((x for x in lines if "unsupported" in x.lower()), lines[-1] if lines else type(e).__name__)
            raise CheckpointError(
                f"{path}: {what} is not a plain-data EDG checkpoint; loading it would need full Python "
                f"unpickling, which can run code stored in the file, so EDG refused ({reason[:200]}). If you "
                f"made this file yourself with an older EDG, pass {UNSAFE_FLAG} (or set {UNSAFE_ENV}=1)") from None
        log.warning("%s: loading with full unpickling (%s): this runs any code the file holds", path, UNSAFE_FLAG)
        ck = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError) as e:
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: {what} cannot be read (truncated or corrupt: {detail})") from None
    if not isinstance(ck, dict):
        raise CheckpointError(f"{path}: {what} holds a {type(ck).__name__}, expected a dict")
    return ck


_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pt$")


class Checkpoints:
    """A run's resumable checkpoints: ``<folder>/epoch-NNNNNN.pt`` (NNNNNN = epochs finished) and ``best.pt``.

    ``every``: epochs between checkpoints (0: only after the last epoch); ``keep_last``: how many epoch
    files to keep (at least 1 while training, so a rerun can resume).
    """

    def __init__(self, folder: str | os.PathLike, every: int = 1, keep_last: int = 1):
        if every < 0 or keep_last < 1:
            raise CheckpointError(f"checkpoint policy needs every >= 0 and keep_last >= 1 "
                                  f"(got every={every}, keep_last={keep_last})")
        self.folder, self.every, self.keep_last = Path(folder), every, keep_last

    def due(self, epochs_done: int, total: int) -> bool:
        """Is a checkpoint due after ``epochs_done`` of ``total`` epochs?"""
        return epochs_done >= total or (self.every > 0 and epochs_done % self.every == 0)

    def files(self) -> list[Path]:
        """Epoch files, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _EPOCH_FILE.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        files = self.files()
        return files[-1] if files else None

    def save(self, state: dict, epochs_done: int) -> Path:
        """Write ``epoch-<epochs_done>.pt`` and drop all but the newest ``keep_last`` epoch files."""
        path = save_checkpoint(state, self.folder / f"epoch-{epochs_done:06d}.pt")
        for old in self.files()[:-self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    @property
    def best_path(self) -> Path:
        return self.folder / "best.pt"

    def save_best(self, state: dict) -> Path:
        return save_checkpoint(state, self.best_path)

    def load_latest(self, map_location="cpu", what: str = "checkpoint", unsafe: bool | None = None) -> dict | None:
        path = self.latest()
        return None if path is None else load_checkpoint(path, map_location, what, unsafe)

    def clear(self) -> None:
        """Remove the epoch files and ``best.pt`` (a finished run whose results are written)."""
        for p in [*self.files(), self.best_path]:
            p.unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()

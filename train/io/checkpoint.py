"""Checkpoints as plain data, and the keep-last-N / every-k policy every training loop shares.

A checkpoint file holds only tensors, numbers, strings, None, lists, tuples and dicts (configs as plain
dicts), so it loads with ``torch.load(weights_only=True)``: a file someone else made cannot run code when
it is read. ``save_checkpoint`` refuses anything else before writing. ``load_checkpoint`` never unpickles
in full: besides plain data it accepts only the values older EDG checkpoints held (numpy arrays and scalars
in metrics, paths in configs; ``legacy_globals``), which build values and nothing else, and it refuses any
other object with an error naming the file and what the file would have run.

``Checkpoints(folder, every, keep_last)`` keeps a run's resumable state as ``<folder>/epoch-NNNNNN.pt``
(NNNNNN = epochs finished), written atomically every ``every`` epochs and after the last epoch, pruned to
the newest ``keep_last``; ``best.pt`` beside them holds the best model so far when the loop has a
validation metric. Importing this module does not import torch.
"""
from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path

from edg.edg_core.errors import EDGError
from edg.edg_core.io import atomic_path


class CheckpointError(EDGError):
    """A checkpoint file is missing, corrupt, of the wrong kind, or not plain data."""


def legacy_globals() -> list:
    """What older EDG checkpoints pickled besides plain data: numpy arrays, scalars and numeric dtypes (metrics)
    and paths (configs), for ``torch.serialization.safe_globals``. Each only builds a value; none runs other
    code. numpy's array helpers are listed under both module names (``numpy.core`` before numpy 2)."""
    import pathlib

    import numpy as np
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    found: list = [np.ndarray, np.dtype, pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath,
                   pathlib.PurePosixPath, pathlib.PureWindowsPath]
    for name in ("scalar", "_reconstruct"):
        f = getattr(multiarray, name)
        found += [(f, f"numpy.core.multiarray.{name}"), (f, f"numpy._core.multiarray.{name}")]
    numeric = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return found + [d for d in numeric if np.dtype(getattr(d, "type", object)).kind in "biufc"]


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


def load_checkpoint(path: str | os.PathLike, map_location="cpu", what: str = "checkpoint") -> dict:
    """A checkpoint's content, read with ``weights_only=True`` (plain data, and the numpy values and paths of
    older EDG files: ``legacy_globals``). A file that holds anything else (a hostile pickle payload) is refused
    with a ``CheckpointError`` naming the file and the object; nothing in it runs."""
    import torch
    from edg.edg_core.safe_pickle import UnsafePickleError, check_torch_checkpoint
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:  # the opcode pre-scan first: torch's weights-only loader still runs bytearray(n) at any size
        check_torch_checkpoint(path)
    except UnsafePickleError as e:
        raise CheckpointError(f"{what} {e}") from None
    try:
        with torch.serialization.safe_globals(legacy_globals()):
            ck = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        reason = next((x for x in lines if "unsupported" in x.lower()), lines[-1] if lines else type(e).__name__)
        raise CheckpointError(
            f"{path}: {what} is not an EDG checkpoint: it holds objects that only full Python unpickling could "
            f"build, which can run code stored in the file, so EDG refused it ({reason[:200]}). EDG never "
            f"unpickles in full; save plain data (tensors, numbers, strings, lists, dicts) instead") from None
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

    def load_latest(self, map_location="cpu", what: str = "checkpoint") -> dict | None:
        path = self.latest()
        return None if path is None else load_checkpoint(path, map_location, what)

    def clear(self) -> None:
        """Remove the epoch files and ``best.pt`` (a finished run whose results are written)."""
        for p in [*self.files(), self.best_path]:
            p.unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def model_file(path: str | os.PathLike, export_name: str, what: str = "model", checkpoints: bool = True) -> Path:
    """The file a model loader reads for ``path``: ``path`` itself when it is not a folder; in a run folder its
    export ``export_name`` (e.g. ``imageed.pt``), else (with ``checkpoints``) ``checkpoint/best.pt``, else the
    newest ``checkpoint/epoch-*.pt``, else ``checkpoint/checkpoint.pt`` (the one-file layout of earlier EDG
    versions). A run folder holding none of them is a ``CheckpointError`` naming the folder and the files."""
    path = Path(path)
    if not path.is_dir():
        return path
    cands = [path / export_name]
    if checkpoints:
        ckpts = Checkpoints(path / "checkpoint")
        cands += [ckpts.best_path, ckpts.latest(), ckpts.folder / "checkpoint.pt"]
    for cand in cands:
        if cand is not None and cand.is_file():
            return cand
    also = " and no checkpoint (checkpoint/best.pt, checkpoint/epoch-*.pt)" if checkpoints else ""
    raise CheckpointError(f"{path}: no {export_name}{also} in this {what} run folder")

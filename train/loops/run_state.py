"""The state of one training run, and its checkpoint: one format for every EDG training loop.

Epoch numbering, stated once for all of EDG: epoch k is the k-th pass over the training data, counted from 1.
``RunState.epoch`` is the number of epochs finished (0 before the first). Epoch k's row in ``metrics.jsonl``
and ``metrics.csv`` has ``"epoch": k``, ``progress.json`` says "epoch k of N", the checkpoint written after
it is ``checkpoint/epoch-<k:06d>.pt`` holding ``"epoch": k``, and a run resumed from it trains epoch k + 1 next.

A checkpoint (``RunState.checkpoint``) is plain data, loadable with ``torch.load(weights_only=True)``:

``format``      ``CHECKPOINT_FORMAT``
``name``        what was trained (``imageed``, ``teacher``, a student run name, a representation)
``epoch``       epochs finished
``model``, ``optimizer``, ``scheduler`` (or None), ``modules`` ({name: state dict} of other trained modules,
                e.g. the EDG head's mapper), ``generator`` (the data-order RNG state, or None)
``history``     the metrics rows of epochs 1..epoch
``best``        {value, epoch, weights (state dict or None), extra} of the best epoch so far
``seconds``     wall seconds spent in epochs so far
``config``      the run's config as a plain dict (or None); ``extra``: loop-specific plain data
plus, when the model has a standalone file (``imageed.pt``, ``teacher.pt``), that file's keys, so a model
loader reads an epoch checkpoint as it reads the export.

``upgrade_checkpoint`` turns the three checkpoint layouts of EDG before this format (pretraining, student,
representation study) into this one; ``load_run_checkpoint`` reads either.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from edg.train.io.checkpoint import CheckpointError, load_checkpoint

CHECKPOINT_FORMAT = "edg-run/1"


@dataclass
class Best:
    """The epoch with the lowest selection metric so far. ``epoch`` 0 with a finite ``value``: the untrained
    model (a loop may seed it); ``epoch`` 0 with ``value`` inf: none yet."""
    value: float = math.inf
    epoch: int = 0
    weights: dict | None = None           # the model's state dict at that epoch, when the loop keeps it
    extra: dict = field(default_factory=dict)  # what the loop recorded at that epoch (e.g. test errors)

    def as_dict(self) -> dict:
        return {"value": self.value, "epoch": self.epoch, "weights": self.weights, "extra": self.extra}


@dataclass
class RunState:
    """Everything a resumed run needs. ``scheduler``: anything with ``state_dict`` / ``load_state_dict``."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None = None
    generator: torch.Generator | None = None
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: Best = field(default_factory=Best)
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def keep_best(self, value: float, epoch: int, keep_weights: bool, extra: dict | None = None) -> None:
        self.best = Best(value, epoch, copy.deepcopy(self.model.state_dict()) if keep_weights else None,
                         dict(extra or {}))

    def checkpoint(self, name: str, config: dict | None = None, export: dict | None = None) -> dict:
        """This state as a checkpoint (see the module docstring); ``export``: the model's standalone file keys."""
        return {**(export or {}), "format": CHECKPOINT_FORMAT, "name": name, "epoch": self.epoch,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "modules": {k: m.state_dict() for k, m in self.modules.items()},
                "generator": self.generator.get_state() if self.generator is not None else None,
                "history": self.history, "best": self.best.as_dict(), "seconds": self.seconds,
                "config": config, "extra": self.extra}

    def restore(self, ck: dict) -> None:
        """Load a checkpoint of this format (``load_run_checkpoint`` converts older ones) into this state."""
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scheduler is not None and ck.get("scheduler") is not None:
            self.scheduler.load_state_dict(ck["scheduler"])
        for k, m in self.modules.items():
            if ck["modules"].get(k) is not None:
                m.load_state_dict(ck["modules"][k])
        if self.generator is not None and ck.get("generator") is not None:
            self.generator.set_state(ck["generator"])
        b = ck["best"]
        self.epoch, self.seconds = int(ck["epoch"]), float(ck["seconds"])
        self.history = list(ck["history"]) if ck["history"] is not None else []
        self.best = Best(b["value"], b["epoch"], b["weights"], dict(b["extra"]))
        self.extra = {**self.extra, **ck["extra"]}


def load_run_checkpoint(path: str | Path, map_location="cpu", what: str = "checkpoint") -> dict:
    """A run checkpoint in this module's format, read with ``weights_only=True`` (``train.io.checkpoint``);
    files of earlier EDG versions are converted on the fly (``upgrade_checkpoint``)."""
    return upgrade_checkpoint(load_checkpoint(path, map_location, what), str(path))


def upgrade_checkpoint(ck: dict, where: str = "checkpoint") -> dict:
    """``ck`` in ``CHECKPOINT_FORMAT``. Earlier EDG versions wrote three layouts:

    * pretraining (``stage`` key): ``epoch`` was the 0-based index of the last epoch finished, history rows
      counted from 0; ``steps_per_epoch``; best kept only in ``best.pt``;
    * students (``state`` key): ``state`` = {epoch (finished), best, best_epoch (-1: none), valid, test,
      test_errors, seconds, best_state}, ``mapper``, ``generator``; history only in metrics.jsonl (``history``
      None here: the loop takes it from there);
    * the representation study (``best`` with ``model``): ``history`` = {train_loss: [...], valid_std_mae:
      [untrained, ...]}, ``epoch`` (finished), ``seconds``.
    """
    if ck.get("format") == CHECKPOINT_FORMAT:
        return ck
    if "format" in ck:
        raise CheckpointError(f"{where}: checkpoint format {ck['format']!r} is newer than this EDG "
                              f"({CHECKPOINT_FORMAT}); upgrade EDG to resume it")
    common = {"format": CHECKPOINT_FORMAT, "model": ck.get("model"), "optimizer": ck.get("optimizer"),
              "scheduler": ck.get("scheduler"), "generator": ck.get("generator"), "config": ck.get("config")}
    if "stage" in ck:
        history = [{**r, "epoch": r["epoch"] + 1} for r in ck["history"]]
        valid = [(r["valid_loss"], r["epoch"]) for r in history if "valid_loss" in r]
        value, epoch = min(valid, default=(math.inf, 0))
        export = {k: v for k, v in ck.items() if k not in (*common, "stage", "epoch", "steps_per_epoch", "history")}
        return {**export, **common, "name": ck["stage"], "epoch": ck["epoch"] + 1, "modules": {},
                "history": history, "best": {"value": value, "epoch": epoch, "weights": None, "extra": {}},
                "seconds": 0.0, "extra": {"steps_per_epoch": ck["steps_per_epoch"]}}
    if "state" in ck:
        s = ck["state"]
        return {**common, "name": None, "epoch": s["epoch"],
                "modules": {"mapper": ck["mapper"]} if ck.get("mapper") is not None else {}, "history": None,
                "best": {"value": s["best"], "epoch": max(s["best_epoch"], 0), "weights": s["best_state"],
                         "extra": {"valid": s["valid"], "test": s["test"], "test_errors": s["test_errors"]}},
                "seconds": s["seconds"], "extra": {}}
    if isinstance(ck.get("best"), dict) and "model" in ck["best"]:
        h = ck["history"]
        rows = [{"epoch": i + 1, "train_loss": t, "valid_std_mae": v}
                for i, (t, v) in enumerate(zip(h["train_loss"], h["valid_std_mae"][1:]))]
        b = ck["best"]
        return {**common, "name": None, "epoch": ck["epoch"], "modules": {}, "history": rows,
                "best": {"value": b["value"], "epoch": b["epoch"], "weights": b["model"], "extra": {}},
                "seconds": ck["seconds"], "extra": {"untrained_valid_std_mae": h["valid_std_mae"][0]}}
    raise CheckpointError(f"{where}: not an EDG training checkpoint (keys {sorted(ck)[:8]})")

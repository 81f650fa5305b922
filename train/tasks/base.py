"""What every supervised task offers the training loop (``train/distill.py``).

A task owns its data (train / valid / test ``PackedMolecules``), turns a student's output into predictions in
reporting units, defines the task loss and the per-molecule errors used for metrics and model selection.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from .packed import Batch, PackedMolecules


def task_config(cls, spec, overrides: dict, **fixed):
    """The task config ``cls`` of a dataset spec (``edg_core.spec.DatasetSpec``): ``fixed`` (the subset:
    molecule or target), then the spec's options (values read as YAML scalars, ``root`` kept as text;
    ``limit=N`` caps train/valid/test sizes at N), then ``overrides`` (``--task KEY=VALUE``; they win)."""
    import yaml
    from edg.edg_core.config import from_dict
    opts = {k: (v if k == "root" else yaml.safe_load(v) if v else None) for k, v in spec.options}
    opts.update(overrides)
    limit = opts.pop("limit", None)
    if limit is not None:
        for key in ("train_size", "valid_size", "test_size"):
            opts.setdefault(key, limit)
    return from_dict(cls, {**fixed, **opts}, where=f"task {spec.base}")


LOSSES = {"l1": torch.nn.functional.l1_loss, "mse": torch.nn.functional.mse_loss}


def loss_fn(kind: str):
    """``torch.nn.functional.l1_loss`` or ``mse_loss`` for ``kind`` l1 / mse."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; use one of {', '.join(LOSSES)}")
    return LOSSES[kind]


@dataclass
class Prediction:
    """A student's output on one batch: pooled features F_G (B, d_G) and predictions in reporting units
    (``values`` name -> tensor: molecule quantities (B,), atom quantities (A, ...), e.g. forces (A, 3))."""
    features: torch.Tensor
    values: dict[str, torch.Tensor] = field(default_factory=dict)


class Task(Protocol):
    name: str                 # e.g. "rmd17:aspirin", "qm9:U0"
    out_dim: int              # student output width
    needs_forces: bool        # whether prediction needs d/dpos (then evaluation runs with autograd)
    select_metric: str        # validation metric (lower is better) used for model selection
    units: dict[str, str]     # metric name -> unit
    train: PackedMolecules
    valid: PackedMolecules
    test: PackedMolecules

    def predict(self, model: torch.nn.Module, batch: Batch, training: bool) -> Prediction: ...

    def loss(self, pred: Prediction, batch: Batch, kind: str = "l1") -> torch.Tensor:
        """The task loss, ``kind`` l1 (mean absolute error) or mse (mean squared error)."""
        ...

    def abs_errors(self, pred: Prediction, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-molecule absolute errors (B,) in reporting units, one entry per metric."""
        ...

    def describe(self) -> dict: ...

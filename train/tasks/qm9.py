"""QM9 single-target regression, Geom3D protocol (one model per target, as in the paper's Table 1).

Targets: ``edg_core.readers.qm9.geom3d_targets`` (atom-reference subtraction from U0, U, H, G and Cv, then
Hartree -> eV for homo, lumo, gap, zpve, U0, U, H, G); split ``customized_01`` (seed 42; 110,000 / 10,000 /
rest). The student predicts a standardised value s; the reported prediction is y = mean + std * s with the
training split's mean and std; the loss is L1 (or MSE) of (s, (y_true - mean) / std); metrics are MAE in
GEOM3D_UNITS.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from edg.edg_core.readers.qm9 import GEOM3D_UNITS, TARGETS, QM9Table, geom3d_targets, qm9_split, qm9_table

from .base import Prediction, loss_fn, task_config
from .packed import Batch, PackedMolecules


@dataclass
class QM9Config:
    target: str = "U0"               # one of mu alpha homo lumo gap r2 zpve U0 U H G Cv
    root: str | None = None          # qm9pack data folder (default: the installed package's); "embedded": 40
    #                                  shipped molecules
    split_seed: int = 42
    train_size: int | None = None    # first N of each split (None: all); the paper uses all
    valid_size: int | None = None
    test_size: int | None = None


def pack_table(table: QM9Table, index: np.ndarray, target: str) -> PackedMolecules:
    """Molecules ``index`` (positions in the gdb-ordered table) with their Geom3D ``target`` as label ``y``."""
    if target not in TARGETS:
        raise ValueError(f"unknown QM9 target {target!r}; known: {', '.join(TARGETS)}")
    index = np.asarray(index, dtype=np.int64)
    counts = table.offsets[index + 1] - table.offsets[index]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    mol_of_atom = np.repeat(np.arange(len(index)), counts)
    atom = table.offsets[index][mol_of_atom] + np.arange(offsets[-1]) - offsets[:-1][mol_of_atom]
    z = table.z[atom]
    zs = np.split(z, offsets[1:-1])
    y = geom3d_targets(table.targets[index], zs)[:, TARGETS.index(target)]
    ids = [f"qm9:{int(g)}" for g in table.gdb_id[index]]
    return PackedMolecules.from_arrays(z, table.pos[atom], offsets, ids, mol_labels={"y": y})


class QM9Task:
    """One QM9 target, standardised with the training split's mean and std."""
    out_dim = 1
    needs_forces = False
    select_metric = "mae"

    @classmethod
    def check_spec(cls, spec, overrides: dict) -> QM9Config:
        """The config of ``spec`` (``qm9:<target>``), checked, without loading data."""
        return task_config(QM9Config, spec, overrides, target=spec.subset)

    @classmethod
    def from_spec(cls, spec, overrides: dict) -> QM9Task:
        return cls(cls.check_spec(spec, overrides))

    def __init__(self, cfg: QM9Config, table: QM9Table | None = None):
        self.cfg = cfg
        self.name = f"qm9:{cfg.target}"
        self.units = {"mae": GEOM3D_UNITS.get(cfg.target, "?")}
        table = table if table is not None else qm9_table(cfg.root)
        split = qm9_split(len(table), seed=cfg.split_seed)
        sizes = {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}
        packed = {k: pack_table(table, split[k][:sizes[k]], cfg.target) for k in ("train", "valid", "test")}
        self.train, self.valid, self.test = packed["train"], packed["valid"], packed["test"]
        y = self.train.mol_labels["y"].double()
        self.mean = float(y.mean())
        self.std = float(y.std()) if len(y) > 1 and float(y.std()) > 0 else 1.0

    def standardise(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean) / self.std

    def predict(self, model: torch.nn.Module, batch: Batch, training: bool) -> Prediction:
        with torch.set_grad_enabled(training):
            f_g, s = model(batch.z, batch.pos, batch.batch, batch.sizes)
        s = s.reshape(-1)
        return Prediction(f_g, {"s": s, "y": self.mean + self.std * s})

    def loss(self, pred: Prediction, batch: Batch, kind: str = "l1") -> torch.Tensor:
        return loss_fn(kind)(pred.values["s"], self.standardise(batch.labels["y"]))

    def abs_errors(self, pred: Prediction, batch: Batch) -> dict[str, torch.Tensor]:
        return {"mae": (pred.values["y"] - batch.labels["y"]).abs()}

    def describe(self) -> dict:
        return {"task": self.name, "split": f"customized_01 (seed {self.cfg.split_seed})",
                "n_train": len(self.train), "n_valid": len(self.valid), "n_test": len(self.test),
                "target_mean": self.mean, "target_std": self.std, "loss": "L1 (or MSE) on standardised target",
                "select_metric": self.select_metric, "units": self.units}

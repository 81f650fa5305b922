"""rMD17 energy + force regression (one molecule per task).

Split (edg_core.readers.load_rmd17): 950 train / 50 validation / 1000 test frames of split id 1..5.
The student predicts a standardised energy s; the task reports E = mean + std * s in kcal/mol (mean, std of
the training energies; labels and predictions are held as E - mean, so float32 keeps their precision) and
forces F = -dE/dpos in kcal/mol/Å (autograd). Loss (paper):
0.05 * L1(E) + 0.95 * L1(F), both in kcal/mol units; the force L1 is the mean over all force components.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from edg_core.readers import load_rmd17, rmd17_root
from edg_core.readers.rmd17 import MOLECULES

from .base import Prediction
from .packed import Batch, PackedMolecules


@dataclass
class RMD17Config:
    molecule: str = "aspirin"
    root: str | None = None          # folder of the rMD17 npz files (default: $EDG_RMD17_ROOT, ../shared/data/rmd17)
    split_id: int = 1                # 1..5
    energy_weight: float = 0.05
    force_weight: float = 0.95
    train_size: int | None = None    # first N training frames only (None: all 950); for quick runs
    valid_size: int | None = None
    test_size: int | None = None
    select_metric: str = "weighted_mae"  # validation metric for model selection: weighted_mae, energy_mae, force_mae


def _pack(frames, limit: int | None, energy_mean: float) -> PackedMolecules:
    if limit is not None:
        frames = frames[:limit]
    ids = [f"rmd17:{frames.molecule}:{int(i)}" for i in frames.index]
    return PackedMolecules.from_arrays(frames.z, frames.pos, None, ids,
                                       mol_labels={"energy": frames.energy - energy_mean},
                                       atom_labels={"forces": frames.forces})


class RMD17Task:
    """Energies (kcal/mol) and forces (kcal/mol/Å) of one rMD17 molecule."""
    out_dim = 1
    needs_forces = True
    units = {"energy_mae": "kcal/mol", "force_mae": "kcal/mol/Å", "weighted_mae": "kcal/mol(/Å)"}

    def __init__(self, cfg: RMD17Config):
        if cfg.molecule not in MOLECULES:
            raise ValueError(f"unknown rMD17 molecule {cfg.molecule!r}; known: {', '.join(MOLECULES)}")
        if cfg.select_metric not in self.units:
            raise ValueError(f"rMD17 select_metric {cfg.select_metric!r}: use one of {sorted(self.units)}")
        self.cfg = cfg
        self.name = f"rmd17:{cfg.molecule}"
        self.select_metric = cfg.select_metric
        splits = load_rmd17(rmd17_root(cfg.root), cfg.molecule, cfg.split_id)
        e = splits["train"].energy[:cfg.train_size]  # float64, kcal/mol
        self.energy_mean = float(e.mean())
        self.energy_std = float(e.std(ddof=1)) if len(e) > 1 else 1.0
        # energies are stored relative to the training mean so that float32 keeps their precision
        self.train = _pack(splits["train"], cfg.train_size, self.energy_mean)
        self.valid = _pack(splits["valid"], cfg.valid_size, self.energy_mean)
        self.test = _pack(splits["test"], cfg.test_size, self.energy_mean)

    def predict(self, model: torch.nn.Module, batch: Batch, training: bool) -> Prediction:
        from train.students import energy_and_forces
        f_g, s, ds = energy_and_forces(model, batch.z, batch.pos, batch.batch)
        s = s.reshape(-1)
        energy = self.energy_std * s  # relative to energy_mean, like the stored labels
        forces = self.energy_std * ds
        if not training:
            energy, forces, f_g = energy.detach(), forces.detach(), f_g.detach()
        return Prediction(f_g, {"energy": energy, "forces": forces})

    def loss(self, pred: Prediction, batch: Batch) -> torch.Tensor:
        le = torch.nn.functional.l1_loss(pred.values["energy"], batch.labels["energy"])
        lf = torch.nn.functional.l1_loss(pred.values["forces"], batch.labels["forces"])
        return self.cfg.energy_weight * le + self.cfg.force_weight * lf

    def abs_errors(self, pred: Prediction, batch: Batch) -> dict[str, torch.Tensor]:
        de = (pred.values["energy"] - batch.labels["energy"]).abs()
        df_atom = (pred.values["forces"] - batch.labels["forces"]).abs().mean(dim=1)  # (A,)
        n = batch.num_molecules
        atoms = torch.zeros(n, dtype=df_atom.dtype, device=df_atom.device).index_add_(
            0, batch.batch, torch.ones_like(df_atom))
        df = torch.zeros(n, dtype=df_atom.dtype, device=df_atom.device).index_add_(0, batch.batch, df_atom) / atoms
        return {"energy_mae": de, "force_mae": df,
                "weighted_mae": self.cfg.energy_weight * de + self.cfg.force_weight * df}

    def describe(self) -> dict:
        return {"task": self.name, "split_id": self.cfg.split_id, "n_train": len(self.train),
                "n_valid": len(self.valid), "n_test": len(self.test),
                "energy_mean_kcal_mol": self.energy_mean, "energy_std_kcal_mol": self.energy_std,
                "loss": f"{self.cfg.energy_weight} L1(E) + {self.cfg.force_weight} L1(F)",
                "select_metric": self.select_metric, "units": self.units}

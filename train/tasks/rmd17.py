"""rMD17 energy + force regression (one molecule per task).

Split (edg_core.readers.load_rmd17): 950 train / 50 validation / 1000 test frames of split id 1..5.
The student predicts a standardised energy s; the task reports E = mean + std * s in kcal/mol (mean, std of
the training energies; labels and predictions are held as E - mean, so float32 keeps their precision) and
forces F = -dE/dpos in kcal/mol/Å (autograd). Loss (paper): 0.05 * L1(E) + 0.95 * L1(F) (or MSE, as the
authors' ViSNet), both in kcal/mol units; the force term is the mean over all force components.

``energy_scale``: the student's output is scaled by the standard deviation of the training energies
(``energy_std``, the authors' ViSNet ``standardize``) or by the mean RMS of the training forces (``force_rms``,
Geom3D's ``energy_force_with_normalization``). ``energy_grad_scale`` scales the energy term's gradient but not
its value (the authors' ViSNet ``loss_scale_y``: an EMA over batches whose gradient is that fraction of the
batch loss's). ``weighted_mse`` = 0.05 * (E error)^2 + 0.95 * mean (F error)^2 per frame is the authors'
ViSNet validation loss (without its EMA), a selection metric.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from edg.edg_core.config import unknown_name
from edg.edg_core.readers import load_rmd17, rmd17_root
from edg.edg_core.readers.rmd17 import MOLECULES, check_available

from .base import Prediction, loss_fn, task_config
from .packed import Batch, PackedMolecules

UNITS = {"energy_mae": "kcal/mol", "force_mae": "kcal/mol/Å", "weighted_mae": "kcal/mol(/Å)",
         "weighted_mse": "(kcal/mol(/Å))^2"}
"""The validation metrics (any is a ``select_metric``) and their units."""
ENERGY_SCALES = ("energy_std", "force_rms")


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
    select_metric: str = "weighted_mae"  # validation metric for model selection: weighted_mae, energy_mae,
    #                                      force_mae, weighted_mse
    energy_scale: str = "energy_std"     # energy_std or force_rms (see the module docstring)
    energy_grad_scale: float = 1.0       # gradient factor of the energy loss term (ViSNet's loss_scale_y)

    def __post_init__(self):
        """The names are checked here, before any data loads (``from_dict`` puts the task before a
        ``ValueError``'s message: ``task rmd17:aspirin: energy_scale 'max': ...``)."""
        if self.molecule not in MOLECULES:
            raise unknown_name("rMD17 molecule", self.molecule, MOLECULES)
        if self.select_metric not in UNITS:
            raise ValueError(f"select_metric {self.select_metric!r}: use one of {', '.join(sorted(UNITS))}")
        if self.energy_scale not in ENERGY_SCALES:
            raise ValueError(f"energy_scale {self.energy_scale!r}: use one of {', '.join(ENERGY_SCALES)}")


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
    units = UNITS

    @classmethod
    def check_spec(cls, spec, overrides: dict) -> RMD17Config:
        """The config of ``spec`` (``rmd17:<molecule>``), checked, and that its files are where the root says
        (no array is read)."""
        cfg = task_config(RMD17Config, spec, overrides, molecule=spec.subset)
        check_available(rmd17_root(cfg.root), cfg.molecule, cfg.split_id)
        return cfg

    @classmethod
    def from_spec(cls, spec, overrides: dict) -> RMD17Task:
        return cls(task_config(RMD17Config, spec, overrides, molecule=spec.subset))

    def __init__(self, cfg: RMD17Config):
        self.cfg = cfg  # names checked by RMD17Config
        self.name = f"rmd17:{cfg.molecule}"
        self.select_metric = cfg.select_metric
        splits = load_rmd17(rmd17_root(cfg.root), cfg.molecule, cfg.split_id)
        e = splits["train"].energy[:cfg.train_size]  # float64, kcal/mol
        self.energy_mean = float(e.mean())
        self.energy_std = float(e.std(ddof=1)) if len(e) > 1 else 1.0
        f = splits["train"].forces[:cfg.train_size]  # (M, N, 3) kcal/mol/Å
        self.force_rms = float(np.sqrt((f.astype(np.float64) ** 2).mean(axis=(1, 2))).mean())
        self.scale = self.energy_std if cfg.energy_scale == "energy_std" else self.force_rms
        # energies are stored relative to the training mean so that float32 keeps their precision
        self.train = _pack(splits["train"], cfg.train_size, self.energy_mean)
        self.valid = _pack(splits["valid"], cfg.valid_size, self.energy_mean)
        self.test = _pack(splits["test"], cfg.test_size, self.energy_mean)

    def predict(self, model: torch.nn.Module, batch: Batch, training: bool) -> Prediction:
        from edg.train.students import energy_and_forces
        f_g, s, ds = energy_and_forces(model, batch.z, batch.pos, batch.batch, sizes=batch.sizes)
        s = s.reshape(-1)
        energy = self.scale * s  # relative to energy_mean, like the stored labels
        forces = self.scale * ds
        if not training:
            energy, forces, f_g = energy.detach(), forces.detach(), f_g.detach()
        return Prediction(f_g, {"energy": energy, "forces": forces})

    def loss_terms(self, pred: Prediction, batch: Batch, kind: str = "l1") -> dict[str, torch.Tensor]:
        """The weighted terms of the task loss on one batch: ``energy`` = w_E L(E) (mean over the frames) and
        ``forces`` = w_F L(F) (mean over all force components), L = L1 or MSE; their sum is ``loss``'s value."""
        fn = loss_fn(kind)
        return {"energy": self.cfg.energy_weight * fn(pred.values["energy"], batch.labels["energy"]),
                "forces": self.cfg.force_weight * fn(pred.values["forces"], batch.labels["forces"])}

    def loss(self, pred: Prediction, batch: Batch, kind: str = "l1") -> torch.Tensor:
        terms = self.loss_terms(pred, batch, kind)
        le, g = terms["energy"], self.cfg.energy_grad_scale
        if g != 1.0:  # same value, gradient scaled by g
            le = g * le + (1.0 - g) * le.detach()
        return le + terms["forces"]

    def abs_errors(self, pred: Prediction, batch: Batch) -> dict[str, torch.Tensor]:
        de = (pred.values["energy"] - batch.labels["energy"]).abs()
        df_atom = (pred.values["forces"] - batch.labels["forces"]).abs().mean(dim=1)  # (A,)
        n = batch.num_molecules
        atoms = torch.zeros(n, dtype=df_atom.dtype, device=df_atom.device).index_add_(
            0, batch.batch, torch.ones_like(df_atom))
        df = torch.zeros(n, dtype=df_atom.dtype, device=df_atom.device).index_add_(0, batch.batch, df_atom) / atoms
        df2_atom = (pred.values["forces"] - batch.labels["forces"]).pow(2).mean(dim=1)
        df2 = torch.zeros(n, dtype=df_atom.dtype, device=df_atom.device).index_add_(0, batch.batch, df2_atom) / atoms
        return {"energy_mae": de, "force_mae": df,
                "weighted_mae": self.cfg.energy_weight * de + self.cfg.force_weight * df,
                "weighted_mse": self.cfg.energy_weight * de.pow(2) + self.cfg.force_weight * df2}

    def describe(self) -> dict:
        return {"task": self.name, "split_id": self.cfg.split_id, "n_train": len(self.train),
                "n_valid": len(self.valid), "n_test": len(self.test),
                "energy_mean_kcal_mol": self.energy_mean, "energy_std_kcal_mol": self.energy_std,
                "force_rms_kcal_mol_A": self.force_rms, "energy_scale": self.cfg.energy_scale,
                "output_scale": self.scale,  # kcal/mol per unit of the student's output (edg predict)
                "loss": f"{self.cfg.energy_weight} L(E) + {self.cfg.force_weight} L(F), L = L1 or MSE "
                        f"(energy gradient x {self.cfg.energy_grad_scale:g})",
                "select_metric": self.select_metric, "units": self.units}

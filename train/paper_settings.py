"""The paper's training settings per student and dataset family (qm9 | rmd17), read from the authors' code.

Sources (public repository HongxinXiang/EDG):

* Geom3D students (SchNet, EGNN, Equiformer, SphereNet; DimeNet++ and PaiNN run the same way) -- README
  commands for ``EDG/finetune_QM9_EDG.py`` and ``EDG/finetune_rMD17_EDG.py`` with ``EDG/config_distillation.py``:
  Adam, lr 5e-4, 1000 epochs, cosine annealing to 0 over the epochs, weight decay 0, L1 loss (``torch.nn.L1Loss``),
  ``--emb_dim 128``. QM9: batch 128 (train and evaluation). rMD17: training batch 1 (``MD17_train_batch_size``),
  evaluation batch 128, model selection on the validation force MAE, the output scaled by the mean force RMS
  (``--energy_force_with_normalization``: ``energy_scale="force_rms"``). EGNN: fully connected graph on QM9, a
  5 Å radius graph on rMD17 (``EGNN_radius_cutoff``). Equiformer: ``alpha_drop`` 0.2 on QM9 (its
  ``Equiformer_hyperparameter 0``), 0.0 on rMD17 (``EquiformerEnergyForce``).
* ViSNet -- ``EDG-for-VisNet/examples/ViSNet-rMD17.yml``: 3000 epochs, batch 4 (inference 16), lr 2e-4, MSE,
  linear warm-up over 1000 optimiser steps, ReduceLROnPlateau on the validation loss (factor 0.8, patience
  30 epochs, min lr 1e-7), AdamW with weight decay 0 (identical to Adam), energy/force weights 0.05 / 0.95 with
  the energy loss scaled by ``loss_scale_y`` 0.05 (an EMA whose gradient is 0.05 x the batch loss's:
  ``energy_grad_scale``), model selection, the plateau schedule and early stopping (patience 600 epochs) on its
  validation loss: per validation batch 0.05 MSE(E) + 0.95 MSE(F) with the energy term an EMA over validation
  batches (weight 0.05 on the newest, carried across epochs), averaged over the batches (``select_ema`` 0.05,
  ``early_stopping_patience`` 600; ``train.loops.student_schedule``), model 256 wide, 9 layers, lmax 2
  (``ViSNetConfig``'s defaults). The paper ran ViSNet on rMD17 only; on QM9 the Geom3D settings apply.

``resolve(student, dataset, fit, student_args, task)`` fills every ``FitConfig`` field left ``None`` from this
table and puts the paper's student / task options under the user's (the user's always win).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from edg.edg_core.config import ConfigError
from edg.edg_core.datasets import DATASETS, dataset_of, families

from .configs import GEOM3D_QM9_FIT, FitConfig

FAMILIES = families()
"""The paper families of the registered datasets (``edg_core.datasets``: each dataset names its family)."""


@dataclass(frozen=True)
class PaperSettings:
    """One (student, family) entry: FitConfig values, build_student overrides, task overrides, and where from."""
    fit: dict
    student: dict = field(default_factory=dict)
    task: dict = field(default_factory=dict)
    source: str = ""


_GEOM3D_QM9 = PaperSettings(dict(GEOM3D_QM9_FIT), source="README / EDG/finetune_QM9_EDG.py (Geom3D)")
_GEOM3D_RMD17 = PaperSettings({**GEOM3D_QM9_FIT, "batch_size": 1, "eval_batch_size": 128},
                              task={"select_metric": "force_mae", "energy_scale": "force_rms"},
                              source="README / EDG/finetune_rMD17_EDG.py (Geom3D, MD17_train_batch_size 1)")
_VISNET_RMD17 = PaperSettings(
    {"epochs": 3000, "batch_size": 4, "eval_batch_size": 16, "lr": 2e-4, "loss": "mse", "scheduler": "plateau",
     "warmup_steps": 1000, "plateau_factor": 0.8, "plateau_patience": 30, "min_lr": 1e-7,
     "select_ema": 0.05, "early_stopping_patience": 600},
    task={"select_metric": "weighted_mse", "energy_grad_scale": 0.05},
    source="EDG-for-VisNet/examples/ViSNet-rMD17.yml")


@dataclass(frozen=True)
class FamilySettings:
    """A paper family's settings: ``default`` for every student, ``students`` the exceptions, and
    ``table_students`` the students of the family's paper table, in the paper's order."""
    default: PaperSettings
    students: dict = field(default_factory=dict)
    table_students: tuple = ()


FAMILY_SETTINGS: dict[str, FamilySettings] = {
    "qm9": FamilySettings(_GEOM3D_QM9, table_students=("schnet", "egnn", "equiformer", "spherenet")),
    "rmd17": FamilySettings(_GEOM3D_RMD17, table_students=("schnet", "spherenet", "visnet"), students={
        "egnn": dataclasses.replace(_GEOM3D_RMD17, student={"cutoff": 5.0, "max_num_neighbors": 32}),
        "equiformer": dataclasses.replace(_GEOM3D_RMD17, student={"alpha_drop": 0.0}),
        "equiformer-edg": dataclasses.replace(_GEOM3D_RMD17, student={"alpha_drop": 0.0}),
        "visnet": _VISNET_RMD17}),
}
"""Paper family (``edg_core.datasets``: each dataset names its family) -> the paper's settings."""

_TABLED = ("schnet", "egnn", "equiformer", "spherenet", "visnet", "dimenetpp", "painn")
PAPER_SETTINGS: dict[tuple[str, str], PaperSettings] = {
    (s, fam): fs.students.get(s, fs.default) for fam, fs in FAMILY_SETTINGS.items() for s in _TABLED}
"""(student, family) -> the paper's settings (a student not listed gets its family's default)."""

PAPER_TABLES = {f"table{i}": {"family": fam, "title": ds.paper_table,
                              "students": FAMILY_SETTINGS[fam].table_students}
                for i, (fam, ds) in enumerate(((d.family, d) for d in DATASETS.values() if d.paper_table), 1)}
"""The paper's result tables, from the registry's ``paper_table`` entries, with their students."""
PAPER_LAMBDAS = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0)  # the paper's search grid for lambda


def family(dataset: str) -> str | None:
    """``"rmd17:aspirin"`` -> ``"rmd17"``: the paper family the registry gives the dataset; ``None`` for a
    registered dataset in no paper table. An unregistered name is a ``ConfigError``."""
    ds = dataset_of(dataset)
    if ds is None:
        raise ConfigError(f"dataset {dataset!r} is not registered, so it has no paper family; datasets: "
                          f"{', '.join(DATASETS)}")
    return ds.family


NO_FAMILY = PaperSettings({}, source="no paper family: the training defaults (FitConfig.filled)")


def paper_settings(student: str, dataset: str) -> PaperSettings:
    """The paper's settings for ``student`` on ``dataset`` (a student not in the table gets its family's
    default; a dataset in no paper family gets none, so the training defaults apply)."""
    fam = family(dataset)
    if fam is None:
        return NO_FAMILY
    fs = FAMILY_SETTINGS[fam]
    return fs.students.get(student, fs.default)


def resolve(student: str, dataset: str, fit: FitConfig, student_args: dict | None = None,
            task: dict | None = None) -> tuple[FitConfig, dict, dict]:
    """``fit`` with its ``None`` fields set to the paper's, and the paper's student / task options under the
    given ones: ``(fit, student_args, task)``."""
    ps = paper_settings(student, dataset)
    unset = {k: v for k, v in ps.fit.items() if getattr(fit, k) is None}
    fit = dataclasses.replace(fit, **unset)
    return fit, {**ps.student, **(student_args or {})}, {**ps.task, **(task or {})}


def settings_table() -> str:
    """A Markdown table of every (student, family) entry (for docs and ``--help``)."""
    keys = ("epochs", "batch_size", "eval_batch_size", "lr", "loss", "scheduler", "warmup_steps")
    lines = ["| student | data | " + " | ".join(keys) + " | student / task options | source |",
             "|" + "---|" * (len(keys) + 4)]
    for (s, fam), ps in sorted(PAPER_SETTINGS.items()):
        opts = ", ".join(f"{k}={v}" for k, v in {**ps.student, **ps.task}.items()) or "-"
        lines.append(f"| {s} | {fam} | " + " | ".join(str(ps.fit.get(k, "-")) for k in keys)
                     + f" | {opts} | {ps.source} |")
    return "\n".join(lines)

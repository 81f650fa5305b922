"""An ASE calculator backed by a trained EDG student, for molecular dynamics and geometry optimisation.

    from edg.api import EDGCalculator
    atoms.calc = EDGCalculator("ethanol.pt2")      # a model file of `edg export` (or a run folder)
    atoms.get_potential_energy()   # eV
    atoms.get_forces()             # eV/Å, = -dE/dpos of the same model (energy-conserving)
    atoms.calc.domain              # Verdict: status "in" / "warn", reasons (the training domain)
    atoms.calc.results["domain"]   # the same status as text, beside "energy" and "forces"

The student predicts kcal/mol and kcal/mol/Å (rMD17 units); the calculator gives ASE's eV and eV/Å
(``edg_core.units.KCAL_PER_MOL_IN_EV``). Molecules only (no periodic boundary conditions).

Every structure is checked against the model's training domain (``train.io.model_card``; a model file carries
its card, a run folder's card is made from its training data when that is readable): a structure outside it
(an unseen composition, an energy or force far outside the training range) gets one ``DomainWarning`` per
calculation and ``calc.domain.status == "warn"``; one with an element never seen in training is refused with a
``ModelError`` (no energy). A run folder runs in float64 by default (``dtype``) so that forces are smooth
enough for MD and tight optimisation thresholds; a model file runs in the precision it was exported with
(``edg export --dtype float64`` for that).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from edg.edg_core.units import KCAL_PER_MOL_IN_EV
from edg.train.io.exported import ExportedModel, is_model_file, load_exported
from edg.train.io.model_card import Verdict
from edg.train.io.predict import ModelError, TrainedStudent, load_student


class DomainWarning(UserWarning):
    """A structure outside the training domain of the model that computed it (``EDGCalculator.domain``)."""


class EDGCalculator(Calculator):
    """ASE calculator: energy (eV) and forces (eV/Å) of an energy student: a model file of ``edg export``, an
    ``ExportedModel``, a run folder, its ``best_student.pt``, or a loaded ``TrainedStudent``. ``domain``: the
    ``Verdict`` of the last structure (None before the first calculation, or when no card is available)."""
    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model: str | Path | TrainedStudent | ExportedModel, device: str = "auto",
                 dtype: torch.dtype = torch.float64, **kwargs):
        super().__init__(**kwargs)
        self.domain: Verdict | None = None
        self.exported: ExportedModel | None = None
        self.student: TrainedStudent | None = None
        self.card = None
        if isinstance(model, ExportedModel):
            self.exported = model
        elif isinstance(model, (str, Path)) and is_model_file(model):
            from edg.train.devices import resolve_device
            self.exported = load_exported(model, device=resolve_device(device).type)
        else:
            self.student = model if isinstance(model, TrainedStudent) else load_student(model, device, dtype)
            if self.student.kind != "energy":
                raise ModelError(f"{self.student.run_dir}: a {self.student.dataset} model predicts "
                                 f"{self.student.target}, not an energy with forces; ASE needs an rMD17 student")
            from edg.train.io.predict import _run_card
            self.card, self.no_card = _run_card(self.student)
        if self.exported is not None:
            self.card = self.exported.card

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise ModelError("EDGCalculator: periodic boundary conditions are not supported (molecules only)")
        z, pos = self.atoms.numbers, self.atoms.positions
        if self.exported is not None:
            (p,) = self.exported.predict([(z, pos)])
            verdict, e, f = p.verdict, p.energy, p.forces
        else:
            verdict = self.card.check_structure(z, pos) if self.card is not None else None
            e = f = None
            if verdict is None or verdict.status != "refused":
                energy, forces = self.student.energy_forces(torch.as_tensor(z, dtype=torch.long),
                                                            torch.as_tensor(pos, dtype=torch.float64))
                e = float(energy.double().cpu()[0]) * KCAL_PER_MOL_IN_EV
                f = forces.double().cpu().numpy() * KCAL_PER_MOL_IN_EV
                if verdict is not None:
                    self.card.check_prediction(verdict, z, e, f)
        self.domain = verdict
        if verdict is not None and verdict.status == "refused":
            self.results = {}
            raise ModelError(f"EDGCalculator: {self.atoms.get_chemical_formula()} refused: "
                             f"{'; '.join(verdict.reasons)}")
        if verdict is not None and verdict.status == "warn":
            warnings.warn(f"EDGCalculator: {self.atoms.get_chemical_formula()} is outside the model's training "
                          f"domain: {'; '.join(verdict.reasons)}", DomainWarning, stacklevel=2)
        self.results = {"energy": e, "free_energy": e, "forces": np.asarray(f, dtype=np.float64),
                        "domain": verdict.status if verdict is not None else "unchecked"}

"""An ASE calculator backed by a trained EDG student, for molecular dynamics and geometry optimisation.

    from edg.train.io.ase_calculator import EDGCalculator
    atoms.calc = EDGCalculator("runs/distill/schnet__rmd17-ethanol__lam0__seed42")
    atoms.get_potential_energy()   # eV
    atoms.get_forces()             # eV/Å, = -dE/dpos of the same model (energy-conserving)

The student predicts kcal/mol and kcal/mol/Å (rMD17 units); the calculator converts to ASE's eV and eV/Å with
``edg_core.units.KCAL_PER_MOL_IN_EV``. Molecules only (no periodic boundary conditions). By default the
model runs in float64 so that forces are smooth enough for MD and tight optimisation thresholds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from edg.edg_core.units import KCAL_PER_MOL_IN_EV
from edg.train.io.predict import ModelError, TrainedStudent, load_student


class EDGCalculator(Calculator):
    """ASE calculator: energy (eV) and forces (eV/Å) of an energy student (a run folder, its
    ``best_student.pt``, or a loaded ``TrainedStudent``)."""
    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model: str | Path | TrainedStudent, device: str = "auto",
                 dtype: torch.dtype = torch.float64, **kwargs):
        super().__init__(**kwargs)
        self.student = model if isinstance(model, TrainedStudent) else load_student(model, device, dtype)
        if self.student.kind != "energy":
            raise ModelError(f"{self.student.run_dir}: a {self.student.dataset} model predicts "
                             f"{self.student.target}, not an energy with forces; ASE needs an rMD17 student")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise ModelError("EDGCalculator: periodic boundary conditions are not supported (molecules only)")
        z = torch.as_tensor(self.atoms.numbers, dtype=torch.long)
        pos = torch.as_tensor(self.atoms.positions, dtype=torch.float64)
        energy, forces = self.student.energy_forces(z, pos)
        e = float(energy.double().cpu()[0]) * KCAL_PER_MOL_IN_EV
        self.results = {"energy": e, "free_energy": e,
                        "forces": forces.double().cpu().numpy().astype(np.float64) * KCAL_PER_MOL_IN_EV}

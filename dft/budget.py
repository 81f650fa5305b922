"""Per-molecule DFT budgets: what a molecule may cost before, and while, its SCF runs.

Before any SCF (``check_size``, ``check_basis``): ``max_atoms``, ``max_grid_points`` (the ED/ESP cube grid) and
``max_basis_functions`` (PySCF's ``mol.nao`` for the molecule's basis and d/f convention). A molecule over one
is an ``InvalidRecord`` naming its size and the budget ("too large for the DFT budget: ..."), which the worker
records as a ``Failure``; the run goes on. During the SCF (``SCFWatch``, the SCF's per-cycle callback):
``time_limit_s`` (0 = no limit) over all attempts of the retry ladder, raising ``TimeLimitExceeded``, and a
progress line every ``progress_s`` seconds. Every budget is a ``DFTConfig`` field, hence a flag
(``--max-atoms``, ``--max-grid-points``, ``--max-basis-functions``, ``--time-limit-s``) a user can raise; 0 turns
a budget off.
"""
from __future__ import annotations

import logging
import time

from edg.edg_core.errors import EDGError, InvalidRecord
from edg.edg_core.grid import budget_problem, grid_for_positions
from edg.edg_core.molecule import Molecule

from .config import DFTConfig

log = logging.getLogger("edg.dft.scf")


class SCFTimeout(EDGError, TimeoutError):
    """The SCF ran past its time limit (``DFTConfig.time_limit_s``)."""


class TimeLimitExceeded(SCFTimeout):
    """A molecule's SCF ran past ``DFTConfig.time_limit_s``; the message names the time, the limit, the
    attempt and the cycle it stopped in (the worker's failure names the molecule)."""


def check_size(mol: Molecule, cfg: DFTConfig) -> None:
    """Raise ``InvalidRecord`` when ``mol`` has more than ``cfg.max_atoms`` atoms or its cube grid more than
    ``cfg.max_grid_points`` points (the rule shared with the render stage: ``edg_core.grid.budget_problem``)."""
    grid = None
    if cfg.max_grid_points and cfg.fields:
        grid = grid_for_positions(mol.pos, cfg.grid_spacing, cfg.grid_padding)
    why = budget_problem("DFT", mol.n_atoms, cfg.max_atoms, cfg.max_grid_points, grid, "cube grid", mol.pos)
    if why:
        raise InvalidRecord(mol.id, why)


def check_basis(pmol, cfg: DFTConfig, mol_id: str) -> None:
    """Raise ``InvalidRecord`` when the built ``pyscf.gto.Mole`` ``pmol`` has more than
    ``cfg.max_basis_functions`` atomic orbitals (``pmol.nao``: Cartesian or spherical, as the SCF will use)."""
    limit = cfg.max_basis_functions
    if limit and pmol.nao > limit:
        kind = "cartesian" if pmol.cart else "spherical"
        raise InvalidRecord(mol_id, f"too large for the DFT budget: {pmol.nao} basis functions ({pmol.basis}, "
                                    f"{kind}) > max_basis_functions {limit}")


def log_inferred(mol: Molecule) -> None:
    """Say in the DFT log which of charge and multiplicity the input did not state and EDG chose: a warning when
    the choice is open-shell (a hydroxide XYZ without ``charge=-1`` would be computed as a neutral radical)."""
    if not mol.inferred:
        return
    level = logging.WARNING if mol.multiplicity > 1 else logging.INFO
    log.log(level, "%s: %s not stated by the input: computing charge %d, multiplicity %d (%s); state them in the "
                   "file or with ?charge=N&multiplicity=M on the input spec", mol.id, " and ".join(mol.inferred),
            mol.charge, mol.multiplicity, "UKS" if mol.multiplicity > 1 else "RKS")


class SCFWatch:
    """The SCF callback of one molecule: raises ``TimeLimitExceeded`` once ``time_limit_s`` (counted from this
    object's creation, across every attempt) has passed, and logs a progress line every ``progress_s`` seconds
    (0 = never): attempt, cycle, energy (Hartree) and elapsed seconds."""

    def __init__(self, mol_id: str, time_limit_s: float = 0.0, progress_s: float = 0.0):
        self.mol_id = mol_id
        self.time_limit_s = time_limit_s
        self.progress_s = progress_s
        self.start = time.monotonic()
        self.next_progress = self.start + progress_s
        self.attempt = "diis"
        self.cycles = 0  # SCF iterations seen, over every attempt

    def for_attempt(self, name: str) -> SCFWatch:
        self.attempt = name
        return self

    def __call__(self, envs: dict) -> None:
        self.cycles += 1
        now = time.monotonic()
        elapsed = now - self.start
        cycle = envs["cycle"] + 1 if isinstance(envs.get("cycle"), int) else "?"  # PySCF counts from 0
        if self.time_limit_s > 0 and elapsed > self.time_limit_s:
            raise TimeLimitExceeded(f"SCF stopped after {elapsed:.1f} s, over time_limit_s {self.time_limit_s:g} s "
                                    f"(attempt {self.attempt}, cycle {cycle})")
        if self.progress_s > 0 and now >= self.next_progress:
            self.next_progress = now + self.progress_s
            e = envs.get("e_tot")
            energy = f"E = {float(e):.8f} Eh" if e is not None else "E = ?"
            log.info("%s: SCF attempt %s, cycle %s, %s, %.0f s so far%s", self.mol_id, self.attempt, cycle,
                     energy, elapsed, f" (time limit {self.time_limit_s:g} s)" if self.time_limit_s > 0 else "")

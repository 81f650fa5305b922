"""Single-point Kohn-Sham DFT on one ``Molecule``: PySCF (CPU) or GPU4PySCF (GPU) behind one function.

Paper settings by default (``DFTConfig``): B3LYP, 6-31G** (6-31+G** with sulfur) with Cartesian d functions
(Psi4's convention for these bases, which EDBench's labels use), RKS for singlets and UKS otherwise, the
record's charge and multiplicity. Non-convergence climbs a retry ladder:
plain DIIS -> damping + level shift -> second-order SCF (Newton), each attempt starting from the last density.
Along a trajectory the first attempt may start warm, from the densities of the frames before it
(``dft.warm.WarmStart``); if that attempt does not converge, the ladder runs again from PySCF's cold guess.
Energies are in Hartree.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from edg.edg_core.errors import InvalidRecord
from edg.edg_core.molecule import Molecule

from .backend import array_module, to_numpy
from .budget import SCFTimeout, SCFWatch, check_basis, log_inferred  # noqa: F401  (SCFTimeout: re-exported)
from .config import DFTConfig

log = logging.getLogger(__name__)

MIN_INTERATOMIC_ANGSTROM = 0.3
"""Atoms closer than this are a broken geometry (shortest real bond, H2: 0.74 Å)."""

ENERGY_LABELS = {
    "E1": "SCF final energy",
    "E2": "nuclear repulsion energy",
    "E3": "one-electron energy",
    "E4": "two-electron energy (Coulomb + exact-exchange share of the hybrid)",
    "E5": "DFT exchange-correlation energy (functional part)",
    "E6": "total energy",
}
"""The six EDBench energy labels, all in Hartree. E1 = E6 (no dispersion term) and E2 + E3 + E4 + E5 = E6."""


@dataclass
class SCFOutcome:
    """A finished SCF: the PySCF/GPU4PySCF object, whether it converged and which attempts it took."""
    mf: object
    mol: object  # pyscf.gto.Mole
    converged: bool
    attempts: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cycles: int = 0           # SCF iterations over every attempt
    warm: bool = False        # converged from a warm start (``attempts[0] == "warm"`` and no other attempt)

    @property
    def dm(self):
        """Total density matrix (nao, nao), AO basis; numpy on CPU, cupy on GPU."""
        dm = self.mf.make_rdm1()
        return dm[0] + dm[1] if dm.ndim == 3 else dm


def check_geometry(mol: Molecule) -> None:
    """Raise ``InvalidRecord`` when two atoms nearly coincide (a broken conformation)."""
    if mol.n_atoms < 2:
        return
    d = np.linalg.norm(mol.pos[:, None, :] - mol.pos[None, :, :], axis=-1)
    d[np.diag_indices_from(d)] = np.inf
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    if d[i, j] < MIN_INTERATOMIC_ANGSTROM:
        raise InvalidRecord(mol.id, f"bad geometry: atoms {i} and {j} are {d[i, j]:.3f} Å apart "
                                    f"(< {MIN_INTERATOMIC_ANGSTROM} Å)")


def build_pyscf_mol(mol: Molecule, cfg: DFTConfig):
    """A built ``pyscf.gto.Mole`` (Å input, basis by ``cfg.basis_for``, Cartesian or spherical d/f functions by
    ``cfg.cartesian_for``, charge, spin = multiplicity - 1)."""
    from pyscf import gto
    check_geometry(mol)
    atoms = [(int(z), tuple(map(float, p))) for z, p in zip(mol.z, mol.pos)]
    basis = cfg.basis_for(mol.z)
    try:
        return gto.M(atom=atoms, unit="Angstrom", basis=basis, cart=cfg.cartesian_for(basis), charge=mol.charge,
                     spin=mol.multiplicity - 1, verbose=cfg.verbose, max_memory=cfg.max_memory_mb)
    except (RuntimeError, KeyError, ValueError) as e:
        raise InvalidRecord(mol.id, f"PySCF cannot build the molecule ({type(e).__name__}: {e})") from None


def basis_convention(pmol) -> str:
    """'cartesian' (6d/10f) or 'spherical' (5d/7f): how ``pmol``'s shells are expanded."""
    return "cartesian" if pmol.cart else "spherical"


def psi4_jkfit(basis: str) -> str | None:
    """The JK fitting basis Psi4 pairs with a Pople orbital basis by default (its basis-family table), which is
    what EDBench's DF-RKS labels were computed with: 6-31G family -> cc-pVDZ-JKFIT, 6-31+G -> heavy-aug-,
    6-31++G -> aug-; 6-311G likewise with cc-pVTZ-JKFIT; STO-nG and 3-21G -> def2-universal-JKFIT.
    None for other bases (PySCF then picks its own default)."""
    import re
    b = basis.strip().lower()
    if b in ("sto-3g", "sto-6g", "3-21g"):
        return "def2-universal-jkfit"
    m = re.match(r"6-311?(\+{0,2})g", b)
    if m is None:
        return None
    zeta = "t" if b.startswith("6-311") else "d"
    return ("", "heavy-aug-", "aug-")[len(m.group(1))] + f"cc-pv{zeta}z-jkfit"


def auxbasis_for(cfg: DFTConfig, basis: str) -> str | None:
    """The auxiliary basis the SCF fits J/K with: ``cfg.auxbasis``, else Psi4's partner of ``basis``."""
    return cfg.auxbasis or psi4_jkfit(basis)


def jk_method(cfg: DFTConfig, basis: str) -> str:
    """How J/K are built, for the result's ``method``: 'DF(<auxbasis>)' or 'direct'."""
    if not cfg.density_fit:
        return "direct"
    return f"DF({auxbasis_for(cfg, basis) or 'pyscf-default'})"


def make_scf(pmol, cfg: DFTConfig, backend: str):
    """An unrun RKS/UKS object for ``pmol`` on ``backend`` ('cpu' or 'gpu') with the config's settings.

    Both backends build the same method (density fitting on by default, the same auxiliary basis), so a
    fleet mixing CPU and GPU workers writes consistent labels.
    """
    restricted = pmol.spin == 0
    if backend == "gpu":
        from gpu4pyscf import dft as gdft
        mf = (gdft.RKS if restricted else gdft.UKS)(pmol, xc=cfg.xc)
    else:
        from pyscf import dft
        mf = (dft.RKS if restricted else dft.UKS)(pmol)
        mf.xc = cfg.xc
    mf.grids.level = cfg.grid_level
    mf.conv_tol = cfg.conv_tol
    mf.max_cycle = cfg.max_cycle
    mf.verbose = cfg.verbose
    if cfg.density_fit:
        mf = mf.density_fit(auxbasis=auxbasis_for(cfg, pmol.basis))
    _record_xc(mf._numint)
    return mf


def _record_xc(ni) -> None:
    """Make the numerical integrator ``ni`` keep what its last exchange-correlation integration saw and gave:
    ``ni.edg_last_xc = (grid coordinates, functional, density matrix copy, E_xc)``. The SCF's final Fock build
    integrates the final density, so ``energy_components`` can read E5 from it instead of integrating again
    (5 % of a C4H10 molecule on the CPU); it checks that grid, functional and density are the final ones."""
    for name in ("nr_rks", "nr_uks"):
        inner = getattr(ni, name, None)
        if inner is None:
            continue

        def recorded(mol, grids, xc_code, dms, *args, _inner=inner, **kwargs):
            out = _inner(mol, grids, xc_code, dms, *args, **kwargs)
            ni.edg_last_xc = (grids.coords, xc_code, dms.copy(), out[1])
            return out
        setattr(ni, name, recorded)


def _recorded_xc(mf, dm) -> float | None:
    """E_xc of the SCF's last integration if it was made on ``mf``'s grid with its functional and exactly the
    density matrix ``dm`` (the final one); None otherwise."""
    rec = getattr(mf._numint, "edg_last_xc", None)
    if rec is None:
        return None
    coords, xc, dm_seen, exc = rec
    xp = array_module(dm)
    if coords is not mf.grids.coords or xc != mf.xc or dm_seen.shape != dm.shape or \
            not bool(xp.array_equal(xp.asarray(dm_seen), dm)):
        return None
    return float(to_numpy(exc))


def run_scf(mol: Molecule, cfg: DFTConfig | None = None, backend: str = "cpu", warm=None) -> SCFOutcome:
    """Run the SCF for ``mol`` with the retry ladder; raises ``budget.TimeLimitExceeded`` (an ``SCFTimeout``)
    past ``cfg.time_limit_s`` over all attempts, and ``InvalidRecord`` for a molecule over
    ``cfg.max_basis_functions`` (before any SCF). Logs a progress line every ``cfg.progress_s`` seconds, and
    a line when the input did not state the charge or multiplicity (``Molecule.inferred``).

    ``warm``: a ``dft.warm.WarmStart``; when ``mol`` continues its chain the first attempt ("warm") starts from
    its guess, logged, and a warm attempt that does not converge is followed by the cold ladder. The caller
    adds converged frames to the chain (``WarmStart.remember``).

    The outcome is returned even when no attempt converged (``converged`` False): the caller decides.
    """
    cfg = cfg or DFTConfig()
    t0 = time.monotonic()
    watch = SCFWatch(mol.id, cfg.time_limit_s, cfg.progress_s)
    pmol = build_pyscf_mol(mol, cfg)
    check_basis(pmol, cfg, mol.id)
    log_inferred(mol)
    guess = None
    if warm is not None:
        try:
            guess = warm.guess(mol, pmol)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError) as e:  # never worse than a cold start
            warm.forget()
            log.warning("%s: no warm start (%s: %s); starting cold", mol.id, type(e).__name__, e)
    if guess is not None:
        log.info("%s: SCF starts warm from the previous frame%s (atoms moved <= %.3f A)", mol.id,
                 ("", "s' linear extrapolation", "s' quadratic extrapolation")[guess.order], guess.shift)
        mf = make_scf(pmol, cfg, backend)
        mf.callback = watch.for_attempt("warm")
        mf.kernel(dm0=guess.dm)
        if mf.converged:
            return SCFOutcome(mf=mf, mol=pmol, converged=True, attempts=["warm"], wall_s=time.monotonic() - t0,
                              cycles=watch.cycles, warm=True)
        log.info("%s: the warm-started SCF did not converge (E = %.8f); starting again cold", mol.id,
                 float(mf.e_tot))
    out = _ladder(pmol, cfg, backend, watch, mol.id)
    out.attempts = (["warm"] if guess is not None else []) + out.attempts
    out.wall_s, out.cycles = time.monotonic() - t0, watch.cycles
    return out


def _ladder(pmol, cfg: DFTConfig, backend: str, watch: SCFWatch, mol_id: str) -> SCFOutcome:
    """The retry ladder from PySCF's cold guess: DIIS, then damping + level shift, then Newton, each attempt
    starting from the last one's density."""
    ladder = [("diis", {})]
    if cfg.retries:
        ladder += [("damping+level_shift", {"damp": 0.5, "level_shift": 0.3, "diis_start_cycle": 6}),
                   ("newton", None)]
    mf, attempts, dm0 = None, [], None
    for name, settings in ladder:
        attempt = make_scf(pmol, cfg, backend)
        if settings is None:
            if not hasattr(attempt, "newton"):  # a backend without second-order SCF: the ladder ends here
                break
            attempt = attempt.newton()
        else:
            for k, v in settings.items():
                setattr(attempt, k, v)
        attempt.callback = watch.for_attempt(name)
        attempts.append(name)
        attempt.kernel(dm0=dm0)
        mf = attempt
        if mf.converged:
            break
        log.info("%s: SCF attempt %r did not converge (E = %.8f)", mol_id, name, float(mf.e_tot))
        dm0 = mf.make_rdm1()
    return SCFOutcome(mf=mf, mol=pmol, converged=bool(mf.converged), attempts=attempts)


def energy_components(out: SCFOutcome) -> dict[str, float]:
    """E1..E6 (Hartree) of a finished SCF (see ``ENERGY_LABELS``).

    E5 is the functional's exchange-correlation energy alone, on the SCF grid (taken from the SCF's final Fock
    build when that integrated the final density, else integrated here); the exact-exchange
    share of a hybrid belongs to the two-electron energy E4, which closes the sum E2 + E3 + E4 + E5 = E6
    (the Psi4 convention that EDBench's labels come from).
    """
    mf = out.mf
    dm = mf.make_rdm1()
    xp = array_module(dm)
    dm_tot = dm[0] + dm[1] if dm.ndim == 3 else dm
    h1e = xp.asarray(mf.get_hcore())
    e1 = float((h1e * dm_tot).sum())
    e_nuc = float(mf.energy_nuc())
    e_tot = float(mf.e_tot)
    exc = _recorded_xc(mf, dm)
    if exc is None:  # the last integration was not of the final density: integrate it
        ni = mf._numint
        if mf.grids.coords is None:
            mf.grids.build()
        exc = float(to_numpy((ni.nr_uks if dm.ndim == 3 else ni.nr_rks)(out.mol, mf.grids, mf.xc, dm)[1]))
    return {"E1": e_tot, "E2": e_nuc, "E3": e1, "E4": e_tot - e_nuc - e1 - exc, "E5": exc, "E6": e_tot}


def frontier_orbitals(out: SCFOutcome) -> tuple[float, float]:
    """(HOMO, LUMO) energies in Hartree; for UKS the highest occupied / lowest virtual over both spins."""
    e = to_numpy(out.mf.mo_energy).ravel()
    occ = to_numpy(out.mf.mo_occ).ravel()
    homo = float(e[occ > 0].max())
    lumo = float(e[occ == 0].min()) if (occ == 0).any() else float("nan")
    return homo, lumo


def dipole_debye(out: SCFOutcome) -> np.ndarray:
    """Dipole moment vector (3,) in Debye about the origin (neutral molecules: origin-independent)."""
    return np.asarray(to_numpy(out.mf.dip_moment(out.mol, out.mf.make_rdm1(), unit="Debye", verbose=0)),
                      dtype=np.float64)

"""DFT stage: SCF settings, energy labels E1..E6, open shells, charges, retry ladder, bad input.

Reference energies: no citable B3LYP/6-31G** total energy at exactly these geometries was at hand (NIST
CCCBDB lists values at its own optimised geometries and with Gaussian's integration grid), so the
references are computed by an independent route: plain ``pyscf.dft.RKS``/``UKS`` built from an XYZ string,
without any EDG code, at the same geometry. Agreement to 1e-8 Eh shows the wrapper applies the paper's
settings (functional, basis, charge, spin) and nothing else.
"""
from __future__ import annotations

import numpy as np
import pytest
from edg.dft.config import DFTConfig
from edg.dft.scf import build_pyscf_mol, check_geometry, dipole_debye, energy_components, frontier_orbitals, run_scf
from edg.edg_core.errors import InvalidRecord
from edg.edg_core.molecule import Molecule
from edg.edg_core.units import ANGSTROM_IN_BOHR

WATER = Molecule(z=[8, 1, 1], pos=[[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]],
                 id="water")
METHANE = Molecule(z=[6, 1, 1, 1, 1], pos=[[0, 0, 0], [0.6291, 0.6291, 0.6291], [-0.6291, -0.6291, 0.6291],
                                           [-0.6291, 0.6291, -0.6291], [0.6291, -0.6291, -0.6291]], id="methane")
OH = Molecule(z=[8, 1], pos=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.9697]], id="OH")  # radical: multiplicity 2 by parity


def plain_pyscf_energy(mol: Molecule, basis="6-31g**", xc="b3lyp", grid_level=3, cart=True, jkfit="cc-pvdz-jkfit"):
    """Cartesian d functions by default: Psi4's 6-31G** (EDBench's labels) is a 6d basis. J/K density-fitted
    with ``jkfit`` (EDBench's labels are DF-RKS; Psi4 pairs 6-31G** with cc-pVDZ-JKFIT); None: direct SCF."""
    from pyscf import dft, gto
    atom = "; ".join(f"{s} {x} {y} {z}" for s, (x, y, z) in zip(mol.symbols, mol.pos))
    m = gto.M(atom=atom, basis=basis, charge=mol.charge, spin=mol.multiplicity - 1, verbose=0, cart=cart)
    mf = dft.RKS(m) if m.spin == 0 else dft.UKS(m)
    if jkfit:
        mf = mf.density_fit(auxbasis=jkfit)
    mf.xc = xc
    mf.grids.level = grid_level
    mf.conv_tol = 1e-10
    return mf.kernel(), mf


@pytest.fixture(scope="module")
def water():
    return run_scf(WATER, DFTConfig(backend="cpu"), "cpu")


def test_water_b3lyp_631gss_energy_matches_independent_pyscf(water):
    ref, _ = plain_pyscf_energy(WATER)
    assert water.converged and water.attempts == ["diis"]
    assert water.mol.basis == "6-31g**" and water.mf.xc == "b3lyp"
    assert water.mol.cart and water.mol.nao == 25  # 6d: O has 6 d functions, 2 x H 3 p + O 6 = 25
    assert abs(energy_components(water)["E6"] - ref) < 1e-8
    assert abs(ref - -76.419626) < 2e-6  # Cartesian-d B3LYP/6-31G** water at this geometry (Psi4/EDBench convention)


def test_spherical_d_functions_are_an_option():
    out = run_scf(WATER, DFTConfig(backend="cpu", basis_functions="spherical"), "cpu")
    ref, _ = plain_pyscf_energy(WATER, cart=False)
    assert not out.mol.cart and out.mol.nao == 24
    assert abs(float(out.mf.e_tot) - ref) < 1e-8
    assert abs(ref - -76.418064) < 3e-5  # 1.56 mEh above the Cartesian-d energy (direct SCF; DF adds 2.1e-5)
    from edg.dft.config import psi4_uses_cartesian
    assert psi4_uses_cartesian("6-31G**") and psi4_uses_cartesian("6-31+g**") and psi4_uses_cartesian("sto-3g")
    assert not psi4_uses_cartesian("6-311g**") and not psi4_uses_cartesian("cc-pvdz")
    assert not DFTConfig().cartesian_for("def2-svp") and DFTConfig(basis_functions="cartesian").cartesian_for("cc-pvdz")
    with pytest.raises(Exception, match="basis_functions"):
        DFTConfig(basis_functions="6d")


def test_methane_b3lyp_631gss_energy_matches_independent_pyscf():
    out = run_scf(METHANE, DFTConfig(backend="cpu"), "cpu")
    ref, _ = plain_pyscf_energy(METHANE)
    assert out.converged
    assert abs(float(out.mf.e_tot) - ref) < 1e-8
    assert -40.53 < ref < -40.50  # B3LYP/6-31G** methane is about -40.52 Eh


def test_energy_components_are_the_edbench_decomposition(water):
    e = energy_components(water)
    assert e["E1"] == e["E6"]
    assert abs(e["E2"] + e["E3"] + e["E4"] + e["E5"] - e["E6"]) < 1e-10
    # nuclear repulsion from the geometry alone
    r = WATER.pos * ANGSTROM_IN_BOHR
    d = np.linalg.norm(r[:, None] - r[None], axis=-1)
    zz = np.outer(WATER.z, WATER.z).astype(float)
    iu = np.triu_indices(3, 1)
    assert abs(e["E2"] - (zz[iu] / d[iu]).sum()) < 1e-8  # PySCF uses the CODATA 2014 bohr
    # one-electron and two-electron (Coulomb + hybrid share of exact exchange) from J/K matrices
    mf, dm = water.mf, water.mf.make_rdm1()
    assert abs(e["E3"] - np.einsum("ij,ji", mf.get_hcore(), dm)) < 1e-8
    vj, vk = mf.get_jk(water.mol, dm)
    hyb = mf._numint.rsh_and_hybrid_coeff(mf.xc)[2]
    e4 = 0.5 * np.einsum("ij,ji", dm, vj) - 0.25 * hyb * np.einsum("ij,ji", dm, vk)
    assert abs(e["E4"] - e4) < 1e-6
    assert hyb == pytest.approx(0.2)
    assert -8.0 < e["E5"] < -7.0  # the B3LYP functional part for water, not the exact exchange


def test_frontier_orbitals_and_dipole(water):
    homo, lumo = frontier_orbitals(water)
    assert homo < 0 < lumo  # water: HOMO about -0.29 Eh, LUMO about +0.07 Eh
    assert homo == pytest.approx(float(np.max(water.mf.mo_energy[water.mf.mo_occ > 0])))
    mu = dipole_debye(water)
    assert abs(mu[0]) < 1e-6 and abs(mu[1]) < 1e-6  # along the C2 axis (z)
    assert 1.9 < np.linalg.norm(mu) < 2.2  # B3LYP/6-31G** water: about 2.0 D


def test_open_shell_radical_runs_uks():
    from pyscf.dft import uks
    assert OH.multiplicity == 2
    out = run_scf(OH, DFTConfig(backend="cpu", basis="6-31g"), "cpu")
    assert isinstance(out.mf, uks.UKS) and out.converged
    ref, _ = plain_pyscf_energy(OH, basis="6-31g")
    # Two open-shell SCF runs from different starting points converge to within ~1e-7 Eh of each other
    # (measured 1.2e-7); 1e-6 Eh is the agreement the project asks of GPU vs CPU as well.
    assert abs(float(out.mf.e_tot) - ref) < 1e-6
    s2, _ = out.mf.spin_square()
    assert abs(s2 - 0.75) < 0.01
    homo, lumo = frontier_orbitals(out)
    assert homo < lumo
    e = energy_components(out)
    assert abs(e["E2"] + e["E3"] + e["E4"] + e["E5"] - e["E6"]) < 1e-10


def test_charge_is_honoured():
    anion = Molecule(z=OH.z, pos=OH.pos, id="OH-", charge=-1)
    assert anion.multiplicity == 1
    pmol = build_pyscf_mol(anion, DFTConfig(basis="sto-3g"))
    assert pmol.nelectron == 10 and pmol.spin == 0 and pmol.charge == -1
    out = run_scf(anion, DFTConfig(basis="sto-3g"), "cpu")
    from pyscf.dft import rks
    assert isinstance(out.mf, rks.RKS) and out.converged
    assert np.isclose(out.mf.mo_occ.sum(), 10)


@pytest.mark.parametrize("mol, basis", [(WATER, "6-31g**"), (OH, "6-31g")])
def test_e5_comes_from_the_final_fock_build_and_equals_a_fresh_integration(mol, basis):
    out = run_scf(mol, DFTConfig(basis=basis), "cpu")
    mf, ni = out.mf, out.mf._numint
    dm = mf.make_rdm1()
    integrate = type(ni).nr_uks if dm.ndim == 3 else type(ni).nr_rks
    fresh = float(integrate(ni, out.mol, mf.grids, mf.xc, dm)[1])

    def integrated_again(*args, **kwargs):
        raise AssertionError("E5 integrated again")
    ni.nr_rks = ni.nr_uks = integrated_again
    e = energy_components(out)
    assert e["E5"] == fresh  # the SCF's last integration, bit for bit
    coords, xc, _, _ = ni.edg_last_xc
    ni.edg_last_xc = (coords, xc, dm * 1.01, -1.0)  # a record of another density is not used
    del ni.nr_rks, ni.nr_uks  # the integrator's own methods again
    assert energy_components(out)["E5"] == pytest.approx(fresh, abs=1e-12)


def test_retry_ladder_recovers_from_non_convergence():
    cfg = DFTConfig(basis="sto-3g", max_cycle=2, grid_level=1)
    no_retry = run_scf(OH, DFTConfig(basis="sto-3g", max_cycle=2, grid_level=1, retries=False), "cpu")
    assert not no_retry.converged and no_retry.attempts == ["diis"]
    out = run_scf(OH, cfg, "cpu")
    assert out.converged and len(out.attempts) >= 2 and out.attempts[0] == "diis"
    ni, dm = out.mf._numint, out.mf.make_rdm1()
    fresh = type(ni).nr_uks(ni, out.mol, out.mf.grids, out.mf.xc, dm)[1]
    assert energy_components(out)["E5"] == pytest.approx(float(fresh), abs=1e-12)  # whichever attempt converged
    ref, _ = plain_pyscf_energy(OH, basis="sto-3g", grid_level=1, jkfit="def2-universal-jkfit")
    assert abs(float(out.mf.e_tot) - ref) < 1e-5


def test_sulfur_gets_the_diffuse_basis():
    h2s = Molecule(z=[16, 1, 1], pos=[[0, 0, 0.1030], [0, 0.9616, -0.8239], [0, -0.9616, -0.8239]], id="h2s")
    cfg = DFTConfig()
    assert cfg.basis_for(h2s.z) == "6-31+g**" and cfg.basis_for(WATER.z) == "6-31g**"
    with_s, without = build_pyscf_mol(h2s, cfg), build_pyscf_mol(WATER, cfg)
    assert with_s.basis == "6-31+g**" and without.basis == "6-31g**"
    # the + adds one diffuse sp shell (4 functions) on S and nothing on H
    plain = build_pyscf_mol(h2s, DFTConfig(basis_sulfur="6-31g**"))
    assert with_s.nao_nr() - plain.nao_nr() == 4


def test_bad_geometry_is_a_named_error():
    bad = Molecule(z=[8, 1, 1], pos=[[0, 0, 0], [0, 0, 0.05], [0, 0.8, -0.5]], id="collapsed")
    with pytest.raises(InvalidRecord, match="collapsed.*bad geometry.*atoms 0 and 1"):
        check_geometry(bad)


def test_config_rejects_unknown_backend_and_band():
    from edg.edg_core.config import ConfigError
    with pytest.raises(ConfigError, match="backend"):
        DFTConfig(backend="tpu")
    with pytest.raises(ConfigError, match="esp_band"):
        DFTConfig(esp_band=(0.1, 0.2))

"""Warm-started SCF along a trajectory (dft/warm.py): same energies as cold starts, fewer cycles, only for frames
of the same molecule that moved little, and a cold start again when a warm one fails.

Water with the 6-31G basis and a coarse XC grid: the point is the start density, not the basis. The benchmark
(bench/_dft_trajectory.py) measures ethanol at B3LYP/6-31G**.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
from edg.dft.config import DFTConfig
from edg.dft.scf import build_pyscf_mol, run_scf
from edg.dft.warm import WarmStart
from edg.dft.worker import DFTWorker
from edg.edg_core.molecule import Molecule

FAST = dict(backend="cpu", basis="6-31g", grid_level=1, fields=False)
WATER = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
# a bend-and-stretch path, 0.02-0.04 A per frame: the size of a 1 fs MD step for hydrogen
STEP = np.array([[0.0, 0.0, -0.004], [0.0, 0.03, 0.03], [0.0, -0.02, 0.03]])


def frame(k: int, **kw) -> Molecule:
    return Molecule(z=[8, 1, 1], pos=WATER + k * STEP + 0.004 * k * k * STEP[::-1], id=f"water-{k}", **kw)


def test_trajectory_frames_start_warm_reach_the_cold_energies_in_fewer_cycles(caplog):
    cold = DFTWorker(DFTConfig(**FAST, warm_start=False))
    warm = DFTWorker(DFTConfig(**FAST))
    with caplog.at_level(logging.INFO, logger="edg.dft.scf"):
        pairs = [(cold.compute(frame(k)), warm.compute(frame(k))) for k in range(5)]
    assert [w.attempts for _, w in pairs] == [["diis"]] + [["warm"]] * 4
    assert all(c.attempts == ["diis"] for c, _ in pairs)
    for c, w in pairs:
        # the total energy is variational: a density off by the SCF's stopping gradient (3e-5) moves it by ~1e-9
        assert abs(w.energies["E6"] - c.energies["E6"]) < 1e-8 and w.energies["E1"] == w.energies["E6"]
        assert w.energies["E2"] == c.energies["E2"]  # nuclear repulsion: the geometry alone
        # its parts (and orbital energies, dipole) are linear in the density: they agree to what the SCF's
        # convergence criteria leave open, from either start (about 3e-5 Eh here, at XC grid level 1)
        for label in ("E3", "E4", "E5"):
            assert abs(w.energies[label] - c.energies[label]) < 1e-4, label
        assert abs(w.homo - c.homo) < 1e-4 and np.allclose(w.dipole, c.dipole, atol=1e-3)
    assert sum(w.scf_cycles for _, w in pairs[1:]) < sum(c.scf_cycles for c, _ in pairs[1:])
    assert all(w.scf_cycles <= c.scf_cycles for c, w in pairs)
    said = [r.getMessage() for r in caplog.records if "starts warm" in r.getMessage()]
    assert len(said) == 4 and said[0].startswith("water-1: SCF starts warm from the previous frame")
    assert "extrapolation" in said[-1]  # with two or more frames behind it the guess extrapolates


def _remembered(mol: Molecule, cfg: DFTConfig) -> tuple[WarmStart, object]:
    out = run_scf(mol, cfg)
    chain = WarmStart(max_shift=cfg.warm_start_max_shift)
    chain.remember(mol, out.mol, out.mf.make_rdm1())
    return chain, out


def test_only_the_same_molecule_moved_a_little_continues_the_chain():
    cfg = DFTConfig(**FAST)
    first = frame(0)
    chain, _ = _remembered(first, cfg)

    def continues(mol, c=cfg):
        return chain.match(mol, build_pyscf_mol(mol, c)) is not None

    assert continues(frame(1))
    reordered = Molecule(z=[1, 8, 1], pos=first.pos[[1, 0, 2]], id="water-reordered")
    assert not continues(reordered)  # the same atoms in another order: another AO layout
    far = Molecule(z=first.z, pos=first.pos + [[0, 0, 0], [0, 0.51, 0], [0, 0, 0]], id="water-far")
    assert not continues(far)  # one hydrogen moved 0.51 A > warm_start_max_shift 0.5
    shifted = Molecule(z=first.z, pos=first.pos + [0.2, -0.3, 0.1], id="water-translated")
    assert continues(shifted)  # a rigid move of 0.39 A: the AO basis moves with the atoms
    assert not continues(frame(1, charge=1, multiplicity=2))
    assert not continues(frame(1), DFTConfig(**{**FAST, "basis": "sto-3g"}))
    assert not continues(Molecule(z=[8, 1], pos=first.pos[:2], id="OH", charge=-1))


@pytest.mark.parametrize("mol", [frame(1), frame(1, charge=1, multiplicity=2)], ids=["RKS", "UKS"])
def test_the_guess_is_an_idempotent_density_with_the_right_electron_count(mol):
    cfg = DFTConfig(**FAST)
    chain, _ = _remembered(Molecule(z=mol.z, pos=frame(0).pos, id="previous", charge=mol.charge,
                                    multiplicity=mol.multiplicity), cfg)
    pmol = build_pyscf_mol(mol, cfg)
    guess = chain.guess(mol, pmol)
    s = pmol.intor_symmetric("int1e_ovlp")
    spins = [guess.dm / 2] if guess.dm.ndim == 2 else list(guess.dm)
    for d, n in zip(spins, pmol.nelec):
        assert np.trace(d @ s) == pytest.approx(n, abs=1e-10)
        np.testing.assert_allclose(d @ s @ d, d, atol=1e-10)  # idempotent in the metric of the new geometry
    assert guess.order == 0 and 0.03 < guess.shift < 0.05


def test_a_failed_frame_ends_the_chain():
    w = DFTWorker(DFTConfig(**FAST))
    assert w.compute(frame(0)).attempts == ["diis"]
    collapsed = Molecule(z=[8, 1, 1], pos=WATER * [1, 0.01, 1], id="collapsed")  # H-H 0.015 A: refused
    assert w.process(collapsed)["status"] == "failed"
    assert w.compute(frame(1)).attempts == ["diis"]  # cold: the frame before it failed
    assert w.compute(frame(2)).attempts == ["warm"]


def test_a_warm_scf_that_does_not_converge_is_redone_cold(caplog):
    """A start density with the electrons in the highest virtual orbitals needs more DIIS cycles than PySCF's
    cold guess; with max_cycle at the cold count the warm attempt fails and the cold one lands on the energy."""
    mol = frame(0)
    loose = DFTConfig(**FAST, retries=False)
    cold = run_scf(mol, loose)
    cfg = DFTConfig(**FAST, retries=False, max_cycle=cold.cycles)
    c = cold.mf.mo_coeff[:, -(cold.mol.nelectron // 2):]
    bad = 2.0 * c @ c.T

    def worker_after_bad_frame(config):
        w = DFTWorker(config)
        w.warm.remember(mol, cold.mol, bad)
        return w

    patient = worker_after_bad_frame(loose).compute(mol)
    assert patient.attempts == ["warm"] and patient.scf_cycles > cold.cycles  # the premise: a worse start
    with caplog.at_level(logging.INFO, logger="edg.dft.scf"):
        r = worker_after_bad_frame(cfg).compute(mol)
    assert r.attempts == ["warm", "diis"] and r.converged
    assert r.scf_cycles == cfg.max_cycle + cold.cycles
    assert abs(r.energies["E6"] - float(cold.mf.e_tot)) < 1e-8
    assert any("did not converge" in m and "starting again cold" in m for m in caplog.messages)


def test_warm_start_off_always_starts_cold():
    w = DFTWorker(DFTConfig(**FAST, warm_start=False))
    assert w.warm is None
    assert [w.compute(frame(k)).attempts for k in range(2)] == [["diis"], ["diis"]]

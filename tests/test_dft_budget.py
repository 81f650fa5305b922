"""DFT budgets (issue 23, deliverable 3): non-zero defaults the paper's data fits, a basis-function budget, an
opt-in time limit per molecule, progress during long molecules; past a budget the molecule is a named failure
and the run goes on, and every budget is a flag a user can raise."""
from __future__ import annotations

import argparse
import logging
import re

import numpy as np
import pytest
from edg.cluster.stages import Workers, run_dft
from edg.dft.budget import SCFWatch, TimeLimitExceeded, check_basis, check_size
from edg.dft.config import DFTConfig
from edg.dft.scf import build_pyscf_mol, run_scf
from edg.dft.worker import DFTWorker
from edg.edg_core.config import add_config_args, apply_args
from edg.edg_core.errors import InvalidRecord
from edg.edg_core.io import read_jsonl
from edg.edg_core.molecule import Molecule
from edg.edg_core.readers import open_source

FAST = dict(backend="cpu", basis="sto-3g", grid_spacing=0.8, grid_level=0)
H2 = Molecule(z=[1, 1], pos=[[0, 0, 0], [0, 0, 0.74]], id="h2", multiplicity=1)
WATER = Molecule(z=[8, 1, 1], pos=[[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]],
                 id="water", multiplicity=1)


def lattice_molecule(n: int, spacing: float = 1.5) -> Molecule:
    side = int(np.ceil(n ** (1 / 3)))
    pos = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] * spacing
    return Molecule(z=[6] * n, pos=pos, id=f"c{n}")


def test_default_budgets_are_on_and_the_papers_molecules_fit():
    cfg = DFTConfig()
    assert cfg.max_atoms > 0 and cfg.max_grid_points > 0 and cfg.max_basis_functions > 0
    for mol in open_source("embedded").molecules():  # QM9 molecules and rMD17 frames at the paper's basis
        check_size(mol, cfg)
        check_basis(build_pyscf_mol(mol, cfg), cfg, mol.id)


def test_a_500_atom_molecule_is_refused_by_default_and_a_flag_raises_the_budget():
    big = lattice_molecule(500)
    st = DFTWorker(DFTConfig(backend="cpu")).process(big)
    assert st["status"] == "failed"
    assert st["reason"] == "invalid input: too large for the DFT budget: 500 atoms > max_atoms 200"
    parser = argparse.ArgumentParser()
    add_config_args(parser, DFTConfig)
    raised = apply_args(DFTConfig(backend="cpu"), parser.parse_args(
        ["--max-atoms", "1000", "--max-basis-functions", "20000", "--time-limit-s", "60"]))
    assert (raised.max_atoms, raised.max_basis_functions, raised.time_limit_s) == (1000, 20000, 60.0)
    check_size(big, raised)  # within the raised budget


def test_basis_functions_are_counted_by_pyscf_before_the_scf_and_the_run_goes_on(tmp_path):
    cfg = DFTConfig(**FAST, max_basis_functions=5)  # STO-3G: water 7 functions, H2 2
    s = run_dft([WATER, H2], tmp_path, cfg, Workers())
    assert (s.done, s.failed) == (1, 1)
    [entry] = read_jsonl(tmp_path / "failures.jsonl")
    assert entry["record"] == "water"
    assert entry["reason"] == ("invalid input: too large for the DFT budget: 7 basis functions (sto-3g, cartesian) "
                               "> max_basis_functions 5")
    paper = DFTConfig()
    with pytest.raises(InvalidRecord, match=r"25 basis functions \(6-31g\*\*, cartesian\) > max_basis_functions 24"):
        check_basis(build_pyscf_mol(WATER, paper), DFTConfig(max_basis_functions=24), "water")


def test_the_time_limit_counts_across_attempts_and_names_where_it_stopped():
    watch = SCFWatch("m", time_limit_s=5.0).for_attempt("damping+level_shift")
    watch({"cycle": 2})  # within the limit: nothing happens
    watch.start -= 6.0   # as if the molecule had started 6 s ago (6.0 s or a little more on a loaded machine)
    with pytest.raises(TimeLimitExceeded, match=r"SCF stopped after 6\.\d s, over time_limit_s 5 s \(attempt "
                                                r"damping\+level_shift, cycle 4\)"):
        watch({"cycle": 3})  # PySCF's 0-based cycle 3 is the 4th
    SCFWatch("m", time_limit_s=0.0).__call__({"cycle": 1})  # 0: no limit


def test_past_the_time_limit_a_molecule_is_a_named_failure_and_the_run_goes_on(tmp_path):
    cfg = DFTConfig(**FAST, time_limit_s=1e-6)
    s = run_dft([WATER, H2], tmp_path, cfg, Workers())
    assert (s.done, s.failed) == (0, 2)  # both were tried: the first timeout did not stop the run
    reasons = {e["record"]: e["reason"] for e in read_jsonl(tmp_path / "failures.jsonl")}
    assert set(reasons) == {"water", "h2"}
    assert all(re.fullmatch(r"timeout: SCF stopped after \d+\.\d s, over time_limit_s 1e-06 s \(attempt diis, "
                            r"cycle 1\)", r) for r in reasons.values()), reasons
    assert DFTConfig(timeout_s=7).time_limit_s == 7  # the old name still sets it


def test_progress_lines_during_a_molecule(caplog):
    with caplog.at_level(logging.INFO, logger="edg.dft.scf"):
        out = run_scf(WATER, DFTConfig(**FAST, progress_s=1e-9), "cpu")
    assert out.converged
    lines = [r.getMessage() for r in caplog.records if "SCF attempt diis, cycle" in r.getMessage()]
    assert len(lines) >= 2 and lines[0].startswith("water: SCF attempt diis, cycle 1, E = -")


def test_the_dft_log_says_when_charge_and_multiplicity_were_inferred(tmp_path, caplog):
    (tmp_path / "oh.xyz").write_text("2\nid=oh\nO 0 0 0\nH 0 0 0.97\n")
    [oh] = open_source(str(tmp_path / "oh.xyz")).molecules()
    [stated] = open_source(f"{tmp_path / 'oh.xyz'}?charge=-1&multiplicity=1").molecules()
    with caplog.at_level(logging.INFO, logger="edg.dft.scf"):
        run_scf(oh, DFTConfig(**FAST), "cpu")
        run_scf(stated, DFTConfig(**FAST), "cpu")
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "not stated by the input" in r.getMessage()]
    assert said == [(logging.WARNING, "oh: charge and multiplicity not stated by the input: computing charge 0, "
                                      "multiplicity 2 (UKS); state them in the file or with ?charge=N&multiplicity=M "
                                      "on the input spec")]


@pytest.mark.parametrize("field", ["max_atoms", "max_grid_points", "max_basis_functions", "time_limit_s"])
def test_a_negative_budget_is_a_config_error(field):
    from edg.edg_core.config import ConfigError
    with pytest.raises(ConfigError, match=f"dft.{field} -1: must be >= 0"):
        DFTConfig(**{field: -1})

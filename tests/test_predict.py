"""Using a trained student: ``edg predict`` (extxyz out) and the ASE calculator (MD, BFGS), on a SchNet trained
for a few seconds on the embedded rMD17 ethanol frames."""
from __future__ import annotations

import json

import numpy as np
import pytest
from edg.cluster.cli import main
from edg.edg_core.readers import open_source
from edg.edg_core.units import KCAL_PER_MOL_IN_EV

ase_io = pytest.importorskip("ase.io")
SMALL = {"hidden_channels": 32, "num_filters": 32, "num_interactions": 2, "num_gaussians": 25, "cutoff": 5.0}
TEST = "rmd17:ethanol?split=test&root=embedded"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished distillation run (baseline, 40 epochs on the 16 embedded ethanol training frames; ~3 s)."""
    from edg.train.configs import FitConfig
    from edg.train.loops.distill import DistillConfig, run_distill
    out = tmp_path_factory.mktemp("distill")
    cfg = DistillConfig(dataset="rmd17:ethanol?root=embedded", out=str(out), student_args=SMALL,
                        fit=FitConfig(epochs=40, lr=3e-3, batch_size=4, seed=1))
    record = run_distill(cfg)
    return out / cfg.run_name(), record


def _read(path):
    return ase_io.read(path, index=":")


def test_predict_writes_extxyz_that_matches_the_run_test_errors(run, tmp_path, capsys):
    run_dir, record = run
    out = tmp_path / "pred.extxyz"
    assert main(["predict", "--model", str(run_dir), "--input", TEST, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "predicted 4 molecules" in printed and "energy MAE" in printed
    frames = _read(out)
    mols = list(open_source(TEST).molecules())
    assert [f.info["id"] for f in frames] == [m.id for m in mols]
    # the run's own test errors (best epoch, computed by the training code) from the written predictions
    errs = np.load(run_dir / "test_errors.npz")
    assert list(errs["ids"]) == [m.id for m in mols]
    e_pred = np.array([f.get_potential_energy() for f in frames]) / KCAL_PER_MOL_IN_EV  # eV -> kcal/mol
    de = np.abs(e_pred - np.array([m.labels["energy"] for m in mols]))
    np.testing.assert_allclose(de, errs["energy_mae"], rtol=1e-3, atol=2e-3)
    df = [np.abs(f.get_forces() / KCAL_PER_MOL_IN_EV - m.labels["forces"]).mean() for f, m in zip(frames, mols)]
    np.testing.assert_allclose(df, errs["force_mae"], rtol=1e-3, atol=1e-4)
    assert record["test"]["energy_mae"] == pytest.approx(de.mean(), rel=1e-3, abs=2e-3)

    # the same predictions in kcal/mol, and from best_student.pt given directly
    out2 = tmp_path / "kcal.extxyz"
    assert main(["predict", "--model", str(run_dir / "best_student.pt"), "--input", TEST, "--out", str(out2),
                 "--units", "kcal/mol"]) == 0
    frames2 = _read(out2)
    np.testing.assert_allclose([f.get_potential_energy() for f in frames2], e_pred, rtol=1e-9)
    np.testing.assert_allclose(frames2[0].get_forces() * KCAL_PER_MOL_IN_EV, frames[0].get_forces(), rtol=1e-6,
                               atol=1e-8)


def test_predict_keeps_going_past_bad_records_and_reports_bad_models(run, tmp_path, capsys):
    run_dir, _ = run
    good = list(open_source(TEST).molecules())[0]
    lines = ["3", "bad frame", "C 0 0 0", "H 0 0 x", "H 1 1 1"]
    sym = {1: "H", 6: "C", 8: "O"}
    lines += [str(len(good.z)), "id=ok"] + [f"{sym[int(z)]} {x:.6f} {y:.6f} {w:.6f}" for z, (x, y, w) in
                                            zip(good.z, good.pos)]
    src = tmp_path / "in.xyz"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "p.extxyz"
    assert main(["predict", "--model", str(run_dir), "--input", str(src), "--out", str(out)]) == 0
    assert "1 invalid records" in capsys.readouterr().out
    assert [f.info["id"] for f in _read(out)] == ["ok"]
    lines = (tmp_path / "p.extxyz.failures.jsonl").read_text().splitlines()
    assert len(lines) == 1 and "is not a number" in lines[0]
    from edg.edg_core.stage import Failure
    rec = json.loads(lines[0])
    assert set(rec) == {"record", "key", "stage", "reason", "time"}  # the stages' failure manifest format
    f = Failure.from_json(rec)
    assert (f.record, f.key, f.stage) == ("in:0", "in:0", "read") and "in.xyz, frame 0" in f.reason

    assert main(["predict", "--model", str(tmp_path), "--input", TEST, "--out", str(tmp_path / "x.extxyz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a finished distillation run" in err[0]


def test_ase_calculator_md_and_bfgs(run):
    """Forces are -dE/dx (finite differences), 100 VelocityVerlet steps conserve the total energy, BFGS
    relaxes an embedded ethanol frame to a stationary point of the student."""
    from ase import Atoms, units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet
    from ase.optimize import BFGS
    from edg.train.io.ase_calculator import EDGCalculator
    run_dir, _ = run
    calc = EDGCalculator(run_dir)
    m = next(open_source(TEST).molecules())
    atoms = Atoms(numbers=m.z, positions=m.pos, calculator=calc)
    e0, f0 = atoms.get_potential_energy(), atoms.get_forces()
    h = 1e-4
    for atom, axis in ((0, 0), (3, 2)):
        shifted = []
        for sign in (1, -1):
            a = atoms.copy()
            a.calc = calc
            a.positions[atom, axis] += sign * h
            shifted.append(a.get_potential_energy())
        assert -(shifted[0] - shifted[1]) / (2 * h) == pytest.approx(f0[atom, axis], rel=1e-4, abs=1e-6)

    def md(dt_fs, steps):
        a = Atoms(numbers=m.z, positions=m.pos, calculator=calc)
        MaxwellBoltzmannDistribution(a, temperature_K=300, rng=np.random.default_rng(0))
        total, pot = [], []
        dyn = VelocityVerlet(a, timestep=dt_fs * units.fs)
        dyn.attach(lambda: (total.append(a.get_total_energy()), pot.append(a.get_potential_energy())), interval=1)
        dyn.run(steps)
        assert len(total) == steps + 1 and np.isfinite(a.positions).all()
        bonds = [(i, j) for i in range(len(m.z)) for j in range(i) if np.linalg.norm(m.pos[i] - m.pos[j]) < 1.6]
        assert len(bonds) == 8 and all(a.get_distance(i, j) < 2.0 for i, j in bonds)  # still ethanol
        return total[-1] - total[0], max(pot) - min(pot)

    drift, swing = md(0.5, 100)
    drift_half, _ = md(0.25, 200)  # the same 50 fs with half the step
    print(f"ASE VelocityVerlet, 100 steps of 0.5 fs from 300 K (ethanol, 9 atoms): total energy drift "
          f"{drift:.2e} eV while the potential energy swings {swing:.3f} eV; 200 steps of 0.25 fs: {drift_half:.2e} eV")
    # conservative forces: the drift is the integrator's O(dt^2) error, small against the motion
    assert abs(drift) < 0.05 * swing
    assert abs(drift_half) < abs(drift) / 2.5

    relaxed = Atoms(numbers=m.z, positions=m.pos, calculator=calc)
    opt = BFGS(relaxed, logfile=None)
    assert opt.run(fmax=0.01, steps=500)
    print(f"BFGS: fmax 0.01 eV/Å after {opt.nsteps} steps, energy {relaxed.get_potential_energy() - e0:.3f} eV "
          "from the starting frame")
    assert np.linalg.norm(relaxed.get_forces(), axis=1).max() < 0.01
    assert relaxed.get_potential_energy() < e0


def test_ase_calculator_refuses_periodic_cells(run):
    from ase import Atoms
    from edg.train.io.ase_calculator import EDGCalculator
    from edg.train.io.predict import ModelError
    m = next(open_source(TEST).molecules())
    atoms = Atoms(numbers=m.z, positions=m.pos, cell=[10, 10, 10], pbc=True, calculator=EDGCalculator(run[0]))
    with pytest.raises(ModelError, match="periodic"):
        atoms.get_potential_energy()


def test_predict_qm9_property_model(tmp_path):
    """A QM9 student predicts its target (eV for homo) and is no ASE energy model."""
    import importlib.util
    if importlib.util.find_spec("qm9pack") is None:  # EDG reads its tables without importing it
        pytest.skip("qm9pack is not installed")
    from edg.train.configs import FitConfig
    from edg.train.io.ase_calculator import EDGCalculator
    from edg.train.io.predict import ModelError, load_student
    from edg.train.loops.distill import DistillConfig, run_distill
    cfg = DistillConfig(dataset="qm9:homo", out=str(tmp_path), student_args=SMALL,
                        task={"train_size": 16, "valid_size": 4, "test_size": 4},
                        fit=FitConfig(epochs=2, batch_size=8))
    rec = run_distill(cfg)
    run_dir = tmp_path / cfg.run_name()
    out = tmp_path / "homo.extxyz"
    assert main(["predict", "--model", str(run_dir), "--input", "embedded:qm9?limit=5", "--out", str(out)]) == 0
    frames = _read(out)
    homo = np.array([f.info["homo"] for f in frames])
    mean, std = rec["task_info"]["target_mean"], rec["task_info"]["target_std"]
    assert len(homo) == 5 and np.all(np.abs(homo - mean) < 20 * std)  # eV, de-standardised
    assert "forces" not in frames[0].arrays
    assert load_student(run_dir).units == {"homo": "eV"}
    with pytest.raises(ModelError, match="not an energy"):
        EDGCalculator(run_dir)


def test_load_student_reads_the_recorded_output_scale_and_recomputes_it_for_older_runs(run, tmp_path):
    """The task records the scale of the student's output (``output_scale``); predict reads it, and for a run
    written before it was recorded derives it from ``energy_scale`` as before."""
    import json
    import shutil

    from edg.train.io.predict import load_student
    run_dir, record = run
    info = record["task_info"]
    by_kind = {"energy_std": info["energy_std_kcal_mol"], "force_rms": info["force_rms_kcal_mol_A"]}
    assert info["output_scale"] == by_kind[info["energy_scale"]]  # force_rms: the paper's Geom3D setting
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    rec = json.loads((copy / "result.json").read_text())
    assert load_student(copy).std == info["output_scale"]
    rec["task_info"]["output_scale"] = 2.5  # what the task recorded wins
    (copy / "result.json").write_text(json.dumps(rec))
    assert load_student(copy).std == 2.5
    del rec["task_info"]["output_scale"]  # an older run
    for kind, scale in by_kind.items():
        rec["task_info"]["energy_scale"] = kind
        (copy / "result.json").write_text(json.dumps(rec))
        assert load_student(copy).std == scale
    del rec["task_info"]["energy_scale"]  # older still: energy_std
    (copy / "result.json").write_text(json.dumps(rec))
    assert load_student(copy).std == by_kind["energy_std"]


@pytest.mark.parametrize("name", ["spherenet", "equiformer"])
def test_weights_of_the_earlier_model_of_a_renamed_student_say_so_in_one_line(run, tmp_path, name):
    """A run saved as `spherenet` / `equiformer` before those names became Geom3D's models holds the weights of
    today's `-edg` variant: loading it says so in one line (not a bare key mismatch); renamed, it loads. Weights
    that fit neither keep the plain message."""
    import shutil

    import torch
    from edg.train.io.checkpoint import save_checkpoint
    from edg.train.io.predict import ModelError, load_student
    from edg.train.students import build_student
    from edg.train.students.host_syncs import SMALL_STUDENTS
    earlier = f"{name}-edg"
    args = dict(SMALL_STUDENTS[earlier])
    copy = tmp_path / "run"
    shutil.copytree(run[0], copy)
    torch.manual_seed(0)
    state = build_student(earlier, out_dim=1, **args).state_dict()
    save_checkpoint(dict(state), copy / "best_student.pt")
    rec = json.loads((copy / "result.json").read_text())

    def record(student):
        rec["student"] = rec["config"]["student"] = student
        rec["config"]["student_args"] = args
        (copy / "result.json").write_text(json.dumps(rec))
    record(name)
    with pytest.raises(ModelError) as e:
        load_student(copy, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and f"saved by the earlier `{name}` (now `{earlier}`): " in msg, msg
    record(earlier)
    loaded = load_student(copy, device="cpu")
    assert loaded.student == earlier
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in state.items())
    # SchNet's weights under the name: no hint, the plain mismatch
    shutil.copy(run[0] / "best_student.pt", copy / "best_student.pt")
    record(name)
    with pytest.raises(ModelError, match=f"cannot load as {name} weights") as e:
        load_student(copy, device="cpu")
    assert "saved by the earlier" not in str(e.value)

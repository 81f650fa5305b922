"""Tasks: QM9 target transforms on methane by hand, standardisation, rMD17 split sizes, forces = -dE/dpos,
the rMD17 loss formula, vectorised batching, and a tiny training run that lowers the validation error."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from edg.edg_core.readers import open_source
from edg.edg_core.readers.qm9 import TARGETS, QM9Table
from edg.train.loops.distill import FitConfig, evaluate, train_student
from edg.train.students import build_student
from edg.train.tasks import PackedMolecules, Prediction, build_task
from edg.train.tasks.qm9 import QM9Task, pack_table

ROOT = "/work/shared/data/rmd17"
TINY = {"hidden_channels": 16, "num_filters": 16, "num_interactions": 2, "num_gaussians": 10, "cutoff": 5.0}
HARTREE_EV = 27.211386245988


def _methane_table(n_copies: int = 1) -> QM9Table:
    raw = np.array([0.0, 13.21, -0.3877, 0.1171, 0.5048, 35.3641, 0.044749, -40.47893, -40.476062,
                    -40.475117, -40.498597, 6.469])
    z = np.tile([6, 1, 1, 1, 1], n_copies)
    pos = np.tile(np.array([[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63],
                            [0.63, -0.63, -0.63]], dtype=float), (n_copies, 1))
    return QM9Table(np.arange(1, n_copies + 1), z, pos, np.arange(n_copies + 1) * 5,
                    np.tile(raw, (n_copies, 1)), np.array(["C"] * n_copies))


def test_qm9_methane_targets_by_hand():
    p = pack_table(_methane_table(), np.array([0]), "U0")
    ref = -37.846772 + 4 * -0.500273                       # atomref U0: C + 4 H (Hartree)
    assert p.mol_labels["y"].item() == pytest.approx((-40.47893 - ref) * HARTREE_EV, abs=1e-4)  # -17.1722 eV
    assert pack_table(_methane_table(), [0], "Cv").mol_labels["y"].item() == pytest.approx(6.469 - 5 * 2.981,
                                                                                           abs=1e-5)
    assert pack_table(_methane_table(), [0], "homo").mol_labels["y"].item() == pytest.approx(-0.3877 * HARTREE_EV,
                                                                                             rel=1e-6)
    assert pack_table(_methane_table(), [0], "G").mol_labels["y"].item() == pytest.approx(
        (-40.498597 - (-37.861317 + 4 * -0.510927)) * HARTREE_EV, abs=1e-4)
    assert pack_table(_methane_table(), [0], "alpha").mol_labels["y"].item() == pytest.approx(13.21, rel=1e-6)
    # embedded data (written by the foundation with the same protocol) agrees
    emb = next(iter(open_source("embedded:qm9?limit=1").molecules()))
    assert emb.labels["U0"] == pytest.approx(p.mol_labels["y"].item(), abs=1e-4)
    with pytest.raises(ValueError, match="unknown QM9 target"):
        pack_table(_methane_table(), [0], "U7")


def test_qm9_standardisation_and_loss():
    table = _methane_table(20)
    table.targets[:, TARGETS.index("U0")] += np.linspace(-0.01, 0.01, 20)  # spread the values
    task = QM9Task.__new__(QM9Task)  # QM9Task over a 20-molecule table with a hand-made split
    from edg.train.tasks.qm9 import QM9Config
    task.cfg = QM9Config(target="U0")
    task.name, task.units = "qm9:U0", {"mae": "eV"}
    task.train, task.valid, task.test = (pack_table(table, idx, "U0") for idx in
                                         (np.arange(12), np.arange(12, 16), np.arange(16, 20)))
    y = task.train.mol_labels["y"].double()
    task.mean, task.std = float(y.mean()), float(y.std())
    b = task.train.gather(torch.arange(12))
    s_true = task.standardise(b.labels["y"])
    assert float(s_true.mean()) == pytest.approx(0, abs=1e-5) and float(s_true.std()) == pytest.approx(1, abs=1e-4)
    perfect = Prediction(torch.zeros(12, 4), {"s": s_true, "y": task.mean + task.std * s_true})
    assert float(task.loss(perfect, b)) == pytest.approx(0, abs=1e-6)
    off = Prediction(torch.zeros(12, 4), {"s": s_true + 0.5, "y": task.mean + task.std * (s_true + 0.5)})
    assert float(task.loss(off, b)) == pytest.approx(0.5, abs=1e-5)
    assert task.abs_errors(off, b)["mae"].mean().item() == pytest.approx(0.5 * task.std, rel=1e-4)


def test_qm9_task_uses_customized_01_split():
    import importlib.util
    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("qm9pack is not installed")
    from edg.edg_core.readers.qm9 import load_qm9, split_customized_01
    table = load_qm9()
    task = build_task("qm9:gap", train_size=300, valid_size=50, test_size=50)
    split = split_customized_01(len(table))
    assert task.train.ids == [f"qm9:{g}" for g in table.gdb_id[split["train"][:300]]]
    assert task.test.ids[0] == f"qm9:{table.gdb_id[split['test'][0]]}"
    assert task.mean == pytest.approx(float(task.train.mol_labels["y"].double().mean()), rel=1e-6)


def test_rmd17_split_sizes_and_disjoint():
    task = build_task("rmd17:ethanol", root=ROOT)
    assert (len(task.train), len(task.valid), len(task.test)) == (950, 50, 1000)
    assert task.train.num_atoms == 950 * 9
    ids = [set(d.ids) for d in (task.train, task.valid, task.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    # energy labels are held relative to the training mean, in kcal/mol
    assert float(task.train.mol_labels["energy"].double().mean()) == pytest.approx(0, abs=1e-2)
    assert -98000 < task.energy_mean < -96000


def test_packed_gather_matches_per_molecule_loop():
    mols = list(open_source("embedded:qm9?limit=10").molecules())
    offsets = np.concatenate([[0], np.cumsum([m.n_atoms for m in mols])])
    p = PackedMolecules.from_arrays(np.concatenate([m.z for m in mols]), np.concatenate([m.pos for m in mols]),
                                    offsets, [m.id for m in mols], mol_labels={"y": np.arange(10.0)})
    idx = torch.tensor([7, 2, 9, 2])
    b = p.gather(idx)
    assert torch.equal(b.z, torch.cat([torch.as_tensor(mols[i].z) for i in idx.tolist()]))
    assert torch.allclose(b.pos, torch.cat([torch.as_tensor(mols[i].pos, dtype=torch.float32) for i in idx.tolist()]))
    assert b.batch.tolist() == sum(([k] * mols[i].n_atoms for k, i in enumerate(idx.tolist())), [])
    assert b.labels["y"].tolist() == [7.0, 2.0, 9.0, 2.0]
    sub = p.select([3, 1])
    assert sub.ids == [mols[3].id, mols[1].id] and sub.offsets.tolist() == [0, mols[3].n_atoms,
                                                                             mols[3].n_atoms + mols[1].n_atoms]


def test_rmd17_forces_are_minus_energy_gradient_and_loss_formula():
    task = build_task("rmd17:ethanol", root=ROOT, train_size=4, valid_size=2, test_size=2)
    torch.manual_seed(0)
    model = build_student("schnet", **TINY).double().eval()
    b = task.train.gather(torch.arange(2))
    b.pos = b.pos.double()
    pred = task.predict(model, b, training=False)
    eps, atom, axis = 1e-5, 4, 1
    shifted = []
    for sign in (1, -1):
        pos = b.pos.clone()
        pos[atom, axis] += sign * eps
        with torch.no_grad():
            _, s = model(b.z, pos, b.batch)
        shifted.append(task.energy_std * s[0, 0])
    fd = -(shifted[0] - shifted[1]) / (2 * eps)
    assert float(pred.values["forces"][atom, axis]) == pytest.approx(float(fd), rel=1e-4, abs=1e-6)

    e_err = pred.values["energy"] - b.labels["energy"].double()
    f_err = pred.values["forces"] - b.labels["forces"].double()
    by_hand = 0.05 * e_err.abs().mean() + 0.95 * f_err.abs().mean()
    assert float(task.loss(pred, b)) == pytest.approx(float(by_hand), rel=1e-9)
    err = task.abs_errors(pred, b)
    assert float(err["force_mae"].mean()) == pytest.approx(float(f_err.abs().mean()), rel=1e-9)


def test_tiny_training_run_lowers_validation_error():
    task = build_task("rmd17:ethanol", root=ROOT, train_size=64, valid_size=16, test_size=16)
    torch.manual_seed(0)
    model = build_student("schnet", **TINY)
    before = evaluate(task, model, task.valid, 64)
    res = train_student(task, model, FitConfig(epochs=30, batch_size=8, lr=5e-3, seed=0))
    assert res.valid["weighted_mae"] < 0.7 * before["weighted_mae"].mean()
    assert res.valid["energy_mae"] < before["energy_mae"].mean()
    assert 1 <= res.best_epoch <= 30 and len(res.history) == 30
    best = res.history[res.best_epoch - 1]
    assert best["valid_weighted_mae"] == min(h["valid_weighted_mae"] for h in res.history)
    assert best["test_weighted_mae"] == pytest.approx(res.test["weighted_mae"])
    assert set(res.test_errors) == {"energy_mae", "force_mae", "weighted_mae", "weighted_mse"}
    assert res.test_errors["energy_mae"].shape == (16,)



@pytest.mark.parametrize("option, message", [
    ({"energy_scale": "max"}, "task rmd17:ethanol: energy_scale 'max': use one of energy_std, force_rms"),
    ({"select_metric": "mae"}, "task rmd17:ethanol: select_metric 'mae': use one of energy_mae, force_mae"),
])
def test_rmd17_options_are_checked_by_the_config_before_any_data(option, message):
    """A bad select_metric or energy_scale fails DistillConfig.validate() and build_task before the data is
    looked for (the root does not exist), as a ConfigError naming the task and the key."""
    from edg.edg_core.config import ConfigError
    from edg.train.loops.distill import DistillConfig
    from edg.train.tasks import RMD17Config
    opts = {"root": "/nonexistent/rmd17", **option}
    for call in (lambda: DistillConfig(student="schnet", dataset="rmd17:ethanol", task=opts).validate(),
                 lambda: build_task("rmd17:ethanol", **opts)):
        with pytest.raises(ConfigError, match=re.escape(message)):
            call()
    with pytest.raises(ValueError, match=next(iter(option))):
        RMD17Config(molecule="ethanol", **option)
    with pytest.raises(ConfigError, match=re.escape("unknown rMD17 molecule 'asprin' (did you mean 'aspirin'?)")):
        build_task("rmd17:asprin", root="/nonexistent/rmd17")

def test_rmd17_mse_loss_energy_grad_scale_force_rms_and_weighted_mse():
    task = build_task("rmd17:ethanol", root=ROOT, train_size=8, valid_size=2, test_size=2,
                      energy_scale="force_rms", energy_grad_scale=0.05)
    assert task.scale == task.force_rms != task.energy_std
    f = task.train.atom_labels["forces"].double().reshape(8, -1)
    assert task.force_rms == pytest.approx(float(f.pow(2).mean(dim=1).sqrt().mean()), rel=1e-6)
    torch.manual_seed(0)
    model = build_student("schnet", **TINY).double()
    b = task.train.gather(torch.arange(3))
    b.pos = b.pos.double()
    pred = task.predict(model, b, training=True)
    e_err = pred.values["energy"] - b.labels["energy"].double()
    f_err = pred.values["forces"] - b.labels["forces"].double()
    loss = task.loss(pred, b, kind="mse")
    assert float(loss) == pytest.approx(float(0.05 * e_err.pow(2).mean() + 0.95 * f_err.pow(2).mean()), rel=1e-9)
    # the energy term's gradient is scaled by energy_grad_scale, its value is not
    w = model.head.weight
    g_total = torch.autograd.grad(loss, w, retain_graph=True)[0]
    g_e = torch.autograd.grad(e_err.pow(2).mean(), w, retain_graph=True)[0]
    g_f = torch.autograd.grad(f_err.pow(2).mean(), w, retain_graph=True)[0]
    assert torch.allclose(g_total, 0.05 * 0.05 * g_e + 0.95 * g_f, rtol=1e-8, atol=1e-12)
    err = task.abs_errors(pred, b)
    per_frame = 0.05 * e_err.pow(2) + 0.95 * f_err.pow(2).reshape(3, -1).mean(dim=1)
    assert torch.allclose(err["weighted_mse"], per_frame.detach())
    with pytest.raises(ValueError, match="loss"):
        task.loss(pred, b, kind="huber")
    with pytest.raises(ValueError, match="energy_scale"):
        build_task("rmd17:ethanol", root=ROOT, train_size=4, valid_size=2, test_size=2, energy_scale="max")

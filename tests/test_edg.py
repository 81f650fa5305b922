"""EDG loss: lambda = 0 is the baseline step bit for bit, the ED predictor stays frozen, the loss formula,
teacher-target loading."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from edg.edg_core.errors import DataSourceError
from edg.train.data.teacher_targets import coulomb_standin_features, load_teacher_targets
from edg.train.io.model_files import build_ed_predictor
from edg.train.loops.distill import train_step
from edg.train.models.edg_head import EDGHead, edg_objective
from edg.train.students import build_student
from edg.train.tasks import build_task

TINY = {"hidden_channels": 16, "num_filters": 16, "num_interactions": 2, "num_gaussians": 10, "cutoff": 5.0}


@pytest.fixture(scope="module")
def ethanol():
    task = build_task("rmd17:ethanol", root="/work/shared/data/rmd17", train_size=12, valid_size=4, test_size=4)
    edp = torch.randn(len(task.train), 768, generator=torch.Generator().manual_seed(1))
    task.train = task.train.with_labels(edp=edp)
    return task


def _setup(seed=0):
    torch.manual_seed(seed)
    model = build_student("schnet", **TINY)
    head = EDGHead(model.feature_dim, build_ed_predictor(None, seed=3))
    return model, head


def test_lambda_zero_reproduces_baseline_step_exactly(ethanol):
    model, head = _setup()
    base = copy.deepcopy(model)
    batch = ethanol.train.gather(torch.arange(8))

    # plain baseline: task loss only, no EDG anywhere
    opt_b = torch.optim.Adam(base.parameters(), lr=1e-3)
    opt_b.zero_grad()
    pred = ethanol.predict(base.train(), batch, training=True)
    ethanol.loss(pred, batch).backward()
    opt_b.step()

    # the EDG code path with lambda = 0 (mapper even in the optimiser): identical, and the head never runs
    calls = []
    head.register_forward_hook(lambda *a: calls.append(1))
    opt_e = torch.optim.Adam(list(model.parameters()) + list(head.mapper.parameters()), lr=1e-3)
    mapper_before = copy.deepcopy(head.mapper.state_dict())
    out = train_step(ethanol, model.train(), batch, opt_e, lambda_ed=0.0, head=head)
    assert out["ed_loss"] == 0.0 and not calls
    for (n, a), (_, b) in zip(base.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), n
    for k, v in head.mapper.state_dict().items():
        assert torch.equal(v, mapper_before[k])


def test_gradients_never_reach_frozen_ed_predictor(ethanol):
    model, head = _setup()
    ref = copy.deepcopy(model)
    edp_before = copy.deepcopy(head.ed_predictor.state_dict())
    mapper_before = copy.deepcopy(head.mapper.state_dict())
    head.train()
    assert not head.ed_predictor.training  # stays in eval mode
    assert all(not p.requires_grad for p in head.ed_predictor.parameters())
    batch = ethanol.train.gather(torch.arange(8))
    opt = torch.optim.Adam(list(model.parameters()) + list(head.mapper.parameters()), lr=1e-3)
    out = train_step(ethanol, model.train(), batch, opt, lambda_ed=0.5, head=head)
    assert out["ed_loss"] > 0
    assert all(p.grad is None for p in head.ed_predictor.parameters())
    for k, v in head.ed_predictor.state_dict().items():
        assert torch.equal(v, edp_before[k])
    assert any(not torch.equal(v, mapper_before[k]) for k, v in head.mapper.state_dict().items())

    # and L_ED does reach the student: the same step with lambda = 0 ends elsewhere
    opt_r = torch.optim.Adam(ref.parameters(), lr=1e-3)
    train_step(ethanol, ref.train(), batch, opt_r, lambda_ed=0.0)
    assert any(not torch.equal(a, b) for a, b in zip(ref.parameters(), model.parameters()))


def test_edg_loss_formula_by_hand():
    torch.manual_seed(0)
    head = EDGHead(8, build_ed_predictor(None, seed=0))
    f_g = torch.randn(5, 8)
    target = torch.randn(5, 768) * 2
    task_loss = torch.tensor(0.7)
    total, l_ed = edg_objective(task_loss, 0.3, head, f_g, target)
    lin1, _, lin2 = head.ed_predictor
    x = head.mapper.weight @ f_g.T + head.mapper.bias[:, None]                 # M(F_G) (512, 5)
    h = torch.log1p(torch.exp(lin1.weight @ x + lin1.bias[:, None]))          # Softplus
    y = (lin2.weight @ h + lin2.bias[:, None]).T                              # EDP(.) (5, 768)
    d = (y - target).abs()
    smooth = torch.where(d < 1.0, 0.5 * d ** 2, d - 0.5).mean()
    assert torch.allclose(l_ed, smooth, atol=1e-5)
    assert torch.allclose(total, 0.7 + 0.3 * smooth, atol=1e-5)
    same, none = edg_objective(task_loss, 0.0)
    assert same is task_loss and none is None
    with pytest.raises(ValueError):
        edg_objective(task_loss, 0.1)


def test_teacher_targets_npz_layouts_and_errors(tmp_path):
    ids = ["rmd17:ethanol:5", "rmd17:ethanol:9", "rmd17:ethanol:2"]
    rng = np.random.default_rng(0)
    edp = rng.normal(size=(3, 768)).astype(np.float32)
    fs = rng.normal(size=(3, 512)).astype(np.float32)
    edp_model = build_ed_predictor(None, seed=0)

    np.savez(tmp_path / "arrays.npz", ids=np.array(ids), edp=edp)
    got = load_teacher_targets(str(tmp_path / "arrays.npz"), [ids[2], ids[0]])
    assert torch.equal(got, torch.from_numpy(edp[[2, 0]]))

    np.savez(tmp_path / "keyed.npz", **{i: v for i, v in zip(ids, edp)})
    assert torch.equal(load_teacher_targets(str(tmp_path / "keyed.npz"), ids), torch.from_numpy(edp))

    np.savez(tmp_path / "fs.npz", ids=np.array(ids), fs=fs)
    got = load_teacher_targets(str(tmp_path / "fs.npz"), ids, edp_model)
    with torch.no_grad():
        assert torch.allclose(got, edp_model(torch.from_numpy(fs)))
    with pytest.raises(DataSourceError, match="ED predictor"):
        load_teacher_targets(str(tmp_path / "fs.npz"), ids)
    with pytest.raises(DataSourceError, match="rmd17:ethanol:77"):
        load_teacher_targets(str(tmp_path / "arrays.npz"), ids + ["rmd17:ethanol:77"])


def test_teacher_targets_from_shards(tmp_path):
    from edg.edg_core.readers import open_source
    from edg.edg_core.shards import ShardWriter, encode_sample
    mols = list(open_source("embedded:qm9?limit=4").molecules())
    edp = np.random.default_rng(1).normal(size=(4, 768)).astype(np.float32)
    with ShardWriter(tmp_path / "sh", maxcount=3) as w:
        for m, e in zip(mols, edp):
            w.write(encode_sample(m, edp=e))
    got = load_teacher_targets(str(tmp_path / "sh"), [m.id for m in mols][::-1])
    assert torch.equal(got, torch.from_numpy(edp[::-1].copy()))


def test_coulomb_standin_is_invariant_to_rotation_and_permutation():
    from edg.edg_core.readers import open_source
    mols = list(open_source("embedded:qm9?limit=6").molecules())
    z = torch.cat([torch.as_tensor(m.z) for m in mols])
    pos = torch.cat([torch.as_tensor(m.pos, dtype=torch.float32) for m in mols])
    offsets = torch.tensor(np.concatenate([[0], np.cumsum([m.n_atoms for m in mols])]))
    a = coulomb_standin_features(z, pos, offsets)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
    perm = torch.cat([torch.randperm(m.n_atoms) + int(offsets[i]) for i, m in enumerate(mols)])
    b = coulomb_standin_features(z[perm], (pos @ q.T + 1.5)[perm], offsets)
    assert a.shape == (6, 512)
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a[0], a[1])


def test_teacher_targets_follow_the_ed_predictor_width(tmp_path):
    from edg.train.models.teacher import EDPredictor
    small = EDPredictor(512, 32, 64)  # a demo-size teacher predicts 64 features, not 768
    ids = ["a", "b"]
    edp = np.random.default_rng(2).normal(size=(2, 64)).astype(np.float32)
    np.savez(tmp_path / "t.npz", ids=np.array(ids), edp=edp)
    assert load_teacher_targets(str(tmp_path / "t.npz"), ids, small).shape == (2, 64)
    with pytest.raises(DataSourceError, match="expected 768"):
        load_teacher_targets(str(tmp_path / "t.npz"), ids)
    head = EDGHead(16, small)
    assert head.mapper.in_features == 16 and head.mapper.out_features == 512
    assert head(torch.randn(3, 16)).shape == (3, 64)

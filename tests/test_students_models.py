"""Every student: symmetry (energy invariant, forces equivariant), forces = -grad E, batching, interface."""
from __future__ import annotations

import pytest
import torch

from edg_core.config import ConfigError
from edg_core.readers import open_source
from train.students import STUDENTS, build_student, energy_and_forces

# small models keep the suite fast; every other hyper-parameter is the paper default
SMALL = {
    "schnet": dict(hidden_channels=16, num_filters=16, num_interactions=2, num_gaussians=12, cutoff=5.0),
    "visnet": dict(hidden_channels=16, num_layers=2, num_heads=2, num_rbf=8, cutoff=5.0),
    "dimenetpp": dict(hidden_channels=16, num_blocks=2, int_emb_size=8, basis_emb_size=4, out_emb_channels=16,
                      num_spherical=3, num_radial=4, cutoff=5.0, output_initializer="glorot_orthogonal"),
    "egnn": dict(hidden_channels=16, num_layers=2, cutoff=5.0),
    "egnn_coords": dict(hidden_channels=16, num_layers=2, cutoff=5.0, update_coords=True),
    "painn": dict(hidden_channels=16, num_layers=2, num_rbf=8, cutoff=5.0),
    "spherenet": dict(hidden_channels=16, num_layers=2, int_emb_size=8, basis_emb_size_dist=4,
                      basis_emb_size_angle=4, basis_emb_size_torsion=4, out_emb_channels=16, num_spherical=3,
                      num_radial=4, cutoff=5.0),
    "equiformer": dict(hidden_channels=16, num_layers=2, num_heads=2, num_rbf=8, cutoff=5.0),
}
CASES = [c for c in SMALL if c.split("_")[0] in STUDENTS]


def make(case, **extra):
    torch.manual_seed(0)
    return build_student(case.split("_")[0], **SMALL[case], **extra).double().eval()


def molecules(n=3):
    """Aspirin and ethanol frames from the embedded rMD17 sample, plus one QM9 molecule (different sizes)."""
    rmd = list(open_source("embedded:rmd17").molecules())
    picks = [next(m for m in rmd if m.n_atoms == 21), next(m for m in rmd if m.n_atoms == 9),
             list(open_source("embedded:qm9").molecules())[5]]
    return picks[:n]


def collate(mols):
    z = torch.cat([torch.as_tensor(m.z) for m in mols])
    pos = torch.cat([torch.as_tensor(m.pos, dtype=torch.float64) for m in mols])
    batch = torch.cat([torch.full((m.n_atoms,), i, dtype=torch.long) for i, m in enumerate(mols)])
    return z, pos, batch


def random_rotation(seed):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@pytest.mark.parametrize("case", CASES)
def test_interface_shapes(case):
    model = make(case)
    z, pos, batch = collate(molecules())
    feats, pred = model(z, pos, batch)
    assert feats.shape == (3, model.feature_dim) and pred.shape == (3, 1)
    assert torch.isfinite(feats).all() and torch.isfinite(pred).all()
    assert feats.abs().sum() > 0
    # multi-target head
    multi = make(case, out_dim=12)
    assert multi(z, pos, batch)[1].shape == (3, 12)


@pytest.mark.parametrize("case", CASES)
def test_energy_invariant_forces_equivariant(case):
    model = make(case)
    z, pos, batch = collate(molecules(2))
    rot, shift = random_rotation(1), torch.tensor([1.5, -2.0, 0.7], dtype=torch.float64)
    f0, e0, frc0 = energy_and_forces(model, z, pos, batch)
    f1, e1, frc1 = energy_and_forces(model, z, pos @ rot.T + shift, batch)
    assert torch.allclose(e1, e0, atol=1e-5, rtol=1e-7)
    assert torch.allclose(f1, f0, atol=1e-5, rtol=1e-7)
    assert torch.allclose(frc1, frc0 @ rot.T, atol=1e-5, rtol=1e-7)
    assert frc0.abs().max() > 1e-6  # forces are not trivially zero


@pytest.mark.parametrize("case", CASES)
def test_forces_are_minus_finite_difference_gradient(case):
    model = make(case)
    z, pos, batch = collate(molecules(2))
    _, _, forces = energy_and_forces(model, z, pos, batch)
    g = torch.Generator().manual_seed(3)
    h = 1e-5
    for _ in range(3):
        u = torch.randn(pos.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            e_plus = model(z, pos + h * u, batch)[1].sum()
            e_minus = model(z, pos - h * u, batch)[1].sum()
        numeric = (e_plus - e_minus) / (2 * h)
        assert torch.allclose(-(forces * u).sum(), numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_batch_equals_single_molecules(case):
    model = make(case)
    mols = molecules()
    z, pos, batch = collate(mols)
    feats, energy, forces = energy_and_forces(model, z, pos, batch)
    start = 0
    for b, m in enumerate(mols):
        zi, pi, bi = collate([m])
        f1, e1, frc1 = energy_and_forces(model, zi, pi, bi)
        assert torch.allclose(f1[0], feats[b], atol=1e-8)
        assert torch.allclose(e1[0], energy[b], atol=1e-8)
        assert torch.allclose(frc1, forces[start:start + m.n_atoms], atol=1e-8)
        start += m.n_atoms


@pytest.mark.parametrize("case", CASES)
def test_force_loss_trains_parameters(case):
    model = make(case).train()
    z, pos, batch = collate(molecules(2))
    feats, energy, forces = energy_and_forces(model, z, pos, batch)
    assert forces.requires_grad  # create_graph in training mode
    loss = forces.pow(2).mean() + energy.pow(2).mean() + feats.pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_build_student_rejects_bad_names_and_keys():
    with pytest.raises(ValueError, match="unknown student"):
        build_student("nope")
    with pytest.raises(ConfigError, match="hiden"):
        build_student("schnet", hiden_channels=3)


def test_schnet_paper_defaults():
    model = build_student("schnet")
    assert model.feature_dim == 128
    assert len(model.net.interactions) == 6 and model.config.cutoff == 10.0
    with pytest.raises(ValueError, match="pos"):
        model(torch.tensor([6, 1]), torch.zeros(3, 3))


def test_energy_and_forces_under_no_grad_in_eval():
    model = make("schnet")
    z, pos, batch = collate(molecules(2))
    _, e_ref, f_ref = energy_and_forces(model, z, pos, batch)
    with torch.no_grad():
        _, energy, forces = energy_and_forces(model, z, pos, batch)
    assert not forces.requires_grad  # eval: no graph kept for the forces
    assert torch.allclose(energy, e_ref) and torch.allclose(forces, f_ref)
    with pytest.raises(ValueError, match="out_dim=1"):
        energy_and_forces(make("schnet", out_dim=2), z, pos, batch)

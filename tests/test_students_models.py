"""Every student: symmetry (energy invariant, forces equivariant), forces = -grad E, batching, interface."""
from __future__ import annotations

import pytest
import torch
from edg.edg_core.config import ConfigError
from edg.edg_core.readers import open_source
from edg.train.students import STUDENTS, build_student, energy_and_forces
from edg.train.students.base import pool

# small models keep the suite fast; every other hyper-parameter is the paper default
SMALL = {
    "schnet": dict(hidden_channels=16, num_filters=16, num_interactions=2, num_gaussians=12, cutoff=5.0),
    "visnet": dict(hidden_channels=16, num_layers=2, num_heads=2, num_rbf=8, cutoff=5.0),
    "dimenetpp": dict(hidden_channels=16, num_blocks=2, int_emb_size=8, basis_emb_size=4, out_emb_channels=16,
                      num_spherical=3, num_radial=4, cutoff=5.0, output_initializer="glorot_orthogonal"),
    "egnn": dict(hidden_channels=16, num_layers=2),
    "egnn_coords": dict(hidden_channels=16, num_layers=2, update_coords=True),
    "egnn_radius": dict(hidden_channels=16, num_layers=2, cutoff=5.0, envelope=True),
    "painn": dict(hidden_channels=16, num_layers=2, num_rbf=8, cutoff=5.0),
    "spherenet": dict(hidden_channels=16, num_layers=2, int_emb_size=8, basis_emb_size_dist=4,
                      basis_emb_size_angle=4, basis_emb_size_torsion=4, out_emb_channels=16, num_spherical=3,
                      num_radial=4, cutoff=5.0),
    "spherenet-edg": dict(hidden_channels=16, num_layers=2, int_emb_size=8, basis_emb_size_dist=4,
                          basis_emb_size_angle=4, basis_emb_size_torsion=4, out_emb_channels=16, num_spherical=3,
                          num_radial=4, cutoff=5.0),
    "spherenet-edg_blocks": dict(hidden_channels=16, num_layers=2, int_emb_size=8, basis_emb_size_dist=4,
                                 basis_emb_size_angle=4, basis_emb_size_torsion=4, out_emb_channels=16,
                                 num_spherical=3, num_radial=4, cutoff=5.0, readout="blocks"),
    "equiformer": dict(irreps_node_embedding="16x0e+8x1e+4x2e", num_layers=2, irreps_feature="24x0e",
                       irreps_head="8x0e+4x1e+2x2e", num_heads=2, irreps_mlp_mid="16x0e+8x1e+4x2e", num_basis=8,
                       fc_neurons=(8, 8), cutoff=5.0),
    "equiformer-edg": dict(hidden_channels=16, num_layers=2, num_heads=2, num_rbf=8, cutoff=5.0, feature_channels=24),
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
    assert model.feature_dim == 128 and model.config.readout == "mean"
    assert len(model.net.interactions) == 6 and model.config.cutoff == 10.0
    with pytest.raises(ValueError, match="pos"):
        model(torch.tensor([6, 1]), torch.zeros(3, 3))


def test_schnet_predicts_from_the_mean_pooled_features():
    # Geom3D: F_G = mean_i Lin2(ssp(Lin1(h_i))) and pred = Linear(F_G), so EDG distils what the prediction reads
    model = make("schnet")
    z, pos, batch = collate(molecules())
    feats, pred = model(z, pos, batch)
    assert torch.allclose(pred, model.head(feats), atol=1e-12)
    h = model.net.embedding(z)
    edge_index, w = model.net.interaction_graph(pos, batch)
    for block in model.net.interactions:
        h = h + block(h, edge_index, w, model.net.distance_expansion(w))
    u = model.net.lin2(model.net.act(model.net.lin1(h)))
    assert torch.allclose(feats[0], u[batch == 0].mean(dim=0), atol=1e-10)


@pytest.mark.parametrize("max_neighbors", [32, 3])
def test_schnet_filters_once_per_pair_equal_pygs_interaction_blocks(max_neighbors):
    """Sharing W(d_ij) between j -> i and i -> j gives PyG's CFConv energies and forces, also when a neighbour
    cap leaves some pairs with one direction only."""
    model = make("schnet", max_num_neighbors=max_neighbors)
    z, pos, batch = collate(molecules())
    edge_index, _ = model.net.interaction_graph(pos, batch)
    edges = set(map(tuple, edge_index.T.tolist()))
    one_way = sum((i, j) not in edges for j, i in edges)
    assert (one_way > 0) == (max_neighbors == 3)

    def pyg_energy(p):
        h = model.net.embedding(z)
        ei, w = model.net.interaction_graph(p, batch)
        for block in model.net.interactions:
            h = h + block(h, ei, w, model.net.distance_expansion(w))
        return model.head(pool(model.net.lin2(model.net.act(model.net.lin1(h))), batch, 3, "mean"))[:, 0]

    p_ref = pos.clone().requires_grad_(True)
    e_ref = pyg_energy(p_ref)
    (f_ref,) = torch.autograd.grad(-e_ref.sum(), p_ref)
    _, energy, forces = energy_and_forces(model, z, pos, batch)
    assert torch.allclose(energy, e_ref, atol=1e-12) and torch.allclose(forces, f_ref, atol=1e-12)


def test_spherenet_predicts_from_its_features_as_the_paper_ran_it():
    z, pos, batch = collate(molecules())
    model = make("spherenet")  # Geom3D's extract_representation=True + graph_pred_linear
    feats, pred = model(z, pos, batch)
    assert torch.allclose(pred, model.graph_pred_linear(feats), atol=1e-12)
    model = make("spherenet-edg")  # readout "features": the same, in the project's variant
    feats, pred = model(z, pos, batch)
    assert model.config.readout == "features" and all(v.lin is None for v in model.update_vs)
    assert torch.allclose(pred, model.head(feats), atol=1e-12)
    with pytest.raises(ValueError, match="readout"):
        build_student("spherenet-edg", readout="mean")


def test_visnet_has_the_papers_rmd17_size():
    model = build_student("visnet")
    c = model.config
    assert (c.hidden_channels, c.num_layers, c.lmax, c.num_heads, c.num_rbf, c.cutoff) == (256, 9, 2, 8, 32, 5.0)
    n = sum(p.numel() for p in model.parameters())
    assert 9.7e6 < n < 9.9e6, n  # about 9.8 M, as the paper's ViSNet (PyG's defaults give about 1.7 M)
    assert model.feature_dim == 256


def test_egnn_fully_connected_mean_pooling_by_default():
    model = make("egnn")
    assert model.config.cutoff is None and model.config.feature_pool == "mean"
    # two atoms 30 Å apart still interact on the fully connected graph
    z = torch.tensor([6, 8])
    near = torch.tensor([[0.0, 0, 0], [1.2, 0, 0]], dtype=torch.float64)
    far = torch.tensor([[0.0, 0, 0], [30.0, 0, 0]], dtype=torch.float64)
    far2 = torch.tensor([[0.0, 0, 0], [40.0, 0, 0]], dtype=torch.float64)
    with torch.no_grad():
        e = [float(model(z, p)[1][0]) for p in (near, far, far2)]
    assert abs(e[1] - e[2]) > 1e-9 and abs(e[0] - e[1]) > 1e-9
    # mean pooling: a molecule and its duplicate (same atoms twice, far apart, as two molecules) agree
    feats, _ = model(z, near)
    two = model(torch.cat([z, z]), torch.cat([near, near + 50.0]), torch.tensor([0, 0, 1, 1]))[0]
    assert torch.allclose(two[0], feats[0]) and torch.allclose(two[1], feats[0])
    with pytest.raises(ValueError, match="envelope"):
        build_student("egnn", envelope=True)


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

"""Equiformer students (``equiformer``: Geom3D's; ``equiformer-edg``: the project's variant): equivariant layer norms
and attention, features and dropout, the plain softmax's jump at the cutoff (Geom3D) and the continuity of the
cutoff-weighted one (edg). Symmetry, forces and batching: tests/test_students_models.py; sizes pinned to the official
definition: tests/test_students_geom3d.py."""
from __future__ import annotations

import pytest
import torch
from edg.train.students import build_student, config_for
from test_students_models import random_rotation

e3nn = pytest.importorskip("e3nn", reason="the Equiformer student needs e3nn (pip install e3nn)")
from e3nn import o3  # noqa: E402
from edg.train.students.equiformer import EquivariantLayerNorm, GraphAttention, node_irreps  # noqa: E402
from edg.train.students.equiformer_geom3d import EquivariantLayerNormV2  # noqa: E402
from edg.train.students.equiformer_geom3d import GraphAttention as Geom3DAttention  # noqa: E402

SMALL = dict(hidden_channels=8, num_layers=2, num_heads=2, alpha_channels=4, num_rbf=8, radial_hidden=8, cutoff=5.0,
             feature_channels=12)
GEOM3D_SMALL = dict(irreps_node_embedding="8x0e+4x1e+2x2e", num_layers=2, irreps_feature="12x0e",
                    irreps_head="4x0e+2x1e+1x2e", num_heads=2, irreps_mlp_mid="16x0e+8x1e+4x2e", num_basis=8,
                    fc_neurons=(8, 8), cutoff=5.0)
VARIANTS = {"equiformer": GEOM3D_SMALL, "equiformer-edg": SMALL}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_student("equiformer-edg", **SMALL).double().eval()


def test_layer_norm_is_equivariant_and_normalises():
    irreps = o3.Irreps("6x0e+4x1e+2x2e")
    norm = EquivariantLayerNorm(irreps).double()
    g = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randn(5, irreps.dim, generator=g, dtype=torch.float64) + 1.0
    rot = random_rotation(2)
    d = irreps.D_from_matrix(rot)
    y = norm(x)
    assert torch.allclose(norm(x @ d.T), y @ d.T, atol=1e-6)
    scalars = y[:, :6]
    assert torch.allclose(scalars.mean(dim=1), torch.zeros(5, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(scalars.pow(2).mean(dim=1), torch.ones(5, dtype=torch.float64), atol=1e-3)
    vectors = y[:, 6:18].reshape(5, 4, 3)
    assert torch.allclose(vectors.pow(2).mean(dim=(1, 2)), torch.ones(5, dtype=torch.float64), atol=1e-3)


def test_attention_block_is_equivariant_in_every_degree():
    torch.manual_seed(1)
    c = config_for("equiformer-edg", **SMALL)
    irreps, irreps_sh = o3.Irreps(node_irreps(8, 2)), o3.Irreps("1x0e+1x1e+1x2e")
    attn = GraphAttention(irreps, irreps_sh, c).double().eval()  # eval: no attention dropout
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, irreps.dim, generator=g, dtype=torch.float64)
    vec = torch.randn(6, 3, generator=g, dtype=torch.float64)
    edge_index = torch.tensor([[1, 2, 3, 0, 2, 0], [0, 0, 0, 1, 1, 3]])
    rbf = torch.rand(6, c.num_rbf, generator=g, dtype=torch.float64)
    envelope = torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    sh = o3.SphericalHarmonics(irreps_sh, normalize=True, normalization="component")
    rot = random_rotation(4)
    d = irreps.D_from_matrix(rot)
    out = attn(x, edge_index, sh(vec), rbf, envelope)
    out_rot = attn(x @ d.T, edge_index, sh(vec @ rot.T), rbf, envelope)
    assert torch.allclose(out_rot, out @ d.T, atol=1e-6)  # e3nn builds D in float32
    assert out[:, 8:].abs().max() > 1e-3  # the l > 0 channels carry signal
    assert out[2].abs().max() == 0  # node 2 has no incoming edge


def test_energy_is_continuous_when_an_atom_crosses_the_cutoff(model):
    # atom 2 sits on the cutoff sphere of atom 0 and beyond the cutoff of atom 1
    z = torch.tensor([6, 8, 1])
    energies = []
    for x in (4.999999, 5.000001, 5.3):
        pos = torch.tensor([[0.0, 0, 0], [-1.2, 0, 0], [x, 0, 0]], dtype=torch.float64)
        with torch.no_grad():
            energies.append(float(model(z, pos)[1][0]))
    assert abs(energies[0] - energies[1]) < 1e-6  # no jump at the cutoff (envelope-weighted softmax)
    assert abs(energies[2] - energies[1]) < 1e-12  # beyond: the atom is invisible to atom 0
    close = torch.tensor([[0.0, 0, 0], [-1.2, 0, 0], [2.0, 0, 0]], dtype=torch.float64)
    with torch.no_grad():
        assert abs(float(model(z, close)[1][0]) - energies[1]) > 1e-6  # and it matters inside


@pytest.mark.parametrize("name", list(VARIANTS))
def test_features_are_the_last_blocks_scalars_and_dropout_acts_in_training_only(name):
    torch.manual_seed(0)
    m = build_student(name, **{**VARIANTS[name], "alpha_drop": 0.5}).double()
    last = m.blocks[-1].ffn.lin_out if name == "equiformer-edg" else m.blocks[-1].ffn.fctp_2
    assert m.feature_dim == 12 and str(last.irreps_out) == "12x0e"
    z = torch.tensor([6, 8, 1, 1])
    pos = torch.tensor([[0.0, 0, 0], [1.2, 0, 0], [-0.5, 0.9, 0], [-0.5, -0.9, 0.1]], dtype=torch.float64)
    seen = {}
    m.norm.register_forward_hook(lambda mod, inp, out: seen.update(scalars=out))
    m.eval()
    with torch.no_grad():
        feats, pred = m(z, pos)
        scale = 1.0 / m.config.avg_num_nodes ** 0.5  # Equiformer's ScaledScatter
        assert feats.shape == (1, 12)
        assert torch.allclose(feats[0], seen["scalars"].sum(0) * scale)
        assert torch.allclose(pred[0], m.head(seen["scalars"]).sum(0) * scale)
        assert torch.equal(m(z, pos)[1], pred)  # eval: deterministic
        m.train()
        outs = {float(m(z, pos)[1][0]) for _ in range(4)}
    assert len(outs) > 1  # training: attention dropout makes repeated calls differ


def test_geom3d_layer_norm_centres_scalars_only_and_is_equivariant():
    irreps = o3.Irreps("6x0e+4x1e+2x2e")
    norm = EquivariantLayerNormV2(irreps).double()
    g = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randn(5, irreps.dim, generator=g, dtype=torch.float64) + 1.0
    d = irreps.D_from_matrix(random_rotation(2))
    y = norm(x)
    assert torch.allclose(norm(x @ d.T), y @ d.T, atol=1e-6)
    scalars = y[:, :6]
    assert torch.allclose(scalars.mean(dim=1), torch.zeros(5, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(scalars.pow(2).mean(dim=1), torch.ones(5, dtype=torch.float64), atol=1e-3)
    # l = 1: not centred (Geom3D's V2 centres scalars only), scaled to unit mean square component
    v_in, v_out = x[:, 6:18].reshape(5, 4, 3), y[:, 6:18].reshape(5, 4, 3)
    scale = (v_in.pow(2).mean(dim=(1, 2), keepdim=True) + 1e-5).pow(-0.5)
    assert torch.allclose(v_out, v_in * scale, atol=1e-12)


def test_geom3d_attention_block_is_equivariant_in_every_degree():
    torch.manual_seed(1)
    irreps, irreps_sh = o3.Irreps("8x0e+4x1e+2x2e"), o3.Irreps("1x0e+1x1e+1x2e")
    attn = Geom3DAttention(irreps, irreps_sh, "4x0e+2x1e+1x2e", 2, [8, 8, 8], 0.0).double().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, irreps.dim, generator=g, dtype=torch.float64)
    vec = torch.randn(6, 3, generator=g, dtype=torch.float64)
    src, dst = torch.tensor([1, 2, 3, 0, 2, 0]), torch.tensor([0, 0, 0, 1, 1, 3])
    rbf = torch.rand(6, 8, generator=g, dtype=torch.float64)
    sh = o3.SphericalHarmonics(irreps_sh, normalize=True, normalization="component")
    rot = random_rotation(4)
    d = irreps.D_from_matrix(rot)
    out = attn(x, src, dst, sh(vec), rbf)
    assert torch.allclose(attn(x @ d.T, src, dst, sh(vec @ rot.T), rbf), out @ d.T, atol=1e-6)
    assert out[:, 8:].abs().max() > 1e-3  # the l > 0 channels carry signal
    # node 2 has no incoming edge: only the projection's bias (its scalars) reaches it
    assert out[2, 8:].abs().max() == 0


def test_geom3d_softmax_jumps_at_the_cutoff_and_the_edg_variant_does_not():
    """Geom3D's attention is a plain softmax (and its degree embedding has no envelope), so an atom crossing the
    cutoff changes the energy by a finite step; the project's cutoff-weighted softmax is continuous."""
    z = torch.tensor([6, 8, 1])
    steps = {}
    for name in VARIANTS:
        torch.manual_seed(0)
        m = build_student(name, **VARIANTS[name]).double().eval()
        e = []
        for x in (4.999999, 5.000001):
            pos = torch.tensor([[0.0, 0, 0], [-1.2, 0, 0], [x, 0, 0]], dtype=torch.float64)
            with torch.no_grad():
                e.append(float(m(z, pos)[1][0]))
        steps[name] = abs(e[0] - e[1])
    assert steps["equiformer"] > 1e-4 and steps["equiformer-edg"] < 1e-6, steps


def test_defaults_and_errors():
    c = config_for("equiformer-edg")
    assert node_irreps(c.hidden_channels, c.lmax) == "128x0e+64x1e+32x2e"
    assert (c.num_layers, c.num_heads, c.num_rbf, c.cutoff) == (6, 4, 128, 5.0)
    assert (c.feature_channels, c.alpha_drop) == (512, 0.2)  # the authors' irreps_feature 512x0e, alpha_drop 0.2
    with pytest.raises(ValueError, match="heads"):
        build_student("equiformer-edg", **{**SMALL, "num_heads": 3})
    with pytest.raises(ValueError, match="atomic numbers"):
        build_student("equiformer-edg", **SMALL)(torch.tensor([6, 120]), torch.zeros(2, 3))
    g = config_for("equiformer")
    assert (g.irreps_node_embedding, g.irreps_feature, g.irreps_head, g.irreps_mlp_mid) == (
        "128x0e+64x1e+32x2e", "512x0e", "32x0e+16x1e+8x2e", "384x0e+192x1e+96x2e")
    assert (g.num_layers, g.num_heads, g.num_basis, tuple(g.fc_neurons), g.cutoff, g.alpha_drop, g.max_z) == (
        6, 4, 128, (64, 64), 5.0, 0.2, 119)
    with pytest.raises(ValueError, match="atomic numbers"):  # their node_class 119
        build_student("equiformer", **GEOM3D_SMALL)(torch.tensor([6, 119]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="scalars"):
        build_student("equiformer", **{**GEOM3D_SMALL, "irreps_feature": "4x0e+2x1e"})

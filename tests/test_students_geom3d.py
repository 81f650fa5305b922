"""The Geom3D-exact students (``spherenet``, ``equiformer``): sizes, names and bases pinned to the official definitions.

The pinned numbers were read off the official code, instantiated outside this repository with the settings the
EDG authors ran (HongxinXiang/EDG at 3293258b9806a9f046c0b1af3cdc837a0866e2e2: ``EDG/Geom3D/models/SphereNet.py``
and ``Equiformer/equiformer_type_0.py``, built as ``EDG/finetune_QM9_EDG.py`` builds them with
``EDG/config_distillation.py``'s defaults and ``--emb_dim 128``; the same files as chao1224/Geom3D at e44b11d).
The same run loaded the official weights into these students and found the same outputs (docs/students.md).
"""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from edg.train.students import build_student
from edg.train.students.basis import bessel_roots
from scipy.special import sph_harm_y, spherical_jn
from test_students_models import collate, molecules

# ---------------------------------------------------------------- SphereNet
GEOM3D_SPHERENET_PARAMETERS = 1_890_118
"""``SphereNet(hidden_channels=128, out_channels=1, cutoff=5, num_layers=4, int_emb_size=64, basis_emb_size_*=8,
out_emb_channels=256, num_spherical=3, num_radial=6, envelope_exponent=5, num_before_skip=1, num_after_skip=2,
num_output_layers=3)``: its ``sum(p.numel() for p in model.parameters())``."""
UNUSED_OUTPUT_LAYERS = 5 * 256  # init_v.lin and update_vs.{0..3}.lin (256 -> 1, no bias): never called with
#                                 extract_representation=True (no gradient reaches them; checked on the official model)
GRAPH_PRED_LINEAR = 256  # nn.Linear(256, 1, bias=False)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_spherenet_has_the_official_parameter_count():
    model = build_student("spherenet")
    assert n_params(model) == GEOM3D_SPHERENET_PARAMETERS - UNUSED_OUTPUT_LAYERS + GRAPH_PRED_LINEAR == 1_889_094


def test_spherenet_parameters_have_geom3ds_names_and_shapes():
    sd = {k: tuple(v.shape) for k, v in build_student("spherenet").state_dict().items()}
    assert sd["emb.dist_emb.freq"] == (6,)
    assert {k: v for k, v in sd.items() if k.startswith("init_e.")} == {
        "init_e.emb.weight": (95, 128), "init_e.lin_rbf_0.weight": (128, 6), "init_e.lin_rbf_0.bias": (128,),
        "init_e.lin.weight": (128, 384), "init_e.lin.bias": (128,), "init_e.lin_rbf_1.weight": (128, 6)}
    block = {k[len("update_es.0."):]: v for k, v in sd.items() if k.startswith("update_es.0.")}
    expected = {"lin_rbf1.weight": (8, 6), "lin_rbf2.weight": (128, 8), "lin_sbf1.weight": (8, 18),
                "lin_sbf2.weight": (64, 8), "lin_t1.weight": (8, 54), "lin_t2.weight": (64, 8),
                "lin_rbf.weight": (128, 6), "lin_kj.weight": (128, 128), "lin_kj.bias": (128,),
                "lin_ji.weight": (128, 128), "lin_ji.bias": (128,), "lin_down.weight": (64, 128),
                "lin_up.weight": (128, 64), "lin.weight": (128, 128), "lin.bias": (128,)}
    for name, count in (("layers_before_skip", 1), ("layers_after_skip", 2)):
        for k in range(count):
            for lin in ("lin1", "lin2"):
                expected |= {f"{name}.{k}.{lin}.weight": (128, 128), f"{name}.{k}.{lin}.bias": (128,)}
    assert block == expected
    for v in ["init_v", *(f"update_vs.{k}" for k in range(4))]:
        assert {k[len(v) + 1:]: s for k, s in sd.items() if k.startswith(v + ".")} == {
            "lin_up.weight": (256, 128), "lin_up.bias": (256,), **{f"lins.{k}.{w}": (256, 256) if w == "weight"
                                                                   else (256,) for k in range(3)
                                                                   for w in ("weight", "bias")}}
    assert sd["graph_pred_linear.weight"] == (1, 256)
    assert {k.split(".")[0] for k in sd} == {"emb", "init_e", "init_v", "update_es", "update_vs",
                                             "graph_pred_linear"}


@pytest.mark.parametrize("out_dim", [1, 12])
def test_spherenet_output_shapes(out_dim):
    model = build_student("spherenet", out_dim=out_dim)
    z, pos, batch = collate(molecules(3))
    feats, pred = model(z, pos.float(), batch)
    assert feats.shape == (3, 256) and pred.shape == (3, out_dim) and model.feature_dim == 256


def _radial(l_: int, n: int, x: np.ndarray) -> np.ndarray:
    """N_ln j_l(z_ln x), x = d / cutoff (no envelope)."""
    root = bessel_roots(3, 6)[l_][n]
    return math.sqrt(2.0) / abs(spherical_jn(l_ + 1, root)) * spherical_jn(l_, root * x)


def _real_y(l_: int, m: int, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Geom3D's real harmonics: sqrt(2) Re / Im of the complex Y_l^|m| with the Condon-Shortley phase (scipy)."""
    y = sph_harm_y(l_, abs(m), theta, phi)
    return y.real if m == 0 else math.sqrt(2.0) * (y.real if m > 0 else y.imag)


def _geometry(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dist = 0.7 + 4.2 * torch.rand(7, generator=g, dtype=torch.float64)
    theta = math.pi * torch.rand(11, generator=g, dtype=torch.float64)
    phi = 2 * math.pi * torch.rand(11, generator=g, dtype=torch.float64)
    return dist, theta, phi, torch.randint(0, 7, (11,), generator=g)


def test_spherenet_angle_basis_has_no_envelope():
    emb = build_student("spherenet").emb.double()
    dist, theta, _, idx = _geometry()
    sbf = emb.angle_emb(dist, theta, idx).reshape(11, 3, 6).numpy()
    x, t = (dist[idx] / 5.0).numpy(), theta.numpy()
    for l_ in range(3):
        for n in range(6):
            expected = _radial(l_, n, x) * _real_y(l_, 0, t, np.zeros_like(t))
            np.testing.assert_allclose(sbf[:, l_, n], expected, rtol=1e-5, atol=1e-6)


def test_spherenet_torsion_basis_pairs_as_geom3d():
    """Geom3D stacks the 9 harmonics f = (l, m) in the order below and views them as 3 x 3 against the
    3 x num_radial radial stack, so harmonic f meets the radial functions of degree f mod 3."""
    order = [(0, 0), (1, 0), (1, 1), (1, -1), (2, 0), (2, 1), (2, 2), (2, -2), (2, -1)]
    paired = [0, 1, 2, 0, 1, 2, 0, 1, 2]
    emb = build_student("spherenet").emb.double()
    dist, theta, phi, idx = _geometry(1)
    tbf = emb.torsion_emb(dist, theta, phi, idx).reshape(11, 9, 6).numpy()
    x, t, p = (dist[idx] / 5.0).numpy(), theta.numpy(), phi.numpy()
    for f, ((l_, m), lr) in enumerate(zip(order, paired)):
        for n in range(6):
            expected = _radial(lr, n, x) * _real_y(l_, m, t, p)
            np.testing.assert_allclose(tbf[:, f, n], expected, rtol=1e-5, atol=1e-6, err_msg=f"f={f} n={n}")
    # the project's variant pairs by degree and carries the envelope: a different basis
    edg = build_student("spherenet-edg").tbf.double()(dist, theta, phi, idx).reshape(11, 9, 6).numpy()
    assert np.abs(edg[:, 3] - tbf[:, 3]).max() > 1e-2


def test_spherenet_initialisation_is_geom3ds():
    torch.manual_seed(0)
    model = build_student("spherenet")
    assert torch.allclose(model.emb.dist_emb.freq, torch.arange(1, 7) * math.pi)
    emb = model.init_e.emb.weight
    assert emb.abs().max() <= math.sqrt(3) and 0.95 < emb.std() < 1.05  # U(-sqrt 3, sqrt 3), not N(0, 1)
    block = model.update_es[0]
    for lin in (block.lin_kj, block.lin_ji, block.lin, block.layers_before_skip[0].lin1):
        assert torch.count_nonzero(lin.bias) == 0
    # glorot-orthogonal with scale 2: Var(W) = 2 / (fan_in + fan_out), rows orthogonal
    w = block.lin_kj.weight.detach().double()
    assert w.var().item() == pytest.approx(2 / 256, rel=1e-6)
    gram = w @ w.T
    assert torch.allclose(gram - torch.diag(torch.diagonal(gram)), torch.zeros_like(gram), atol=1e-6)


# ---------------------------------------------------------------- Equiformer
needs_e3nn = pytest.mark.skipif(importlib.util.find_spec("e3nn") is None,
                                reason="the Equiformer students need e3nn (pip install e3nn)")

GEOM3D_EQUIFORMER_PARAMETERS = 3_023_107
"""``EquiformerEnergy(irreps_in='5x0e', max_radius=5, node_class=119, number_of_basis=128, ...)`` with the keyword
arguments of ``EDG/finetune_QM9_EDG.py`` (``Equiformer_hyperparameter 0``): ``sum(p.numel() for p in
model.parameters())``; every one of them is reached by the gradient of (F_G, pred)."""


@pytest.fixture(scope="module")
def equiformer():
    if importlib.util.find_spec("e3nn") is None:
        pytest.skip("the Equiformer students need e3nn (pip install e3nn)")
    torch.manual_seed(0)
    return build_student("equiformer")


def test_equiformer_has_the_official_parameter_count(equiformer):
    assert n_params(equiformer) == GEOM3D_EQUIFORMER_PARAMETERS
    groups: dict[str, int] = {}
    for k, p in equiformer.named_parameters():
        key = k.split(".")[0] if not k.startswith("blocks.") else "blocks." + k.split(".")[2]
        groups[key] = groups.get(key, 0) + p.numel()
    assert groups == {"atom_embed": 15360, "rbf": 258, "edge_deg_embed": 139968, "blocks.norm_1": 2112,
                      "blocks.ga": 1400448, "blocks.norm_2": 2112, "blocks.ffn": 1132608, "blocks.ffn_shortcut": 66048,
                      "norm": 1024, "head": 263169}  # the official model's, module by module


def test_equiformer_parameters_have_geom3ds_names_and_shapes(equiformer):
    sd = {k: tuple(v.shape) for k, v in equiformer.named_parameters()}
    radial = {"offset": (960,), "net.0.weight": (64, 128), "net.0.bias": (64,), "net.1.weight": (64,),
              "net.1.bias": (64,), "net.3.weight": (64, 64), "net.3.bias": (64,), "net.4.weight": (64,),
              "net.4.bias": (64,), "net.6.weight": (960, 64)}
    expected = {"atom_embed.atom_type_lin.tp.weight": (15232,), "atom_embed.atom_type_lin.bias.0": (128,),
                "rbf.mean": (1, 128), "rbf.std": (1, 128), "rbf.weight": (1, 1), "rbf.bias": (1, 1),
                "edge_deg_embed.exp.tp.weight": (128,), "edge_deg_embed.exp.bias.0": (128,),
                **{f"edge_deg_embed.rad.{k}": v for k, v in radial.items()},
                "edge_deg_embed.proj.tp.weight": (64512,), "edge_deg_embed.proj.bias.0": (128,),
                "blocks.0.norm_1.affine_weight": (224,), "blocks.0.norm_1.affine_bias": (128,),
                "blocks.0.ga.alpha_dot": (1, 4, 32), "blocks.0.ga.merge_src.tp.weight": (21504,),
                "blocks.0.ga.merge_src.bias.0": (128,), "blocks.0.ga.merge_dst.tp.weight": (21504,),
                **{f"blocks.0.ga.sep.dtp_rad.{k}": v for k, v in radial.items()},
                "blocks.0.ga.sep.lin.tp.weight": (93184,), "blocks.0.ga.sep.lin.bias.0": (256,),
                "blocks.0.ga.proj.tp.weight": (21504,), "blocks.0.ga.proj.bias.0": (128,),
                "blocks.0.norm_2.affine_weight": (224,), "blocks.0.norm_2.affine_bias": (128,),
                "blocks.0.ffn.fctp_1.tp.weight": (101376,), "blocks.0.ffn.fctp_1.bias.0": (672,),
                "blocks.0.ffn.fctp_2.tp.weight": (64512,), "blocks.0.ffn.fctp_2.bias.0": (128,),
                "norm.affine_weight": (512,), "norm.affine_bias": (512,), "head.0.tp.weight": (262144,),
                "head.0.bias.0": (512,), "head.2.tp.weight": (512,), "head.2.bias.0": (1,)}
    assert {k: v for k, v in sd.items() if not k.startswith("blocks.") or k.startswith("blocks.0.")} == expected
    assert sd["blocks.5.ffn_shortcut.tp.weight"] == (65536,) and sd["blocks.5.ffn.fctp_2.bias.0"] == (512,)
    assert not any(k.startswith("blocks.4.ffn_shortcut") for k in sd)


@needs_e3nn
def test_equiformer_depthwise_paths_are_geom3ds():
    """128x0e+64x1e+32x2e (x) 1x0e+1x1e+1x2e, paths up to l = 2, one output per path sorted by degree:
    0e from (0e,0e) (1e,1e) (2e,2e); 1e from (0e,1e) (1e,0e) (1e,1e) (1e,2e) (2e,1e) (2e,2e); 2e likewise."""
    from edg.train.students.equiformer_geom3d import depthwise_instructions
    irreps, paths = depthwise_instructions("128x0e+64x1e+32x2e", "1x0e+1x1e+1x2e", "128x0e+64x1e+32x2e")
    assert str(irreps) == ("128x0e+64x0e+32x0e+128x1e+64x1e+64x1e+64x1e+32x1e+32x1e"
                           "+128x2e+64x2e+64x2e+32x2e+32x2e+32x2e")
    assert str(irreps.simplify()) == "224x0e+384x1e+352x2e" and sum(m for m, _ in irreps) == 960
    assert paths[:4] == [(0, 0, 0, "uvu", True), (0, 1, 3, "uvu", True), (0, 2, 9, "uvu", True),
                         (1, 0, 4, "uvu", True)]


def test_equiformer_output_shapes(equiformer):
    z, pos, batch = collate(molecules(3))
    with torch.no_grad():
        feats, pred = equiformer.eval()(z, pos.float(), batch)
    assert feats.shape == (3, 512) and pred.shape == (3, 1) and equiformer.feature_dim == 512
    small = build_student("equiformer", irreps_node_embedding="8x0e+4x1e+2x2e", num_layers=1, irreps_feature="12x0e",
                          irreps_head="4x0e+2x1e+1x2e", num_heads=2, irreps_mlp_mid="8x0e+4x1e+2x2e", num_basis=8,
                          fc_neurons=(8,), out_dim=12)
    with torch.no_grad():
        feats, pred = small.eval()(z, pos.float(), batch)
    assert feats.shape == (3, 12) and pred.shape == (3, 12)


def test_equiformer_initialisation_is_geom3ds(equiformer):
    m = equiformer
    w = m.atom_embed.atom_type_lin.tp.weight
    assert abs(w.std().item() - 1.0) < 0.05  # N(0, 1): N(0, 1/119) times sqrt(119)
    w = m.blocks[0].ga.merge_src.tp.weight[:128 * 128]  # the 0e -> 0e path: fan-in 128
    assert abs(w.std().item() * 128 ** 0.5 - 1.0) < 0.05
    assert all(torch.count_nonzero(b) == 0 for b in m.blocks[0].ffn.fctp_1.bias)
    assert float(m.rbf.mean.min()) >= 0 and float(m.rbf.mean.max()) <= 1
    assert float(m.rbf.std.min()) >= 1 / 128 and float(m.rbf.std.max()) <= 1
    rad = m.blocks[0].ga.sep.dtp_rad
    assert torch.count_nonzero(rad.net[0].bias) == 0 and rad.offset.abs().max() <= 1 / 8
    bound = (6 / (4 + 32)) ** 0.5  # Glorot on (1, 4, 32)
    assert m.blocks[0].ga.alpha_dot.abs().max() <= bound

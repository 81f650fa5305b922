"""The Geom3D-exact students (``spherenet``, ``equiformer``): sizes, names and bases pinned to the official definitions.

The pinned numbers were read off the official code, instantiated outside this repository with the settings the
EDG authors ran (HongxinXiang/EDG at 3293258b9806a9f046c0b1af3cdc837a0866e2e2: ``EDG/Geom3D/models/SphereNet.py``
and ``Equiformer/equiformer_type_0.py``, built as ``EDG/finetune_QM9_EDG.py`` builds them with
``EDG/config_distillation.py``'s defaults and ``--emb_dim 128``; the same files as chao1224/Geom3D at e44b11d).
The same run loaded the official weights into these students and found the same outputs (docs/students.md).
"""
from __future__ import annotations

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

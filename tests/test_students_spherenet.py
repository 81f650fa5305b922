"""SphereNet students (``spherenet``: Geom3D's; ``spherenet-edg``: the project's variant): real spherical harmonics,
batched torsions, torsion basis, symmetry, forces, batching. Geom3D's sizes and bases: tests/test_students_geom3d.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from edg.train.students import build_student, config_for, energy_and_forces
from edg.train.students.basis import SphericalBasis
from edg.train.students.graph import radius_graph, triplets
from edg.train.students.spherenet import TorsionBasis, real_spherical_harmonics, torsions
from test_students_models import collate, molecules, random_rotation

SMALL = dict(hidden_channels=16, num_layers=2, int_emb_size=8, basis_emb_size_dist=4, basis_emb_size_angle=4,
             basis_emb_size_torsion=4, out_emb_channels=16, num_spherical=3, num_radial=4, cutoff=5.0)


@pytest.fixture(scope="module", params=["spherenet", "spherenet-edg"])
def model(request):
    torch.manual_seed(0)
    return build_student(request.param, **SMALL).double().eval()


def test_real_spherical_harmonics_are_orthonormal():
    lmax = 3
    x, w = np.polynomial.legendre.leggauss(12)  # exact for the polynomial part in cos(theta)
    n_phi = 16
    theta = torch.from_numpy(np.arccos(x)).repeat_interleave(n_phi)
    phi = torch.arange(n_phi, dtype=torch.float64).repeat(len(x)) * 2 * math.pi / n_phi
    weight = torch.from_numpy(w).repeat_interleave(n_phi) * 2 * math.pi / n_phi
    y = real_spherical_harmonics(lmax, theta, phi)
    assert y.shape == (theta.numel(), (lmax + 1) ** 2)
    gram = y.T @ (y * weight[:, None])
    assert torch.allclose(gram, torch.eye(gram.size(0), dtype=torch.float64), atol=1e-10)
    # m = 0 columns are Y_l^0 = sqrt((2l+1)/4pi) P_l(cos theta), the angle basis of DimeNet
    assert torch.allclose(y[:, 2], math.sqrt(3 / (4 * math.pi)) * torch.cos(theta), atol=1e-12)


def test_torsion_of_known_geometry():
    # j at the origin, i on +z; k and k' at azimuths 30 and 100 degrees (torsion = azimuth difference)
    a, b = math.radians(30), math.radians(100)
    pos = torch.tensor([[0, 0, 0], [0, 0, 1.2], [math.cos(a), math.sin(a), 0.4], [math.cos(b), math.sin(b), -0.3]],
                       dtype=torch.float64)
    edge_index = radius_graph(pos, 5.0)
    i, _, idx_i, idx_j, idx_k, _, idx_ji = triplets(edge_index, 4)
    phi = torsions(pos, idx_i, idx_j, idx_k, idx_ji, i.size(0))
    pick = (idx_i == 1) & (idx_j == 0)
    got = {int(k): float(p) for k, p in zip(idx_k[pick], phi[pick])}
    assert got[2] == pytest.approx(b - a, abs=1e-12)  # min over {k' = 3: 70 deg, k' = k: 360 deg}
    assert got[3] == pytest.approx(2 * math.pi - (b - a), abs=1e-12)  # 290 deg
    assert bool(((phi > 0) & (phi <= 2 * math.pi)).all())


def test_batched_torsions_equal_brute_force():
    z, pos, batch = collate(molecules(3)[1:])
    edge_index = radius_graph(pos, 5.0, batch)
    i, _, idx_i, idx_j, idx_k, _, idx_ji = triplets(edge_index, z.size(0))
    phi = torsions(pos, idx_i, idx_j, idx_k, idx_ji, i.size(0)).numpy()
    p = pos.numpy()
    ii, jj, kk = idx_i.numpy(), idx_j.numpy(), idx_k.numpy()
    for t in range(0, len(ii), 7):
        axis = p[ii[t]] - p[jj[t]]
        plane = np.cross(axis, p[kk[t]] - p[jj[t]])
        best = 2 * math.pi
        for other in np.flatnonzero((ii == ii[t]) & (jj == jj[t]) & (kk != kk[t])):
            plane2 = np.cross(axis, p[kk[other]] - p[jj[t]])
            ang = math.atan2(np.dot(np.cross(plane, plane2), axis) / np.linalg.norm(axis), np.dot(plane, plane2))
            best = min(best, ang + 2 * math.pi if ang <= 0 else ang)
        assert phi[t] == pytest.approx(best, abs=1e-10), t


def test_torsion_basis_m0_columns_are_the_angle_basis():
    g = torch.Generator().manual_seed(0)
    dist = 0.8 + 4 * torch.rand(6, generator=g, dtype=torch.float64)
    theta = math.pi * torch.rand(10, generator=g, dtype=torch.float64)
    phi = 2 * math.pi * torch.rand(10, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 6, (10,), generator=g)
    n_l, n_r = 3, 4
    tbf = TorsionBasis(n_l, n_r, 5.0).double()(dist, theta, phi, idx).reshape(10, n_l * n_l, n_r)
    sbf = SphericalBasis(n_l, n_r, 5.0).double()(dist, theta, idx).reshape(10, n_l, n_r)
    for l_ in range(n_l):
        assert torch.allclose(tbf[:, l_ * l_ + l_], sbf[:, l_], atol=1e-12)  # column (l, m=0)


def test_energy_invariant_forces_equivariant_but_chiral(model):
    z, pos, batch = collate(molecules(3)[1:])
    rot, shift = random_rotation(5), torch.tensor([0.3, -1.1, 2.0], dtype=torch.float64)
    f0, e0, frc0 = energy_and_forces(model, z, pos, batch)
    f1, e1, frc1 = energy_and_forces(model, z, pos @ rot.T + shift, batch)
    assert torch.allclose(e1, e0, atol=1e-5, rtol=1e-7) and torch.allclose(f1, f0, atol=1e-5, rtol=1e-7)
    assert torch.allclose(frc1, frc0 @ rot.T, atol=1e-5, rtol=1e-7)
    assert frc0.abs().max() > 1e-6
    # torsions are signed: the mirror image of a non-planar molecule (ethanol) gets another energy
    mirrored = pos * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert (model(z, mirrored, batch)[1][0] - e0[0]).abs() > 1e-6


@pytest.mark.parametrize("name", ["spherenet", "spherenet-edg"])
def test_defaults(name):
    config = config_for(name)
    assert (config.hidden_channels, config.out_emb_channels, config.num_layers, config.cutoff) == (128, 256, 4, 5.0)
    assert (config.num_spherical, config.num_radial, config.int_emb_size) == (3, 6, 64)


def test_errors():
    with pytest.raises(ValueError, match="output_init"):
        build_student("spherenet-edg", **SMALL, output_init="nope")
    zero = build_student("spherenet-edg", **SMALL, output_init="zeros")
    z, pos, batch = collate(molecules(1))
    assert zero(z, pos.float(), batch)[1].abs().max() == 0
    with pytest.raises(ValueError, match="atomic numbers"):
        zero(torch.tensor([6, 120]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="atomic numbers"):  # Geom3D's Embedding(95)
        build_student("spherenet", **SMALL)(torch.tensor([6, 95]), torch.zeros(2, 3))

"""DimeNet's spherical Fourier-Bessel basis (plain torch) against scipy and torch_geometric's sympy version."""
from __future__ import annotations

import pytest
import torch
from edg.train.students.basis import SphericalBasis, bessel_roots, legendre, spherical_bessel
from scipy.special import eval_legendre, spherical_jn


def test_spherical_bessel_and_legendre_match_scipy():
    x = torch.linspace(0.5, 20.0, 200, dtype=torch.float64)
    jl = spherical_bessel(6, x)
    for order in range(7):
        ref = torch.from_numpy(spherical_jn(order, x.numpy()))
        assert torch.allclose(jl[:, order], ref, atol=1e-9), order
    t = torch.linspace(-1, 1, 101, dtype=torch.float64)
    pl = legendre(6, t)
    for order in range(7):
        assert torch.allclose(pl[:, order], torch.from_numpy(eval_legendre(order, t.numpy())), atol=1e-12)


def test_bessel_roots_are_increasing_roots():
    roots = torch.tensor(bessel_roots(7, 6), dtype=torch.float64)
    assert roots.shape == (7, 6)
    for order in range(7):
        assert abs(spherical_jn(order, roots[order].numpy())).max() < 1e-10
        assert torch.all(roots[order, 1:] > roots[order, :-1])
    assert torch.all(roots[1:, 0] > roots[:-1, 0])  # interlacing: first root grows with l


def test_basis_vanishes_at_cutoff_and_has_expected_shape():
    sbf = SphericalBasis(4, 3, cutoff=5.0).double()
    dist = torch.tensor([1.0, 2.5, 4.999999], dtype=torch.float64)
    angle = torch.tensor([0.3, 2.0, 1.0], dtype=torch.float64)
    out = sbf(dist, angle, torch.tensor([0, 1, 2]))
    assert out.shape == (3, 12)
    assert out[2].abs().max() < 1e-4 and out[0].abs().max() > 1e-2


@pytest.mark.slow
def test_basis_matches_torch_geometric_sympy_layer():
    from torch_geometric.nn.models.dimenet import SphericalBasisLayer
    ours, ref = SphericalBasis(4, 5, 5.0).double(), SphericalBasisLayer(4, 5, 5.0).double()
    g = torch.Generator().manual_seed(0)
    dist = torch.rand(40, generator=g, dtype=torch.float64) * 4 + 0.7
    angle = torch.rand(90, generator=g, dtype=torch.float64) * torch.pi
    idx = torch.randint(0, 40, (90,), generator=g)
    # PyG keeps the Bessel roots in float32, hence the tolerance
    assert torch.allclose(ours(dist, angle, idx), ref(dist, angle, idx), rtol=1e-5, atol=1e-5)

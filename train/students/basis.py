"""DimeNet's 2-D spherical Fourier-Bessel basis in plain torch (no sympy).

torch_geometric's ``SphericalBasisLayer`` derives the same functions symbolically with sympy when it is
built, which takes from seconds to over a minute (7 x 6 basis); this module evaluates them by recurrence:

    sbf_{l,n}(d, alpha) = u(d/c) * N_{ln} j_l(z_{ln} d / c) * Y_l^0(alpha)
    N_{ln} = sqrt(2) / |j_{l+1}(z_{ln})|,   Y_l^0(alpha) = sqrt((2l + 1) / (4 pi)) P_l(cos alpha)

with z_{ln} the n-th positive root of the spherical Bessel function j_l, u the DimeNet envelope
(polynomial of order ``envelope_exponent``), d in Å and the cutoff c in Å.
"""
from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch
from torch import Tensor
from torch_geometric.nn.models.dimenet import Envelope

__all__ = ["spherical_bessel", "legendre", "bessel_roots", "SphericalBasis"]


def spherical_bessel(lmax: int, x: Tensor) -> Tensor:
    """j_0..j_{lmax}(x) stacked on a new last axis: (..., lmax + 1); x > 0."""
    sin, cos = torch.sin(x), torch.cos(x)
    out = [sin / x]
    if lmax >= 1:
        out.append(sin / x**2 - cos / x)
    for l_ in range(1, lmax):
        out.append((2 * l_ + 1) / x * out[l_] - out[l_ - 1])
    return torch.stack(out, dim=-1)


def legendre(lmax: int, t: Tensor) -> Tensor:
    """Legendre polynomials P_0..P_{lmax}(t): (..., lmax + 1)."""
    out = [torch.ones_like(t)]
    if lmax >= 1:
        out.append(t)
    for l_ in range(1, lmax):
        out.append(((2 * l_ + 1) * t * out[l_] - l_ * out[l_ - 1]) / (l_ + 1))
    return torch.stack(out, dim=-1)


def _jn(r: float, order: int) -> float:
    from scipy.special import spherical_jn
    return spherical_jn(order, r)


@cache
def bessel_roots(num_spherical: int, num_radial: int) -> tuple[tuple[float, ...], ...]:
    """z_{ln}: the first ``num_radial`` positive roots of j_l for l < num_spherical (float64).

    The roots of j_l interlace those of j_{l-1}, so each is bracketed by two consecutive roots of j_{l-1}.
    """
    from scipy.optimize import brentq

    n_points = num_radial + num_spherical
    points = np.arange(1, n_points + 1) * np.pi  # roots of j_0
    roots = [points[:num_radial]]
    for order in range(1, num_spherical):
        points = np.array([brentq(_jn, a, b, args=(order,)) for a, b in zip(points[:-1], points[1:])])
        roots.append(points[:num_radial])
    return tuple(tuple(float(v) for v in r) for r in roots)


class SphericalBasis(torch.nn.Module):
    """Drop-in for torch_geometric's ``SphericalBasisLayer``: ``(dist (E,), angle (T,), idx_kj (T,))`` ->
    (T, num_spherical * num_radial), radial index fastest."""

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float = 5.0, envelope_exponent: int = 5):
        super().__init__()
        from scipy.special import spherical_jn

        self.num_spherical, self.num_radial, self.cutoff = num_spherical, num_radial, cutoff
        self.envelope = Envelope(envelope_exponent)
        roots = np.array(bessel_roots(num_spherical, num_radial))  # (L, N)
        norm = np.sqrt(2.0) / np.abs(spherical_jn(np.arange(1, num_spherical + 1)[:, None], roots))
        self.register_buffer("roots", torch.tensor(roots, dtype=torch.float32))
        self.register_buffer("norm", torch.tensor(norm, dtype=torch.float32))
        sph = [math.sqrt((2 * l_ + 1) / (4 * math.pi)) for l_ in range(num_spherical)]
        self.register_buffer("sph_norm", torch.tensor(sph, dtype=torch.float32))

    def forward(self, dist: Tensor, angle: Tensor, idx_kj: Tensor) -> Tensor:
        n_l, n_r = self.num_spherical, self.num_radial
        d = (dist / self.cutoff)[:, None, None]  # (E, 1, 1)
        x = self.roots * d  # (E, L, N)
        jl = spherical_bessel(n_l - 1, x)  # (E, L, N, L): j_m(x_{ln}) for every m; keep m == l
        jl = torch.diagonal(jl, dim1=1, dim2=3).permute(0, 2, 1)  # (E, L, N)
        rbf = self.envelope(d[:, :, 0])[:, :, None] * self.norm * jl
        cbf = self.sph_norm * legendre(n_l - 1, torch.cos(angle))  # (T, L)
        return (rbf[idx_kj] * cbf[:, :, None]).reshape(-1, n_l * n_r)

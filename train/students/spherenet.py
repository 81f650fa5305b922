"""SphereNet, the project's variant (student ``spherenet-edg``; Liu et al., ICLR 2022, "Spherical Message Passing
for 3D Molecular Graphs"). Student ``spherenet`` is Geom3D's model as the paper ran it (``spherenet_geom3d.py``);
this one differs from it in the bases (an envelope on the angle and torsion radial parts, the torsion harmonics
paired with radial functions of their own degree, no Condon-Shortley phase), PyTorch's default initialisation
and its module names. This module also holds the batched torsions and real spherical harmonics both use.

Geometry of an edge j -> i is described in the spherical coordinate system (d, theta, phi) of its triplets
k -> j -> i: d = |x_k - x_j| (Å), theta = angle between x_i - x_j and x_k - x_j, and the torsion phi of the
plane (ji, jk) about the axis ji, measured from the plane (ji, jk') of a reference neighbour k' of j.
As in DIG's reference implementation, the reference is chosen per triplet as the neighbour k' != i of j
that gives the smallest torsion in (0, 2 pi] (k' = k itself gives 2 pi), computed here for all triplets at
once from the pairs of triplets that share the edge ji (no loop over molecules or atoms).

Embeddings (c = cutoff, u = DimeNet envelope, z_ln = n-th root of j_l, Y_l^m real spherical harmonics):

    dist     e_RBF(d_ji)_n         = u(d/c) sqrt(2/c) sin(n pi d / c) / d                         (num_radial)
    angle    e_SBF(d_kj, theta)_ln = u(d/c) N_ln j_l(z_ln d / c) Y_l^0(theta)                     (L * num_radial)
    torsion  e_TBF(d_kj, theta, phi)_lmn = u(d/c) N_ln j_l(z_ln d / c) Y_l^m(theta, phi)          (L^2 * num_radial)

Blocks (DIG names; e = (e1, e2) edge features, v node outputs, u graph output):

    init:      e1_ji = act(W[h(z_i), h(z_j), act(W e_RBF)]),  e2_ji = (W e_RBF) * e1_ji
    update_e:  e1_ji <- residual MLP of act(W e1_ji) + act(W_up sum_k act(W_down (act(W e1_kj) * W e_RBF_kj))
                        * W e_SBF * W e_TBF),  e2_ji = (W e_RBF_ji) * e1_ji
    update_v:  h_i = MLP(W_up sum_j e2_ji) (out_emb_channels),  v_i = W h_i (out_dim)
    update_u:  u = sum over blocks of sum_i v_i

F_G = sum_i sum_blocks h_i (the pooled input of the output layers, out_emb_channels = 256 by default). The
prediction (``readout``): ``features`` (default, as the paper ran it: the authors call Geom3D's SphereNet with
``extract_representation=True`` and predict with ``graph_pred_linear = Linear(256, out, bias=False)``, so
pred = W F_G, one output layer shared by the blocks) or ``blocks`` (DIG's pred = u with its own W per block).

Defaults are DIG's SphereNet QM9 baseline (dig.threedgraph.method.SphereNet, as used in the SphereNet
paper's experiments): hidden 128, out_emb 256, int_emb 64, basis_emb 8/8/8 (dist/angle/torsion),
4 blocks, 3 spherical, 6 radial, cutoff 5 Å, envelope exponent 5, 1/2 residual layers before/after the
skip, 3 output layers, swish. Differences from DIG: the angle basis is DimeNet's (with the envelope,
``basis.py``), the torsion basis pairs j_l with Y_l^m of the same l (DIG reshapes the two stacks in a way
that mixes l indices), and layer initialisation is PyTorch's default apart from the output layer.
Note (inherited from the method): the min-torsion reference makes the torsion jump when a candidate
torsion crosses 0 or a neighbour crosses the cutoff, so the energy is only piecewise smooth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import Embedding, Linear
from torch_geometric.nn.inits import glorot_orthogonal
from torch_geometric.nn.models.dimenet import BesselBasisLayer, ResidualLayer
from torch_geometric.nn.resolver import activation_resolver
from torch_geometric.utils import scatter

from .base import Student, pool
from .basis import SphericalBasis, spherical_bessel
from .graph import GraphSizes, count_per_index, radius_graph_and_triplets

__all__ = ["SphereNetConfig", "SphereNetStudent", "TorsionBasis", "real_spherical_harmonics", "torsions"]


@dataclass
class SphereNetConfig:
    hidden_channels: int = 128
    out_emb_channels: int = 256
    int_emb_size: int = 64
    basis_emb_size_dist: int = 8
    basis_emb_size_angle: int = 8
    basis_emb_size_torsion: int = 8
    num_layers: int = 4
    num_spherical: int = 3
    num_radial: int = 6
    cutoff: float = 5.0  # Å
    max_num_neighbors: int = 32
    envelope_exponent: int = 5
    num_before_skip: int = 1
    num_after_skip: int = 2
    num_output_layers: int = 3
    output_init: str = "glorot_orthogonal"  # or "zeros" (initial prediction 0)
    max_z: int = 95
    feature_pool: str = "sum"
    readout: str = "features"  # features: pred = W F_G (the paper's); blocks: DIG's per-block output layers
    out_dim: int = 1


def real_spherical_harmonics(lmax: int, theta: Tensor, phi: Tensor) -> Tensor:
    """Orthonormal real spherical harmonics Y_l^m(theta, phi), l = 0..lmax, m = -l..l: (T, (lmax + 1)^2).

    theta in [0, pi] (polar), phi any real (azimuth), both in radians, shape (T,). Columns are ordered l
    first, then m from -l to l; m > 0 uses cos(m phi), m < 0 sin(|m| phi) (no Condon-Shortley phase), so
    Y_l^0 = sqrt((2l + 1) / (4 pi)) P_l(cos theta) as in ``basis.SphericalBasis``.
    """
    x, s = torch.cos(theta), torch.sin(theta)
    # associated Legendre P_l^m(x) without the (-1)^m phase, by the standard recurrences in l
    plm: dict[tuple[int, int], Tensor] = {}
    for m in range(lmax + 1):
        plm[m, m] = math.prod(range(1, 2 * m, 2)) * s**m if m else torch.ones_like(x)
        if m + 1 <= lmax:
            plm[m + 1, m] = (2 * m + 1) * x * plm[m, m]
        for l_ in range(m + 2, lmax + 1):
            plm[l_, m] = ((2 * l_ - 1) * x * plm[l_ - 1, m] - (l_ + m - 1) * plm[l_ - 2, m]) / (l_ - m)
    out = []
    for l_ in range(lmax + 1):
        for m in range(-l_, l_ + 1):
            a = abs(m)
            norm = math.sqrt((2 * l_ + 1) / (4 * math.pi) * math.factorial(l_ - a) / math.factorial(l_ + a))
            if m == 0:
                out.append(norm * plm[l_, 0])
            else:
                trig = torch.cos(a * phi) if m > 0 else torch.sin(a * phi)
                out.append(math.sqrt(2.0) * norm * plm[l_, a] * trig)
    return torch.stack(out, dim=-1)


class TorsionBasis(SphericalBasis):
    """``(dist (E,), theta (T,), phi (T,), idx_kj (T,))`` -> (T, L^2 * num_radial): u(d/c) N_ln j_l(z_ln d/c)
    Y_l^m(theta, phi) with d = dist[idx_kj] (Å); order (l, m, n) with n fastest. Roots, norms and envelope are
    those of ``SphericalBasis``."""

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float = 5.0, envelope_exponent: int = 5):
        super().__init__(num_spherical, num_radial, cutoff, envelope_exponent)
        degree = [l_ for l_ in range(num_spherical) for _ in range(2 * l_ + 1)]  # l of each (l, m) column
        self.register_buffer("degree", torch.tensor(degree, dtype=torch.long), persistent=False)

    def radial(self, dist: Tensor) -> Tensor:
        """(E,) Å -> (E, L, N): the enveloped, normalised radial functions of ``SphericalBasis``."""
        d = (dist / self.cutoff)[:, None, None]
        jl = spherical_bessel(self.num_spherical - 1, self.roots * d)  # (E, L, N, L)
        jl = torch.diagonal(jl, dim1=1, dim2=3).permute(0, 2, 1)
        return self.envelope(d[:, :, 0])[:, :, None] * self.norm * jl

    def forward(self, dist: Tensor, theta: Tensor, phi: Tensor, idx_kj: Tensor) -> Tensor:
        n_l = self.num_spherical
        rbf = self.radial(dist)[idx_kj][:, self.degree]  # (T, L^2, N)
        ylm = real_spherical_harmonics(n_l - 1, theta, phi)  # (T, L^2)
        return (rbf * ylm[:, :, None]).reshape(theta.size(0), -1)


def torsions(pos: Tensor, idx_i: Tensor, idx_j: Tensor, idx_k: Tensor, idx_ji: Tensor, n_edges: int,
             max_per_edge: int | None = None) -> Tensor:
    """Torsion (T,) in (0, 2 pi] of each triplet k -> j -> i about the axis j -> i, relative to the
    neighbour k' != i of j that minimises it (DIG's SphereNet convention; k' = k gives 2 pi).

    The candidates k' of a triplet are the k of the triplets sharing its edge ji; ``triplets`` lists those
    contiguously (sorted by idx_ji), so each triplet's candidates are the rows start(ji) + d of a dense
    (T, D) table, d < D = ``max_per_edge`` (a host-side bound on the triplets per edge, e.g. the most
    neighbours an atom may have; ``None``: read from the device, one sync), rows past the edge's count masked.
    """
    n_trip = idx_ji.size(0)
    if n_trip == 0:
        return pos.new_zeros(0)
    count = count_per_index(idx_ji, n_edges)
    start = torch.cumsum(count, 0) - count
    if max_per_edge is None:
        max_per_edge = int(count.max().item())
    d = torch.arange(max(max_per_edge, 1), device=pos.device)
    t = torch.arange(n_trip, device=pos.device)[:, None]  # (T, 1)
    valid = d < count[idx_ji][:, None]  # (T, D)
    other = torch.where(valid, start[idx_ji][:, None] + d, t)  # (T, D) candidate triplet (itself when padding)
    axis = pos[idx_i] - pos[idx_j]  # (T, 3)
    plane = torch.cross(axis, pos[idx_k] - pos[idx_j], dim=1)  # normal of the plane (ji, jk)
    p1, p2, ax = plane[:, None, :], plane[other], axis[:, None, :]
    cos_part = (p1 * p2).sum(dim=-1)
    sin_part = (torch.cross(p1.expand_as(p2), p2, dim=2) * ax).sum(dim=-1) / ax.norm(dim=-1)
    phi = torch.atan2(sin_part, cos_part)
    phi = torch.where(phi <= 0, phi + 2 * math.pi, phi)
    # k' = k: the cross product of a vector with itself may round to +-1e-22, so fix it to 2 pi exactly
    phi = torch.where(other == t, torch.full_like(phi, 2 * math.pi), phi)
    return torch.where(valid, phi, torch.full_like(phi, math.inf)).amin(dim=1)


class SphereNetInit(torch.nn.Module):
    def __init__(self, num_radial: int, hidden: int, max_z: int, act):
        super().__init__()
        self.act = act
        self.emb = Embedding(max_z, hidden)
        self.lin_rbf_0 = Linear(num_radial, hidden)
        self.lin = Linear(3 * hidden, hidden)
        self.lin_rbf_1 = Linear(num_radial, hidden, bias=False)
        torch.nn.init.uniform_(self.emb.weight, -math.sqrt(3), math.sqrt(3))

    def forward(self, z: Tensor, rbf: Tensor, i: Tensor, j: Tensor) -> tuple[Tensor, Tensor]:
        h = self.emb(z)
        e1 = self.act(self.lin(torch.cat([h[i], h[j], self.act(self.lin_rbf_0(rbf))], dim=-1)))
        return e1, self.lin_rbf_1(rbf) * e1


class SphereNetUpdateE(torch.nn.Module):
    def __init__(self, c: SphereNetConfig, act):
        super().__init__()
        h, n_l, n_r = c.hidden_channels, c.num_spherical, c.num_radial
        self.act = act
        self.lin_rbf = torch.nn.Sequential(Linear(n_r, c.basis_emb_size_dist, bias=False),
                                           Linear(c.basis_emb_size_dist, h, bias=False))
        self.lin_sbf = torch.nn.Sequential(Linear(n_l * n_r, c.basis_emb_size_angle, bias=False),
                                           Linear(c.basis_emb_size_angle, c.int_emb_size, bias=False))
        self.lin_tbf = torch.nn.Sequential(Linear(n_l * n_l * n_r, c.basis_emb_size_torsion, bias=False),
                                           Linear(c.basis_emb_size_torsion, c.int_emb_size, bias=False))
        self.lin_kj, self.lin_ji = Linear(h, h), Linear(h, h)
        self.lin_down = Linear(h, c.int_emb_size, bias=False)
        self.lin_up = Linear(c.int_emb_size, h, bias=False)
        self.before_skip = torch.nn.ModuleList([ResidualLayer(h, act) for _ in range(c.num_before_skip)])
        self.lin = Linear(h, h)
        self.after_skip = torch.nn.ModuleList([ResidualLayer(h, act) for _ in range(c.num_after_skip)])
        self.lin_e2 = Linear(n_r, h, bias=False)

    def forward(self, e1: Tensor, rbf: Tensor, sbf: Tensor, tbf: Tensor, idx_kj: Tensor,
                idx_ji: Tensor) -> tuple[Tensor, Tensor]:
        x_ji = self.act(self.lin_ji(e1))
        x_kj = self.act(self.lin_down(self.act(self.lin_kj(e1)) * self.lin_rbf(rbf)))
        x_kj = x_kj[idx_kj] * self.lin_sbf(sbf) * self.lin_tbf(tbf)
        x_kj = self.act(self.lin_up(scatter(x_kj, idx_ji, dim=0, dim_size=e1.size(0), reduce="sum")))
        out = x_ji + x_kj
        for layer in self.before_skip:
            out = layer(out)
        out = self.act(self.lin(out)) + e1
        for layer in self.after_skip:
            out = layer(out)
        return out, self.lin_e2(rbf) * out


def _output_layer(out_emb: int, out_dim: int, output_init: str) -> Linear:
    lin = Linear(out_emb, out_dim, bias=False)
    if output_init == "zeros":
        torch.nn.init.zeros_(lin.weight)
    elif output_init == "glorot_orthogonal":
        glorot_orthogonal(lin.weight, scale=2.0)
    else:
        raise ValueError(f"SphereNet: unknown output_init {output_init!r}; use glorot_orthogonal or zeros")
    return lin


class SphereNetUpdateV(torch.nn.Module):
    """Edge features -> node features h_i (out_emb_channels) and, with an output layer, v_i = W h_i (out_dim)."""

    def __init__(self, hidden: int, out_emb: int, out_dim: int, num_layers: int, act, output_init: str,
                 with_output: bool = True):
        super().__init__()
        self.act = act
        self.lin_up = Linear(hidden, out_emb)
        self.lins = torch.nn.ModuleList([Linear(out_emb, out_emb) for _ in range(num_layers)])
        self.lin = _output_layer(out_emb, out_dim, output_init) if with_output else None

    def forward(self, e2: Tensor, i: Tensor, num_nodes: int) -> tuple[Tensor, Tensor | None]:
        h = self.lin_up(scatter(e2, i, dim=0, dim_size=num_nodes, reduce="sum"))
        for lin in self.lins:
            h = self.act(lin(h))
        return h, (self.lin(h) if self.lin is not None else None)


class SphereNetStudent(Student):
    def __init__(self, config: SphereNetConfig | None = None):
        super().__init__()
        self.config = c = config or SphereNetConfig()
        act = activation_resolver("swish")
        self.rbf = BesselBasisLayer(c.num_radial, c.cutoff, c.envelope_exponent)
        self.sbf = SphericalBasis(c.num_spherical, c.num_radial, c.cutoff, c.envelope_exponent)
        self.tbf = TorsionBasis(c.num_spherical, c.num_radial, c.cutoff, c.envelope_exponent)
        self.init_e = SphereNetInit(c.num_radial, c.hidden_channels, c.max_z, act)
        self.update_es = torch.nn.ModuleList([SphereNetUpdateE(c, act) for _ in range(c.num_layers)])
        if c.readout not in ("features", "blocks"):
            raise ValueError(f"SphereNet: unknown readout {c.readout!r}; use features or blocks")
        blocks = c.readout == "blocks"
        self.update_vs = torch.nn.ModuleList([
            SphereNetUpdateV(c.hidden_channels, c.out_emb_channels, c.out_dim, c.num_output_layers, act,
                             c.output_init, with_output=blocks) for _ in range(c.num_layers + 1)])
        self.head = None if blocks else _output_layer(c.out_emb_channels, c.out_dim, c.output_init)
        self.feature_dim = c.out_emb_channels
        self.out_dim = c.out_dim
        self.max_z = c.max_z

    def encode(self, z: Tensor, pos: Tensor, batch: Tensor, sizes: GraphSizes) -> tuple[Tensor, Tensor]:
        c, n = self.config, z.size(0)
        _, (i, j, idx_i, idx_j, idx_k, idx_kj, idx_ji) = radius_graph_and_triplets(
            pos, c.cutoff, batch, c.max_num_neighbors, sizes)
        dist = (pos[i] - pos[j]).norm(dim=-1)
        pos_ji, pos_jk = pos[idx_i] - pos[idx_j], pos[idx_k] - pos[idx_j]
        theta = torch.atan2(torch.cross(pos_ji, pos_jk, dim=1).norm(dim=-1), (pos_ji * pos_jk).sum(dim=-1))
        most = sizes.max_atoms - 1 if c.max_num_neighbors is None else min(sizes.max_atoms - 1, c.max_num_neighbors)
        phi = torsions(pos, idx_i, idx_j, idx_k, idx_ji, i.size(0), max_per_edge=most)
        rbf = self.rbf(dist)
        sbf = self.sbf(dist, theta, idx_kj)
        tbf = self.tbf(dist, theta, phi, idx_kj)

        e1, e2 = self.init_e(z, rbf, i, j)
        feats_atom, per_atom = self.update_vs[0](e2, i, n)
        for update_e, update_v in zip(self.update_es, self.update_vs[1:]):
            e1, e2 = update_e(e1, rbf, sbf, tbf, idx_kj, idx_ji)
            h, v = update_v(e2, i, n)
            feats_atom = feats_atom + h
            per_atom = per_atom + v if self.head is None else None
        feats = pool(feats_atom, batch, sizes.num_graphs, c.feature_pool)
        if self.head is not None:
            return feats, self.head(feats)
        return feats, pool(per_atom, batch, sizes.num_graphs, "sum")

"""SphereNet as Geom3D builds it and the EDG authors ran it (student ``spherenet``; Liu et al., ICLR 2022).

The model of ``Geom3D/models/SphereNet.py`` + ``SphereNet_utils.py`` (HongxinXiang/EDG ``EDG/Geom3D``, equal to
chao1224/Geom3D apart from ``extract_representation``), called as ``EDG/finetune_{QM9,rMD17}_EDG.py`` call it:
``SphereNet(hidden_channels=emb_dim=128, ...)(z, pos, batch, extract_representation=True)`` followed by
``graph_pred_linear = Linear(out_emb_channels, out, bias=False)``. Same module and parameter names as theirs: their
state dict, less the unused output layers named below, plus ``graph_pred_linear.weight``, loads as is.

Geometry of a triplet k -> j -> i (edge j -> i, its neighbour edge k -> j): d = |x_k - x_j| (Å), theta the angle
between x_i - x_j and x_k - x_j, phi the torsion of the plane (ji, jk) about ji measured from the neighbour
k' != i of j that gives the smallest torsion in (0, 2 pi] (``spherenet.torsions``). With c = cutoff,
u the DimeNet envelope, z_ln the n-th root of j_l, N_ln = sqrt(2) / |j_{l+1}(z_ln)| and L = num_spherical:

    dist     e_RBF(d_ji)_n       = u(d/c) sin(f_n d / c)            f_n = n pi at start, trainable  (num_radial)
    angle    e_SBF(d, theta)_ln  = N_ln j_l(z_ln d / c) Y_l^0(theta)                                 (L * num_radial)
    torsion  e_TBF(d, theta, phi)_fn = N_{l'n} j_{l'}(z_{l'n} d / c) Y_f(theta, phi),  l' = f mod L  (L^2 * num_radial)

Geom3D, unlike the SphereNet paper and DIG, applies no envelope to the angle and torsion bases (its
``self.envelope`` lines are commented out), and its torsion basis reshapes the stack of L^2 spherical harmonics
Y_f (f = 0 .. L^2 - 1, ordered l = 0, 1, ...; within l: m = 0, 1, .., l, -l, .., -1; with the Condon-Shortley
phase (-1)^m) as (L, L) and multiplies it with the (L, num_radial) radial stack, so harmonic f meets the
radial functions of order f mod L, not of its own degree. Both are reproduced here.

Blocks (names as Geom3D's; e = (e1, e2) edge features, h node features, swish activation):

    init_e:    e1_ji = act(W[h(z_i), h(z_j), act(W e_RBF)]),  e2_ji = (W e_RBF) * e1_ji
    update_e:  e1_ji <- residual MLP of act(W e1_ji) + act(W_up sum_k act(W_down (act(W e1_kj) * W W e_RBF_kj))
                        * W W e_SBF * W W e_TBF),  e2_ji = (W e_RBF_ji) * e1_ji
    update_v:  h_i = MLP(W_up sum_j e2_ji)                       (out_emb_channels; 1 + num_layers of them)
    F_G = sum over update_v blocks of sum_i h_i;   pred = graph_pred_linear(F_G)

Initialisation as Geom3D's ``reset_parameters`` (glorot-orthogonal with scale 2 and zero biases where theirs;
PyTorch's default for ``init_e.lin_rbf_0``, ``init_e.lin`` and ``graph_pred_linear``). Not built: the per-block
output layers ``update_v.lin`` (out_emb -> out), which Geom3D constructs but ``extract_representation=True``
never calls (5 x 256 unused parameters). Defaults: ``EDG/config_distillation.py`` with ``--emb_dim 128``.

Args (``SphereNetGeom3DConfig``):
    hidden_channels: edge feature width (their ``emb_dim``).
    out_emb_channels: node feature width of the output blocks = d_G.
    int_emb_size, basis_emb_size_dist/angle/torsion: widths of the triplet interaction and basis projections.
    num_layers: interaction blocks. num_spherical, num_radial: L and the radial functions per degree.
    cutoff: radius graph cutoff in Å; max_num_neighbors: the graph's neighbour cap (PyG's radius_graph default 32).
    envelope_exponent: of the distance basis' envelope. num_before_skip, num_after_skip: residual layers.
    num_output_layers: hidden layers of each update_v MLP. max_z: atomic numbers accepted (their Embedding(95)).
    out_dim: outputs of graph_pred_linear.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import Embedding, Linear
from torch_geometric.nn.inits import glorot_orthogonal
from torch_geometric.nn.models.dimenet import BesselBasisLayer, ResidualLayer
from torch_geometric.utils import scatter

from .base import Student
from .basis import bessel_roots, legendre, spherical_bessel
from .graph import GraphSizes, radius_graph_and_triplets
from .spherenet import real_spherical_harmonics, torsions

__all__ = ["SphereNetGeom3DConfig", "SphereNetGeom3DStudent", "Geom3DAngleBasis", "Geom3DTorsionBasis",
           "geom3d_torsion_columns"]


@dataclass
class SphereNetGeom3DConfig:
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
    max_z: int = 95
    out_dim: int = 1


def _act(x: Tensor) -> Tensor:
    return x * x.sigmoid()  # swish


class _RadialStack(torch.nn.Module):
    """N_ln j_l(z_ln d / c) for every degree l < L and root n: (E, L, N), no envelope (Geom3D's ``bessel_basis``)."""

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float):
        super().__init__()
        from scipy.special import spherical_jn
        self.num_spherical, self.num_radial, self.cutoff = num_spherical, num_radial, cutoff
        roots = np.array(bessel_roots(num_spherical, num_radial))  # (L, N)
        norm = np.sqrt(2.0) / np.abs(spherical_jn(np.arange(1, num_spherical + 1)[:, None], roots))
        self.register_buffer("roots", torch.tensor(roots, dtype=torch.float32), persistent=False)
        self.register_buffer("norm", torch.tensor(norm, dtype=torch.float32), persistent=False)

    def radial(self, dist: Tensor) -> Tensor:
        x = self.roots * (dist / self.cutoff)[:, None, None]  # (E, L, N)
        jl = spherical_bessel(self.num_spherical - 1, x)  # (E, L, N, L): j_m(x_ln) for every m; keep m == l
        return self.norm * torch.diagonal(jl, dim1=1, dim2=3).permute(0, 2, 1)


class Geom3DAngleBasis(_RadialStack):
    """``(dist (E,) Å, theta (T,), idx_kj (T,))`` -> (T, L * N): N_ln j_l(z_ln d_kj / c) Y_l^0(theta), radial
    index fastest, without an envelope (Geom3D's ``angle_emb``)."""

    def forward(self, dist: Tensor, theta: Tensor, idx_kj: Tensor) -> Tensor:
        n_l = self.num_spherical
        y0 = legendre(n_l - 1, torch.cos(theta)) * theta.new_tensor(
            [math.sqrt((2 * l_ + 1) / (4 * math.pi)) for l_ in range(n_l)])  # (T, L)
        return (self.radial(dist)[idx_kj] * y0[:, :, None]).reshape(theta.size(0), -1)


def geom3d_torsion_columns(num_spherical: int) -> tuple[list[int], list[float]]:
    """For Geom3D's harmonic f = 0 .. L^2 - 1 (per degree l: m = 0, 1, .., l, -l, .., -1): its column in
    ``real_spherical_harmonics`` (ordered m = -l .. l, no Condon-Shortley phase) and its sign (-1)^m."""
    cols, signs = [], []
    for l_ in range(num_spherical):
        for m in [0, *range(1, l_ + 1), *range(-l_, 0)]:
            cols.append(l_ * l_ + m + l_)
            signs.append(-1.0 if abs(m) % 2 else 1.0)
    return cols, signs


class Geom3DTorsionBasis(_RadialStack):
    """``(dist (E,), theta (T,), phi (T,), idx_kj (T,))`` -> (T, L^2 * N): harmonic f times the radial functions
    of degree f mod L (Geom3D's ``torsion_emb`` pairing), order (f, n) with n fastest, no envelope."""

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float):
        super().__init__(num_spherical, num_radial, cutoff)
        cols, signs = geom3d_torsion_columns(num_spherical)
        self.register_buffer("cols", torch.tensor(cols, dtype=torch.long), persistent=False)
        self.register_buffer("signs", torch.tensor(signs), persistent=False)
        self.register_buffer("paired", torch.arange(num_spherical ** 2) % num_spherical, persistent=False)

    def forward(self, dist: Tensor, theta: Tensor, phi: Tensor, idx_kj: Tensor) -> Tensor:
        y = real_spherical_harmonics(self.num_spherical - 1, theta, phi)[:, self.cols] * self.signs.to(theta.dtype)
        rbf = self.radial(dist)[idx_kj][:, self.paired]  # (T, L^2, N)
        return (rbf * y[:, :, None]).reshape(theta.size(0), -1)


class SphereNetEmbedding(torch.nn.Module):
    """Geom3D's ``emb``: the trainable-frequency distance basis and the envelope-free angle and torsion bases."""

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float, envelope_exponent: int):
        super().__init__()
        self.dist_emb = BesselBasisLayer(num_radial, cutoff, envelope_exponent)
        self.angle_emb = Geom3DAngleBasis(num_spherical, num_radial, cutoff)
        self.torsion_emb = Geom3DTorsionBasis(num_spherical, num_radial, cutoff)

    def reset_parameters(self) -> None:
        self.dist_emb.reset_parameters()

    def forward(self, dist: Tensor, theta: Tensor, phi: Tensor, idx_kj: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return (self.dist_emb(dist), self.angle_emb(dist, theta, idx_kj),
                self.torsion_emb(dist, theta, phi, idx_kj))


class SphereNetInitE(torch.nn.Module):
    def __init__(self, num_radial: int, hidden: int, max_z: int):
        super().__init__()
        self.emb = Embedding(max_z, hidden)
        self.lin_rbf_0 = Linear(num_radial, hidden)
        self.lin = Linear(3 * hidden, hidden)
        self.lin_rbf_1 = Linear(num_radial, hidden, bias=False)

    def reset_parameters(self) -> None:
        torch.nn.init.uniform_(self.emb.weight, -math.sqrt(3), math.sqrt(3))
        self.lin_rbf_0.reset_parameters()
        self.lin.reset_parameters()
        glorot_orthogonal(self.lin_rbf_1.weight, scale=2.0)

    def forward(self, z: Tensor, rbf: Tensor, i: Tensor, j: Tensor) -> tuple[Tensor, Tensor]:
        h = self.emb(z)
        e1 = _act(self.lin(torch.cat([h[i], h[j], _act(self.lin_rbf_0(rbf))], dim=-1)))
        return e1, self.lin_rbf_1(rbf) * e1


class SphereNetUpdateE(torch.nn.Module):
    def __init__(self, c: SphereNetGeom3DConfig):
        super().__init__()
        h, n_l, n_r, i_e = c.hidden_channels, c.num_spherical, c.num_radial, c.int_emb_size
        self.lin_rbf1 = Linear(n_r, c.basis_emb_size_dist, bias=False)
        self.lin_rbf2 = Linear(c.basis_emb_size_dist, h, bias=False)
        self.lin_sbf1 = Linear(n_l * n_r, c.basis_emb_size_angle, bias=False)
        self.lin_sbf2 = Linear(c.basis_emb_size_angle, i_e, bias=False)
        self.lin_t1 = Linear(n_l * n_l * n_r, c.basis_emb_size_torsion, bias=False)
        self.lin_t2 = Linear(c.basis_emb_size_torsion, i_e, bias=False)
        self.lin_rbf = Linear(n_r, h, bias=False)
        self.lin_kj = Linear(h, h)
        self.lin_ji = Linear(h, h)
        self.lin_down = Linear(h, i_e, bias=False)
        self.lin_up = Linear(i_e, h, bias=False)
        self.layers_before_skip = torch.nn.ModuleList([ResidualLayer(h, _act) for _ in range(c.num_before_skip)])
        self.lin = Linear(h, h)
        self.layers_after_skip = torch.nn.ModuleList([ResidualLayer(h, _act) for _ in range(c.num_after_skip)])

    def reset_parameters(self) -> None:
        for lin in (self.lin_rbf1, self.lin_rbf2, self.lin_sbf1, self.lin_sbf2, self.lin_t1, self.lin_t2,
                    self.lin_kj, self.lin_ji, self.lin_down, self.lin_up, self.lin, self.lin_rbf):
            glorot_orthogonal(lin.weight, scale=2.0)
            if lin.bias is not None:
                torch.nn.init.zeros_(lin.bias)
        for layer in (*self.layers_before_skip, *self.layers_after_skip):
            layer.reset_parameters()

    def forward(self, e1: Tensor, rbf0: Tensor, sbf: Tensor, tbf: Tensor, idx_kj: Tensor, idx_ji: Tensor
                ) -> tuple[Tensor, Tensor]:
        x_ji = _act(self.lin_ji(e1))
        x_kj = _act(self.lin_kj(e1)) * self.lin_rbf2(self.lin_rbf1(rbf0))
        x_kj = _act(self.lin_down(x_kj))
        x_kj = x_kj[idx_kj] * self.lin_sbf2(self.lin_sbf1(sbf)) * self.lin_t2(self.lin_t1(tbf))
        x_kj = _act(self.lin_up(scatter(x_kj, idx_ji, dim=0, dim_size=e1.size(0), reduce="sum")))
        out = x_ji + x_kj
        for layer in self.layers_before_skip:
            out = layer(out)
        out = _act(self.lin(out)) + e1
        for layer in self.layers_after_skip:
            out = layer(out)
        return out, self.lin_rbf(rbf0) * out


class SphereNetUpdateV(torch.nn.Module):
    """h_i = MLP(W_up sum_j e2_ji): Geom3D's ``update_v`` with ``extract_representation=True``."""

    def __init__(self, hidden: int, out_emb: int, num_layers: int):
        super().__init__()
        self.lin_up = Linear(hidden, out_emb)
        self.lins = torch.nn.ModuleList([Linear(out_emb, out_emb) for _ in range(num_layers)])

    def reset_parameters(self) -> None:
        self.lin_up.reset_parameters()  # their bias keeps nn.Linear's initialisation
        glorot_orthogonal(self.lin_up.weight, scale=2.0)
        for lin in self.lins:
            glorot_orthogonal(lin.weight, scale=2.0)
            torch.nn.init.zeros_(lin.bias)

    def forward(self, e2: Tensor, i: Tensor, num_nodes: int) -> Tensor:
        h = self.lin_up(scatter(e2, i, dim=0, dim_size=num_nodes, reduce="sum"))
        for lin in self.lins:
            h = _act(lin(h))
        return h


class SphereNetGeom3DStudent(Student):
    def __init__(self, config: SphereNetGeom3DConfig | None = None):
        super().__init__()
        self.config = c = config or SphereNetGeom3DConfig()
        self.init_e = SphereNetInitE(c.num_radial, c.hidden_channels, c.max_z)
        self.init_v = SphereNetUpdateV(c.hidden_channels, c.out_emb_channels, c.num_output_layers)
        self.emb = SphereNetEmbedding(c.num_spherical, c.num_radial, c.cutoff, c.envelope_exponent)
        self.update_vs = torch.nn.ModuleList([SphereNetUpdateV(c.hidden_channels, c.out_emb_channels,
                                                               c.num_output_layers) for _ in range(c.num_layers)])
        self.update_es = torch.nn.ModuleList([SphereNetUpdateE(c) for _ in range(c.num_layers)])
        self.graph_pred_linear = Linear(c.out_emb_channels, c.out_dim, bias=False)
        self.feature_dim = c.out_emb_channels
        self.out_dim = c.out_dim
        self.max_z = c.max_z
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.init_e.reset_parameters()
        self.init_v.reset_parameters()
        self.emb.reset_parameters()
        for block in (*self.update_es, *self.update_vs):
            block.reset_parameters()
        self.graph_pred_linear.reset_parameters()

    def encode(self, z: Tensor, pos: Tensor, batch: Tensor, sizes: GraphSizes) -> tuple[Tensor, Tensor]:
        c, n = self.config, z.size(0)
        _, (i, j, idx_i, idx_j, idx_k, idx_kj, idx_ji) = radius_graph_and_triplets(
            pos, c.cutoff, batch, c.max_num_neighbors, sizes)
        dist = (pos[i] - pos[j]).norm(dim=-1)
        pos_ji, pos_jk = pos[idx_i] - pos[idx_j], pos[idx_k] - pos[idx_j]
        theta = torch.atan2(torch.cross(pos_ji, pos_jk, dim=1).norm(dim=-1), (pos_ji * pos_jk).sum(dim=-1))
        most = sizes.max_atoms - 1 if c.max_num_neighbors is None else min(sizes.max_atoms - 1, c.max_num_neighbors)
        phi = torsions(pos, idx_i, idx_j, idx_k, idx_ji, i.size(0), max_per_edge=most)
        rbf, sbf, tbf = self.emb(dist, theta, phi, idx_kj)

        e1, e2 = self.init_e(z, rbf, i, j)
        h = self.init_v(e2, i, n)
        for update_e, update_v in zip(self.update_es, self.update_vs):
            e1, e2 = update_e(e1, rbf, sbf, tbf, idx_kj, idx_ji)
            h = h + update_v(e2, i, n)
        feats = scatter(h, batch, dim=0, dim_size=sizes.num_graphs, reduce="sum")
        return feats, self.graph_pred_linear(feats)


"""Equiformer student (Liao & Smidt, ICLR 2023): an SE(3)-equivariant graph attention Transformer on e3nn irreps.

Atoms carry irreps features x_i of type ``C x 0e + C/2 x 1e + C/4 x 2e`` (C = hidden_channels, up to lmax),
edges j -> i carry r_ij = x_i - x_j (Å), Gaussian RBFs of |r_ij| and spherical harmonics Y(r_ij) of the same
l's (SE(3): all parities even, as in Equiformer's QM9 model). With LN the equivariant layer norm:

    embed:      x_i = Emb(z_i) + 1/sqrt(k) sum_j Lin(DTP(Emb'(z_j), Y(r_ij); R(|r_ij|)))     (edge-degree embedding)
    attention:  m_ij = Lin(DTP(Lin_src(LN x)_j + Lin_dst(LN x)_i, Y(r_ij); R(|r_ij|) f_c(|r_ij|)))
                a_ij^h = w_h . LeakyReLU(m_ij^{scalar, h})                        (MLP attention, per head h)
                alpha_ij^h = f_c(|r_ij|) exp(a_ij^h) / sum_k f_c(|r_ik|) exp(a_ik^h)
                x_i <- x_i + Lin(sum_j alpha_ij^h Gate(m_ij)^h)
    feed-fwd:   x_i <- x_i + Lin(Gate(Lin(LN x_i)))                                 (3x wider hidden irreps)
    last block: its feed-forward maps to F x 0e scalars (F = feature_channels = 512), the residual through an
                equivariant linear shortcut (Equiformer's ``irreps_feature='512x0e'``)
    output:     s_i = LN(x_i) (F scalars);  F_G = sum_i s_i / sqrt(N_avg);  pred = sum_i MLP(s_i) / sqrt(N_avg)

DTP is a depthwise ("uvu") tensor product whose per-edge weights come from an MLP R of the RBFs, Lin are
e3nn equivariant linear maps, Gate is e3nn's gate (SiLU on scalars, sigmoid gates on l > 0), f_c the cosine
cutoff, k = avg_num_neighbors and N_avg = avg_num_nodes (Equiformer's ``ScaledScatter``). Attention weights
alpha go through dropout (``alpha_drop``) in training.

Defaults follow the Equiformer the paper ran for QM9 (Geom3D ``EquiformerEnergy`` in ``EDG/finetune_QM9_EDG.py``:
irreps 128x0e+64x1e+32x2e, 6 blocks, 4 heads, 128 RBFs, cutoff 5 Å, feed-forward irreps 3x the node irreps,
512x0e features, MLP head 512 -> 512 -> 1, attention dropout 0.2, sums scaled by 1/sqrt(18.03)).
Simplifications relative to the paper: one depthwise tensor product per message (the paper's value path
applies a second one after the gate), value heads are channel groups of the node irreps (the paper projects
to separate head irreps), Gaussian RBFs instead of the paper's learned ones, no projection dropout /
drop-path (0 in the paper's settings too), and the softmax is weighted by the cutoff envelope f_c so that
energies and forces are continuous when atoms cross the cutoff (the paper's plain softmax is not).
e3nn is imported when a model is built, so ``import edg.train.students`` works without it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import Embedding, Linear, SiLU
from torch_geometric.utils import scatter

from .base import Student, pool
from .egnn import cosine_cutoff
from .graph import GraphSizes, radius_graph

__all__ = ["EquiformerConfig", "EquiformerStudent", "EquivariantLayerNorm", "node_irreps"]


@dataclass
class EquiformerConfig:
    hidden_channels: int = 128  # C: multiplicity of 0e; l > 0 gets C / 2^l
    lmax: int = 2
    num_layers: int = 6
    num_heads: int = 4
    alpha_channels: int = 32  # scalars per head for the attention MLP
    ffn_multiplier: int = 3
    num_rbf: int = 128
    radial_hidden: int = 64
    cutoff: float = 5.0  # Å
    max_num_neighbors: int | None = None  # None: every neighbour within the cutoff (Equiformer: 1000)
    avg_num_neighbors: float = 15.57  # QM9 value used by Equiformer to scale neighbour sums
    avg_num_nodes: float = 18.03065905448718  # QM9 value used by Equiformer to scale the sums over atoms
    feature_channels: int = 512  # F: scalars of the last block = F_G width (Equiformer's irreps_feature)
    alpha_drop: float = 0.2  # dropout on the attention weights (training only)
    max_z: int = 100
    feature_pool: str = "sum"
    out_dim: int = 1


def _require_e3nn():
    try:
        from e3nn import o3
        from e3nn.nn import Gate
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the Equiformer student needs e3nn: pip install e3nn") from err
    return o3, Gate


def node_irreps(channels: int, lmax: int, parity: int = 1) -> str:
    """``"Cx0e+C/2x1e+C/4x2e..."`` up to lmax (multiplicity C / 2^l, at least 1) as an irreps string."""
    p = "e" if parity == 1 else "o"
    return "+".join(f"{max(channels >> l_, 1)}x{l_}{p}" for l_ in range(lmax + 1))


def _scalars_and_gated(irreps, multiplier: int = 1):
    """Split irreps into (scalars, gates, gated) for e3nn's Gate with multiplicities scaled by ``multiplier``."""
    o3, _ = _require_e3nn()
    scalars = o3.Irreps([(mul * multiplier, ir) for mul, ir in irreps if ir.l == 0])
    gated = o3.Irreps([(mul * multiplier, ir) for mul, ir in irreps if ir.l > 0])
    gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
    return scalars, gates, gated


def _gate(irreps, multiplier: int = 1):
    o3, Gate = _require_e3nn()
    scalars, gates, gated = _scalars_and_gated(irreps, multiplier)
    return Gate(scalars, [torch.nn.functional.silu], gates, [torch.sigmoid] * len(gates), gated)


class EquivariantLayerNorm(torch.nn.Module):
    """Layer norm of irreps features (A, irreps.dim): scalars are centred and scaled by their RMS over
    channels; each l > 0 block is scaled by the RMS over channels of its component-normalised norms
    |v|^2 / (2l + 1). A learned per-channel gain for every irrep and a bias for scalars (Equiformer's LN)."""

    def __init__(self, irreps, eps: float = 1e-5):
        super().__init__()
        o3, _ = _require_e3nn()
        self.irreps = o3.Irreps(irreps)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(self.irreps.num_irreps))
        n_scalar = sum(mul for mul, ir in self.irreps if ir.l == 0)
        self.bias = torch.nn.Parameter(torch.zeros(n_scalar))
        # (start, stop, mul, dim, l) per block as plain ints: forward reads no e3nn object (torch.export guards on
        # what forward reads, and cannot take the length of an e3nn Irrep)
        self.blocks = tuple((sl.start, sl.stop, mul, ir.dim, ir.l)
                            for (mul, ir), sl in zip(self.irreps, self.irreps.slices()))

    def forward(self, x: Tensor) -> Tensor:
        out, w_at, b_at = [], 0, 0
        for start, stop, mul, dim, degree in self.blocks:
            block = x[:, start:stop].reshape(-1, mul, dim)
            weight = self.weight[w_at:w_at + mul][None, :, None]
            w_at += mul
            if degree == 0:
                block = block - block.mean(dim=1, keepdim=True)
                block = block / torch.sqrt(block.pow(2).mean(dim=(1, 2), keepdim=True) + self.eps)
                block = block * weight + self.bias[b_at:b_at + mul][None, :, None]
                b_at += mul
            else:
                norm2 = block.pow(2).mean(dim=2, keepdim=True)  # (A, mul, 1)
                block = block / torch.sqrt(norm2.mean(dim=1, keepdim=True) + self.eps) * weight
            out.append(block.reshape(x.size(0), -1))
        return torch.cat(out, dim=1)


class DepthwiseTP(torch.nn.Module):
    """Channel-wise ("uvu") tensor product of node irreps with the edge spherical harmonics, every path
    up to ``lmax``; weights (E, weight_numel) per edge. Output irreps list the paths in order (not sorted)."""

    def __init__(self, irreps_in, irreps_sh, lmax: int):
        super().__init__()
        o3, _ = _require_e3nn()
        irreps_in, irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_sh)
        out, instructions = [], []
        for i_in, (mul, ir_in) in enumerate(irreps_in):
            for i_sh, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out.l <= lmax:
                        instructions.append((i_in, i_sh, len(out), "uvu", True))
                        out.append((mul, ir_out))
        self.irreps_out = o3.Irreps(out)
        self.tp = o3.TensorProduct(irreps_in, irreps_sh, self.irreps_out, instructions, shared_weights=False,
                                   internal_weights=False)
        self.weight_numel = self.tp.weight_numel

    def forward(self, x: Tensor, sh: Tensor, weight: Tensor) -> Tensor:
        return self.tp(x, sh, weight)


def _radial_mlp(n_in: int, hidden: int, n_out: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(Linear(n_in, hidden), SiLU(), Linear(hidden, hidden), SiLU(), Linear(hidden, n_out))


class GraphAttention(torch.nn.Module):
    """Equivariant MLP attention over the edges j -> i (see module docstring)."""

    def __init__(self, irreps_node, irreps_sh, c: EquiformerConfig):
        super().__init__()
        o3, _ = _require_e3nn()
        self.heads, self.alpha_channels = c.num_heads, c.alpha_channels
        for mul, ir in irreps_node:
            if mul % c.num_heads:
                raise ValueError(f"Equiformer: {mul}x{ir} channels do not split into {c.num_heads} heads")
        self.lin_src = o3.Linear(irreps_node, irreps_node)
        self.lin_dst = o3.Linear(irreps_node, irreps_node, biases=True)
        self.dtp = DepthwiseTP(irreps_node, irreps_sh, c.lmax)
        self.radial = _radial_mlp(c.num_rbf, c.radial_hidden, self.dtp.weight_numel)
        self.gate = _gate(irreps_node)
        alpha_irreps = o3.Irreps(f"{c.num_heads * c.alpha_channels}x0e")
        self.lin_msg = o3.Linear(self.dtp.irreps_out, alpha_irreps + self.gate.irreps_in)
        self.n_alpha = alpha_irreps.dim
        self.alpha_dot = torch.nn.Parameter(torch.randn(c.num_heads, c.alpha_channels) / math.sqrt(c.alpha_channels))
        self.lin_out = o3.Linear(self.gate.irreps_out, irreps_node)
        self.alpha_dropout = torch.nn.Dropout(c.alpha_drop) if c.alpha_drop > 0 else None
        head_of_dim = []  # the head of every component of the value irreps (channel groups per irrep)
        for mul, ir in self.gate.irreps_out:
            head_of_dim += [h for h in range(c.num_heads) for _ in range(mul // c.num_heads * ir.dim)]
        self.register_buffer("head_of_dim", torch.tensor(head_of_dim, dtype=torch.long), persistent=False)

    def forward(self, x: Tensor, edge_index: Tensor, sh: Tensor, rbf: Tensor, envelope: Tensor) -> Tensor:
        j, i = edge_index
        msg = self.dtp(self.lin_src(x)[j] + self.lin_dst(x)[i], sh, self.radial(rbf) * envelope[:, None])
        msg = self.lin_msg(msg)
        scores = torch.nn.functional.leaky_relu(msg[:, :self.n_alpha].reshape(-1, self.heads, self.alpha_channels),
                                                0.2)
        logits = (scores * self.alpha_dot).sum(dim=-1)  # (E, heads)
        # softmax over the incoming edges of i, weighted by the cutoff envelope (continuous at the cutoff)
        shift = scatter(logits.detach(), i, dim=0, dim_size=x.size(0), reduce="max")[i]
        weight = torch.exp(logits - shift) * envelope[:, None]
        alpha = weight / scatter(weight, i, dim=0, dim_size=x.size(0), reduce="sum")[i]
        if self.alpha_dropout is not None:
            alpha = self.alpha_dropout(alpha)
        value = self.gate(msg[:, self.n_alpha:]) * alpha[:, self.head_of_dim]
        return self.lin_out(scatter(value, i, dim=0, dim_size=x.size(0), reduce="sum"))


class FeedForward(torch.nn.Module):
    def __init__(self, irreps_node, multiplier: int, irreps_out=None):
        super().__init__()
        o3, _ = _require_e3nn()
        self.gate = _gate(irreps_node, multiplier)
        self.lin_in = o3.Linear(irreps_node, self.gate.irreps_in, biases=True)
        self.lin_out = o3.Linear(self.gate.irreps_out, irreps_node if irreps_out is None else irreps_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin_out(self.gate(self.lin_in(x)))


class TransformerBlock(torch.nn.Module):
    """Pre-norm attention and feed-forward with residuals; with ``irreps_out`` other than the node irreps the
    feed-forward maps to ``irreps_out`` and the residual goes through an equivariant linear shortcut."""

    def __init__(self, irreps_node, irreps_sh, c: EquiformerConfig, irreps_out=None):
        super().__init__()
        o3, _ = _require_e3nn()
        self.norm_attn = EquivariantLayerNorm(irreps_node)
        self.attn = GraphAttention(irreps_node, irreps_sh, c)
        self.norm_ffn = EquivariantLayerNorm(irreps_node)
        self.ffn = FeedForward(irreps_node, c.ffn_multiplier, irreps_out)
        self.shortcut = None
        if irreps_out is not None and o3.Irreps(irreps_out) != o3.Irreps(irreps_node):
            self.shortcut = o3.Linear(irreps_node, irreps_out, biases=True)

    def forward(self, x: Tensor, edge_index: Tensor, sh: Tensor, rbf: Tensor, envelope: Tensor) -> Tensor:
        x = x + self.attn(self.norm_attn(x), edge_index, sh, rbf, envelope)
        residual = x if self.shortcut is None else self.shortcut(x)
        return residual + self.ffn(self.norm_ffn(x))


class EdgeDegreeEmbedding(torch.nn.Module):
    """Initial l > 0 features: 1/sqrt(k) sum_j Lin(DTP(Emb(z_j), Y(r_ij); R(|r_ij|) f_c)) (node irreps)."""

    def __init__(self, irreps_node, irreps_sh, c: EquiformerConfig):
        super().__init__()
        o3, _ = _require_e3nn()
        scalars = o3.Irreps(f"{c.hidden_channels}x0e")
        self.emb = Embedding(c.max_z, c.hidden_channels)
        self.dtp = DepthwiseTP(scalars, irreps_sh, c.lmax)
        self.radial = _radial_mlp(c.num_rbf, c.radial_hidden, self.dtp.weight_numel)
        self.lin = o3.Linear(self.dtp.irreps_out, irreps_node)
        self.scale = 1.0 / math.sqrt(c.avg_num_neighbors)

    def forward(self, z: Tensor, edge_index: Tensor, sh: Tensor, rbf: Tensor, envelope: Tensor) -> Tensor:
        j, i = edge_index
        msg = self.lin(self.dtp(self.emb(z)[j], sh, self.radial(rbf) * envelope[:, None]))
        return scatter(msg, i, dim=0, dim_size=z.size(0), reduce="sum") * self.scale


class EquiformerStudent(Student):
    def __init__(self, config: EquiformerConfig | None = None):
        super().__init__()
        o3, _ = _require_e3nn()
        self.config = c = config or EquiformerConfig()
        if c.num_layers < 1:
            raise ValueError("Equiformer: num_layers must be >= 1 (the last block makes the scalar features)")
        self.irreps_node = o3.Irreps(node_irreps(c.hidden_channels, c.lmax))
        self.irreps_sh = o3.Irreps(node_irreps(1, c.lmax))  # 1x0e+1x1e+1x2e: SH of a pseudovector (SE(3))
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.register_buffer("rbf_centers", torch.linspace(0.0, c.cutoff, c.num_rbf), persistent=False)
        self.rbf_width = c.cutoff / max(c.num_rbf - 1, 1)
        self.atom_emb = Embedding(c.max_z, c.hidden_channels)
        self.degree_emb = EdgeDegreeEmbedding(self.irreps_node, self.irreps_sh, c)
        irreps_feature = o3.Irreps(f"{c.feature_channels}x0e")
        self.blocks = torch.nn.ModuleList([
            TransformerBlock(self.irreps_node, self.irreps_sh, c,
                             irreps_feature if k == c.num_layers - 1 else None) for k in range(c.num_layers)])
        self.norm = EquivariantLayerNorm(irreps_feature)
        self.head = torch.nn.Sequential(Linear(c.feature_channels, c.feature_channels), SiLU(),
                                        Linear(c.feature_channels, c.out_dim))
        self.pool_scale = 1.0 / math.sqrt(c.avg_num_nodes)
        self.feature_dim = c.feature_channels
        self.max_z = c.max_z
        self.out_dim = c.out_dim

    def encode(self, z: Tensor, pos: Tensor, batch: Tensor, sizes: GraphSizes) -> tuple[Tensor, Tensor]:
        c = self.config
        edge_index = radius_graph(pos, c.cutoff, batch, c.max_num_neighbors, sizes=sizes)
        j, i = edge_index
        vec = pos[i] - pos[j]
        dist = vec.norm(dim=-1)
        sh = self.sh(vec)
        rbf = torch.exp(-0.5 * ((dist[:, None] - self.rbf_centers) / self.rbf_width) ** 2)
        envelope = cosine_cutoff(dist, c.cutoff)

        x = self.degree_emb(z, edge_index, sh, rbf, envelope)
        x = torch.cat([x[:, :c.hidden_channels] + self.atom_emb(z), x[:, c.hidden_channels:]], dim=1)
        for block in self.blocks:
            x = block(x, edge_index, sh, rbf, envelope)
        scalars = self.norm(x)  # (A, feature_channels): the last block leaves scalars only
        feats = pool(scalars, batch, sizes.num_graphs, c.feature_pool) * self.pool_scale
        return feats, pool(self.head(scalars), batch, sizes.num_graphs, "sum") * self.pool_scale

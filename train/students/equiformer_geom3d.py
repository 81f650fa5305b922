"""Equiformer as Geom3D builds it and the EDG authors ran it on QM9 (student ``equiformer``; Liao & Smidt, ICLR 2023).

The model of ``Geom3D/models/Equiformer/equiformer_type_0.py`` (``EquiformerEnergy``; HongxinXiang/EDG ``EDG/Geom3D``,
equal to chao1224/Geom3D apart from also returning the pooled features) with the settings
``EDG/finetune_QM9_EDG.py`` gives it (``Equiformer_hyperparameter 0``): node irreps 128x0e+64x1e+32x2e, 6 blocks,
edge spherical harmonics 1x0e+1x1e+1x2e, 128 learned Gaussian RBFs, radial MLPs 128 -> 64 -> 64, 4 heads of
32x0e+16x1e+8x2e, linear messages, feed-forward 384x0e+192x1e+96x2e, last block -> 512x0e, attention dropout 0.2,
119 atom types, cutoff 5 Å. Module and parameter names are theirs, so their state dict loads as is.

Edges j -> i within the cutoff (``edge_src`` j, ``edge_dst`` i), r_ij = x_j - x_i (Å), Y(r_ij) the component-normalised
spherical harmonics of r_ij / |r_ij|, B(|r_ij|) the Gaussian RBFs, R(B) a radial MLP (Linear-LayerNorm-SiLU twice,
then Linear + offset), Lin the rescaled equivariant linear maps (``LinearRS``: e3nn tensor products without path
normalisation, weights N(0, 1/fan_in), a bias on the scalars), LN the equivariant layer norm
(``EquivariantLayerNormV2``: scalars centred over their channels, every irrep block scaled by the inverse RMS of its
components, a gain per channel, a bias on scalars), DTP the depthwise ("uvu") tensor product with per-edge weights:

    embed:     x_i = Lin(onehot(z_i)) + 1/sqrt(k) sum_j Lin(DTP(Lin(1), Y(r_ij); R(B_ij)))        k = 15.5793 (QM9)
    attention: m_ij = Lin(DTP(Lin_src(LN x)_j + Lin_dst(LN x)_i, Y(r_ij); R(B_ij)))  split per head h into
               (a_ij^h, v_ij^h);  alpha_ij^h = softmax_j(w_h . SmoothLeakyReLU(a_ij^h))  (plain softmax over the
               edges into i, no cutoff weighting);  x_i <- x_i + Lin(concat_h sum_j alpha_ij^h v_ij^h)
    feed-fwd:  x_i <- x_i + Lin(Gate(Lin(LN x_i)))  (last block: to 512x0e, the residual through Lin)
    output:    s_i = LN(x_i);  F_G = sum_i s_i / sqrt(N);  pred = sum_i Lin(SiLU(Lin(s_i))) / sqrt(N)   N = 18.0307

Activations are second-moment normalised as theirs (e3nn ``normalize2mom``: SiLU, the sigmoid gates and the attention
SmoothLeakyReLU(0.2) are scaled to unit second moment under N(0, 1)). Attention weights go through dropout
(``alpha_drop``) in training. Initialisation as theirs: tensor-product weights N(0, 1/fan_in) (the atom embedding
N(0, 1)), radial MLP biases 0, LayerNorms (1, 0), offsets U(+-1/sqrt(64)), RBF means U(0, 1) and widths U(1/128, 1),
``alpha_dot`` Glorot. Not reproduced: their ``.norm`` ``(batch=...)`` arguments (unused by this norm), dropout paths
that are off in these settings (projection, output, drop-path). On rMD17 the authors used another class
(``EquiformerEnergyForce``: non-linear messages, exponential RBFs), which the paper's tables do not include; this
student runs there with ``alpha_drop`` 0.

Args (``EquiformerGeom3DConfig``):
    irreps_node_embedding, irreps_sh, irreps_feature, irreps_head, irreps_mlp_mid: e3nn irreps strings (theirs).
    num_layers: blocks; num_heads: attention heads; num_basis: Gaussian RBFs; fc_neurons: radial MLP hidden widths.
    cutoff: radius (Å); max_num_neighbors: their radius graph's cap (1000). avg_num_neighbors, avg_num_nodes: the
    QM9 statistics that scale the degree embedding and the pooling. alpha_drop: attention dropout.
    max_z: atom types (their ``node_class`` 119). out_dim: outputs of the head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import LayerNorm, Linear, SiLU
from torch_geometric.nn.inits import glorot
from torch_geometric.utils import scatter, softmax

from .base import Student
from .graph import GraphSizes, radius_graph

__all__ = ["EquiformerGeom3DConfig", "EquiformerGeom3DStudent", "EquivariantLayerNormV2", "LinearRS",
           "depthwise_instructions"]


@dataclass
class EquiformerGeom3DConfig:
    irreps_node_embedding: str = "128x0e+64x1e+32x2e"
    num_layers: int = 6
    irreps_sh: str = "1x0e+1x1e+1x2e"
    irreps_feature: str = "512x0e"
    irreps_head: str = "32x0e+16x1e+8x2e"
    num_heads: int = 4
    irreps_mlp_mid: str = "384x0e+192x1e+96x2e"
    num_basis: int = 128
    fc_neurons: tuple[int, ...] = (64, 64)
    cutoff: float = 5.0  # Å
    max_num_neighbors: int | None = 1000
    avg_num_neighbors: float = 15.57930850982666  # their _AVG_DEGREE (QM9, cutoff 5 Å)
    avg_num_nodes: float = 18.03065905448718  # their _AVG_NUM_NODES (QM9)
    alpha_drop: float = 0.2
    max_z: int = 119
    out_dim: int = 1


def _e3nn():
    try:
        from e3nn import o3
        from e3nn.math import normalize2mom
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the Equiformer students need e3nn: pip install e3nn") from err
    return o3, normalize2mom


# ---------------------------------------------------------------- e3nn building blocks
class RescaledTensorProduct(torch.nn.Module):
    """An e3nn tensor product without path normalisation; internal weights N(0, 1/fan_in), fan_in of an output
    irrep the input multiplicities summed over the paths into it; a bias on every 0e block of the output."""

    def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions, bias: bool = True,
                 internal_weights: bool = True):
        super().__init__()
        o3, _ = _e3nn()
        self.tp = o3.TensorProduct(irreps_in1, irreps_in2, irreps_out, instructions, internal_weights=internal_weights,
                                   shared_weights=internal_weights, path_normalization="none")
        self.irreps_out = self.tp.irreps_out
        simple = self.irreps_out.simplify()
        self.bias_slices = [(sl.start, sl.stop) for (_, ir), sl in zip(simple, simple.slices())
                            if bias and ir.l == 0 and ir.p == 1]
        self.bias = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(b - a)) for a, b in self.bias_slices])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.tp.internal_weights:
                fan: dict[int, int] = {}
                for ins in self.tp.instructions:
                    m1, m2 = self.tp.irreps_in1[ins.i_in1].mul, self.tp.irreps_in2[ins.i_in2].mul
                    fan[ins.i_out] = fan.get(ins.i_out, 0) + (m1 * m2 if ins.connection_mode == "uvw" else m2)
                self.tp.weight.normal_()
                for w, ins in zip(self.tp.weight_views(), self.tp.instructions):
                    w.mul_(fan[ins.i_out] ** -0.5)
            for b in self.bias:
                b.zero_()

    def forward(self, x: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
        out = self.tp(x, y, weight)
        if not self.bias_slices:
            return out
        pieces, at = [], 0
        for (a, b), bias in zip(self.bias_slices, self.bias):
            pieces += [out.new_zeros(a - at), bias.to(out.dtype)]
            at = b
        pieces.append(out.new_zeros(out.size(-1) - at))
        return out + torch.cat(pieces)


def _fully_connected(irreps_in1, irreps_in2, irreps_out) -> list[tuple]:
    return [(i1, i2, io, "uvw", True, 1.0) for i1, (_, ir1) in enumerate(irreps_in1)
            for i2, (_, ir2) in enumerate(irreps_in2) for io, (_, ir_o) in enumerate(irreps_out) if ir_o in ir1 * ir2]


class FullyConnectedRS(RescaledTensorProduct):
    """Every path ``irreps_in1 x irreps_in2 -> irreps_out`` with its own weights ("uvw")."""

    def __init__(self, irreps_in1, irreps_in2, irreps_out, bias: bool = True):
        o3, _ = _e3nn()
        irreps_in1, irreps_in2, irreps_out = o3.Irreps(irreps_in1), o3.Irreps(irreps_in2), o3.Irreps(irreps_out)
        super().__init__(irreps_in1, irreps_in2, irreps_out, _fully_connected(irreps_in1, irreps_in2, irreps_out),
                         bias=bias)


class LinearRS(FullyConnectedRS):
    """The equivariant linear map ``irreps_in -> irreps_out``: the tensor product with a constant 1x0e."""

    def __init__(self, irreps_in, irreps_out, bias: bool = True):
        super().__init__(irreps_in, "1x0e", irreps_out, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x, torch.ones_like(x[:, :1]))


def irreps_to_gate(irreps):
    """(scalars 0e, gates: one 0e per gated irrep, gated l > 0) of ``irreps``, each simplified."""
    o3, _ = _e3nn()
    scalars = o3.Irreps([(m, ir) for m, ir in irreps if ir.l == 0 and ir.p == 1]).simplify()
    gated = o3.Irreps([(m, ir) for m, ir in irreps if not (ir.l == 0 and ir.p == 1)]).simplify()
    gates = o3.Irreps([(m, "0e") for m, _ in gated]).simplify() if gated.dim else o3.Irreps("")
    return scalars, gates, gated


class ScalarActivation(torch.nn.Module):
    """``act`` scaled to unit second moment under N(0, 1) (e3nn ``normalize2mom``), on scalar features."""

    def __init__(self, act):
        super().__init__()
        _, normalize2mom = _e3nn()
        self.act = normalize2mom(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x)


class Gate(torch.nn.Module):
    """[SiLU(scalars), sigmoid(gates) * gated] with both activations second-moment normalised."""

    def __init__(self, irreps_out):
        super().__init__()
        o3, _ = _e3nn()
        scalars, gates, gated = irreps_to_gate(o3.Irreps(irreps_out))
        self.irreps_in = (scalars + gates + gated).simplify()
        self.n_scalars, self.n_gates = scalars.dim, gates.dim
        self.act_scalars = ScalarActivation(SiLU())
        self.act_gates = ScalarActivation(torch.sigmoid)
        self.mul = o3.ElementwiseTensorProduct(gated, gates) if gated.dim else None

    def forward(self, x: Tensor) -> Tensor:
        s = self.act_scalars(x[:, :self.n_scalars])
        if self.mul is None:
            return s
        gates = self.act_gates(x[:, self.n_scalars:self.n_scalars + self.n_gates])
        return torch.cat([s, self.mul(x[:, self.n_scalars + self.n_gates:], gates)], dim=-1)


class GatedFullyConnectedRS(FullyConnectedRS):
    """A fully connected tensor product to the gate's input irreps, then the gate (``irreps_out`` after it)."""

    def __init__(self, irreps_in1, irreps_in2, irreps_out, bias: bool = True):
        gate = Gate(irreps_out)
        super().__init__(irreps_in1, irreps_in2, gate.irreps_in, bias=bias)
        self.gate = gate

    def forward(self, x: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
        return self.gate(super().forward(x, y, weight))


def depthwise_instructions(irreps_in, irreps_sh, irreps_keep):
    """The "uvu" paths of ``irreps_in x irreps_sh`` to every irrep in ``irreps_keep`` (and 0e), one output irrep
    per path, outputs sorted by degree with even parity first (their ``sort_irreps_even_first``, stable):
    ``(output irreps, instructions)``."""
    o3, _ = _e3nn()
    irreps_in, irreps_sh, irreps_keep = o3.Irreps(irreps_in), o3.Irreps(irreps_sh), o3.Irreps(irreps_keep)
    outs, paths = [], []
    for i, (mul, ir_in) in enumerate(irreps_in):
        for j, (_, ir_sh) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_sh:
                if ir_out in irreps_keep or ir_out == o3.Irrep("0e"):
                    paths.append((i, j, len(outs)))
                    outs.append((mul, ir_out))
    order = sorted(range(len(outs)), key=lambda k: (outs[k][1].l, -outs[k][1].p, k))
    place = {k: n for n, k in enumerate(order)}
    return o3.Irreps([outs[k] for k in order]), [(i, j, place[k], "uvu", True) for i, j, k in paths]


class RadialProfile(torch.nn.Module):
    """R(B) = Linear(... SiLU(LayerNorm(Linear(B))) ...) + offset: ``channels`` = [in, hidden..., out], the last
    Linear without bias."""

    def __init__(self, channels: list[int]):
        super().__init__()
        layers: list[torch.nn.Module] = []
        for k in range(1, len(channels)):
            last = k == len(channels) - 1
            layers.append(Linear(channels[k - 1], channels[k], bias=not last))
            if not last:
                layers += [LayerNorm(channels[k]), SiLU()]
        self.net = torch.nn.Sequential(*layers)
        self.offset = torch.nn.Parameter(torch.zeros(channels[-1]))
        self.fan_in = channels[-2]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.net:
            if isinstance(m, Linear):
                m.reset_parameters()
                if m.bias is not None:
                    torch.nn.init.zeros_(m.bias)
            elif isinstance(m, LayerNorm):
                m.reset_parameters()
        bound = 1 / math.sqrt(self.fan_in) if self.fan_in > 0 else 0.0
        torch.nn.init.uniform_(self.offset, -bound, bound)

    def forward(self, rbf: Tensor) -> Tensor:
        return self.net(rbf) + self.offset


class SeparableTP(torch.nn.Module):
    """Lin(DTP(x_edge, Y; R(B))): the depthwise tensor product with radial weights, then a linear map."""

    def __init__(self, irreps_in, irreps_sh, irreps_out, radial: list[int]):
        super().__init__()
        irreps_dtp, instructions = depthwise_instructions(irreps_in, irreps_sh, irreps_out)
        self.dtp = RescaledTensorProduct(irreps_in, irreps_sh, irreps_dtp, instructions, bias=False,
                                         internal_weights=False)
        self.dtp_rad = RadialProfile([*radial, self.dtp.tp.weight_numel])
        self.lin = LinearRS(self.dtp.irreps_out.simplify(), irreps_out)

    def forward(self, x: Tensor, sh: Tensor, rbf: Tensor) -> Tensor:
        return self.lin(self.dtp(x, sh, self.dtp_rad(rbf)))


class EquivariantLayerNormV2(torch.nn.Module):
    """For each irrep block (N, mul, 2l+1), scalars first centred over their mul channels: x times (mean over
    channels and components of its square + eps)^-1/2, times a per-channel gain; plus a bias on 0e channels."""

    def __init__(self, irreps, eps: float = 1e-5):
        super().__init__()
        o3, _ = _e3nn()
        self.irreps = o3.Irreps(irreps)
        self.eps = eps
        self.affine_weight = torch.nn.Parameter(torch.ones(self.irreps.num_irreps))
        self.affine_bias = torch.nn.Parameter(torch.zeros(sum(m for m, ir in self.irreps if ir.l == 0 and ir.p == 1)))

    def reset_parameters(self) -> None:
        torch.nn.init.ones_(self.affine_weight)
        torch.nn.init.zeros_(self.affine_bias)

    def forward(self, x: Tensor) -> Tensor:
        out, ix, iw, ib = [], 0, 0, 0
        for mul, ir in self.irreps:
            d = ir.dim
            f = x[:, ix:ix + mul * d].reshape(-1, mul, d)
            ix += mul * d
            if ir.l == 0 and ir.p == 1:
                f = f - f.mean(dim=1, keepdim=True)
            scale = (f.pow(2).mean(dim=-1).mean(dim=1, keepdim=True) + self.eps).pow(-0.5)
            f = f * (scale * self.affine_weight[None, iw:iw + mul])[:, :, None]
            iw += mul
            if d == 1 and ir.p == 1:
                f = f + self.affine_bias[ib:ib + mul].reshape(mul, 1)
                ib += mul
            out.append(f.reshape(-1, mul * d))
        return torch.cat(out, dim=-1)


class GaussianRBF(torch.nn.Module):
    """B_k(d) = N(w d / c + b; mu_k, |s_k| + 1e-5): learned means, widths and affine map of d / cutoff (their pi =
    3.14159 in the normaliser)."""

    def __init__(self, num_basis: int, cutoff: float):
        super().__init__()
        self.num_basis, self.cutoff = num_basis, float(cutoff)
        self.mean = torch.nn.Parameter(torch.zeros(1, num_basis))
        self.std = torch.nn.Parameter(torch.zeros(1, num_basis))
        self.weight = torch.nn.Parameter(torch.ones(1, 1))
        self.bias = torch.nn.Parameter(torch.zeros(1, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.uniform_(self.mean, 0.0, 1.0)
        torch.nn.init.uniform_(self.std, 1.0 / self.num_basis, 1.0)
        torch.nn.init.ones_(self.weight)
        torch.nn.init.zeros_(self.bias)

    def forward(self, dist: Tensor) -> Tensor:
        x = (self.weight * (dist / self.cutoff)[:, None] + self.bias).expand(-1, self.num_basis)
        std = self.std.abs() + 1e-5
        return torch.exp(-0.5 * ((x - self.mean) / std) ** 2) / ((2 * 3.14159) ** 0.5 * std)


def _smooth_leaky_relu(x: Tensor, alpha: float = 0.2) -> Tensor:
    return (1 + alpha) / 2 * x + (1 - alpha) / 2 * x * (2 * torch.sigmoid(x) - 1)


class _SmoothLeakyReLU(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _smooth_leaky_relu(x)


# ---------------------------------------------------------------- the model
class NodeEmbedding(torch.nn.Module):
    """x_i = Lin(onehot(z_i)) into the node irreps (only the scalars get weights), weights N(0, 1)."""

    def __init__(self, irreps_node, max_z: int):
        super().__init__()
        self.max_z = max_z
        self.atom_type_lin = LinearRS(f"{max_z}x0e", irreps_node)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.atom_type_lin.reset_parameters()
        with torch.no_grad():
            self.atom_type_lin.tp.weight.mul_(self.max_z ** 0.5)

    def forward(self, z: Tensor, dtype: torch.dtype) -> Tensor:
        onehot = torch.zeros(z.size(0), self.max_z, dtype=dtype, device=z.device).scatter_(1, z[:, None], 1.0)
        return self.atom_type_lin(onehot)


class EdgeDegreeEmbedding(torch.nn.Module):
    def __init__(self, irreps_node, irreps_sh, radial: list[int], avg_degree: float):
        super().__init__()
        self.exp = LinearRS("1x0e", irreps_node)
        irreps_dtp, instructions = depthwise_instructions(irreps_node, irreps_sh, irreps_node)
        self.dw = RescaledTensorProduct(irreps_node, irreps_sh, irreps_dtp, instructions, bias=False,
                                        internal_weights=False)
        self.rad = RadialProfile([*radial, self.dw.tp.weight_numel])
        self.proj = LinearRS(self.dw.irreps_out.simplify(), irreps_node)
        self.scale = avg_degree ** -0.5

    def forward(self, like: Tensor, sh: Tensor, rbf: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        h = self.exp(torch.ones_like(like[:, :1]))
        msg = self.proj(self.dw(h[src], sh, self.rad(rbf)))
        return scatter(msg, dst, dim=0, dim_size=like.size(0), reduce="sum") * self.scale


class GraphAttention(torch.nn.Module):
    def __init__(self, irreps_node, irreps_sh, irreps_head, num_heads: int, radial: list[int], alpha_drop: float):
        super().__init__()
        o3, _ = _e3nn()
        irreps_node, irreps_head = o3.Irreps(irreps_node), o3.Irreps(irreps_head)
        self.merge_src = LinearRS(irreps_node, irreps_node, bias=True)
        self.merge_dst = LinearRS(irreps_node, irreps_node, bias=False)
        heads = o3.Irreps(sorted(((m * num_heads, ir) for m, ir in irreps_head),
                                 key=lambda t: (t[1].l, -t[1].p))).simplify()  # their sort_irreps_even_first
        mul_alpha = sum(m for m, ir in heads if ir.l == 0 and ir.p == 1)
        self.num_heads, self.mul_alpha_head = num_heads, mul_alpha // num_heads
        self.sep = SeparableTP(irreps_node, irreps_sh, (o3.Irreps(f"{mul_alpha}x0e") + heads).simplify(), radial)
        # per head: [alpha scalars, value irreps], the blocks of the separable output split over the heads
        self.head_blocks = [(m * ir.dim) for m, ir in self.sep.lin.irreps_out]
        self.value_blocks = [(m * ir.dim) for m, ir in irreps_head]
        self.alpha_act = ScalarActivation(_SmoothLeakyReLU())
        self.alpha_dot = torch.nn.Parameter(torch.zeros(1, num_heads, self.mul_alpha_head))
        self.alpha_dropout = torch.nn.Dropout(alpha_drop) if alpha_drop else None
        self.proj = LinearRS(heads, irreps_node)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        glorot(self.alpha_dot)

    def forward(self, x: Tensor, src: Tensor, dst: Tensor, sh: Tensor, rbf: Tensor) -> Tensor:
        msg = self.sep(self.merge_src(x)[src] + self.merge_dst(x)[dst], sh, rbf)
        msg = torch.cat([b.reshape(b.size(0), self.num_heads, -1) for b in msg.split(self.head_blocks, dim=1)], dim=2)
        alpha = self.alpha_act(msg[:, :, :self.mul_alpha_head])
        value = msg[:, :, self.mul_alpha_head:]
        alpha = softmax(torch.einsum("bik,aik->bi", alpha, self.alpha_dot), dst, num_nodes=x.size(0))[:, :, None]
        if self.alpha_dropout is not None:
            alpha = self.alpha_dropout(alpha)
        attn = scatter(value * alpha, dst, dim=0, dim_size=x.size(0), reduce="sum")  # (N, heads, value dim)
        attn = torch.cat([b.reshape(b.size(0), -1) for b in attn.split(self.value_blocks, dim=2)], dim=1)
        return self.proj(attn)


class FeedForward(torch.nn.Module):
    def __init__(self, irreps_node, irreps_mid, irreps_out):
        super().__init__()
        self.fctp_1 = GatedFullyConnectedRS(irreps_node, "1x0e", irreps_mid)
        self.fctp_2 = FullyConnectedRS(irreps_mid, "1x0e", irreps_out)

    def forward(self, x: Tensor, attr: Tensor) -> Tensor:
        return self.fctp_2(self.fctp_1(x, attr), attr)


class TransBlock(torch.nn.Module):
    def __init__(self, c: EquiformerGeom3DConfig, irreps_out):
        super().__init__()
        o3, _ = _e3nn()
        node, radial = o3.Irreps(c.irreps_node_embedding), [c.num_basis, *c.fc_neurons]
        self.norm_1 = EquivariantLayerNormV2(node)
        self.ga = GraphAttention(node, c.irreps_sh, c.irreps_head, c.num_heads, radial, c.alpha_drop)
        self.norm_2 = EquivariantLayerNormV2(node)
        self.ffn = FeedForward(node, c.irreps_mlp_mid, irreps_out)
        self.ffn_shortcut = FullyConnectedRS(node, "1x0e", irreps_out) if o3.Irreps(irreps_out) != node else None

    def forward(self, x: Tensor, attr: Tensor, src: Tensor, dst: Tensor, sh: Tensor, rbf: Tensor) -> Tensor:
        x = x + self.ga(self.norm_1(x), src, dst, sh, rbf)
        h = self.ffn(self.norm_2(x), attr)
        return (x if self.ffn_shortcut is None else self.ffn_shortcut(x, attr)) + h


class EquiformerGeom3DStudent(Student):
    def __init__(self, config: EquiformerGeom3DConfig | None = None):
        super().__init__()
        o3, _ = _e3nn()
        self.config = c = config or EquiformerGeom3DConfig()
        if c.num_layers < 1:
            raise ValueError("Equiformer: num_layers must be >= 1 (the last block makes the output features)")
        feature = o3.Irreps(c.irreps_feature)
        if feature.lmax != 0:
            raise ValueError(f"Equiformer: irreps_feature must be scalars (F_G), got {c.irreps_feature}")
        self.irreps_sh = o3.Irreps(c.irreps_sh)
        self.atom_embed = NodeEmbedding(c.irreps_node_embedding, c.max_z)
        self.rbf = GaussianRBF(c.num_basis, c.cutoff)
        self.edge_deg_embed = EdgeDegreeEmbedding(c.irreps_node_embedding, c.irreps_sh, [c.num_basis, *c.fc_neurons],
                                                  c.avg_num_neighbors)
        self.blocks = torch.nn.ModuleList([TransBlock(c, feature if k == c.num_layers - 1 else c.irreps_node_embedding)
                                           for k in range(c.num_layers)])
        self.norm = EquivariantLayerNormV2(feature)
        self.head = torch.nn.Sequential(LinearRS(feature, feature), ScalarActivation(SiLU()),
                                        LinearRS(feature, f"{c.out_dim}x0e"))
        self.pool_scale = c.avg_num_nodes ** -0.5
        self.feature_dim, self.out_dim, self.max_z = feature.dim, c.out_dim, c.max_z

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters") and isinstance(
                    m, (RescaledTensorProduct, RadialProfile, EquivariantLayerNormV2, GaussianRBF, GraphAttention)):
                m.reset_parameters()
        self.atom_embed.reset_parameters()  # after its LinearRS: the N(0, 1) scaling

    def encode(self, z: Tensor, pos: Tensor, batch: Tensor, sizes: GraphSizes) -> tuple[Tensor, Tensor]:
        o3, _ = _e3nn()
        c = self.config
        src, dst = radius_graph(pos, c.cutoff, batch, c.max_num_neighbors, sizes=sizes)
        vec = pos[src] - pos[dst]
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")
        rbf = self.rbf(vec.norm(dim=1))
        x = self.atom_embed(z, pos.dtype)
        x = x + self.edge_deg_embed(x, sh, rbf, src, dst)
        attr = torch.ones_like(x[:, :1])
        for block in self.blocks:
            x = block(x, attr, src, dst, sh, rbf)
        x = self.norm(x)
        feats = scatter(x, batch, dim=0, dim_size=sizes.num_graphs, reduce="sum") * self.pool_scale
        pred = scatter(self.head(x), batch, dim=0, dim_size=sizes.num_graphs, reduce="sum") * self.pool_scale
        return feats, pred

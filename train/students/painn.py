"""PaiNN student: polarizable atom interaction neural network (Schütt, Unke & Gastegger, ICML 2021).

Atoms carry scalars s_i (F) and vectors v_i (3, F), v_i = 0 at the start; r_ij = x_j - x_i (Å),
RBF_n(r) = sin(n pi r / c) / r (n = 1..num_rbf) and the cosine cutoff f_c. Each layer applies

    message:  [a, b, g]_ij = phi(s_j) * W(RBF(|r_ij|)) f_c(|r_ij|)          (3F each)
              s_i <- s_i + sum_j a_ij
              v_i <- v_i + sum_j (b_ij * v_j + g_ij * r_ij / |r_ij|)
    update:   [a_vv, a_sv, a_ss]_i = MLP(s_i, |V v_i|)
              v_i <- v_i + a_vv * (U v_i)
              s_i <- s_i + a_sv * <U v_i, V v_i> + a_ss

with U, V bias-free linear maps over features. F_G = sum_i s_i and pred = sum_i MLP_out(s_i)
(F -> F/2 -> out_dim). |.| of vector features uses sqrt(|v|^2 + 1e-8) so that the gradient exists at v = 0.

Defaults are the paper's (F = 128, 3 layers, 20 RBFs, cutoff 5 Å, SiLU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import Linear, SiLU
from torch_geometric.utils import scatter

from .base import Student, pool
from .egnn import cosine_cutoff
from .graph import GraphSizes, radius_graph


@dataclass
class PaiNNConfig:
    hidden_channels: int = 128
    num_layers: int = 3
    num_rbf: int = 20
    cutoff: float = 5.0  # Å
    max_num_neighbors: int = 32
    max_z: int = 100
    feature_pool: str = "sum"
    out_dim: int = 1


def _vector_norm(v: Tensor) -> Tensor:
    return torch.sqrt(v.pow(2).sum(dim=-2) + 1e-8)


class PaiNNMessage(torch.nn.Module):
    def __init__(self, hidden: int, num_rbf: int):
        super().__init__()
        self.hidden = hidden
        self.phi = torch.nn.Sequential(Linear(hidden, hidden), SiLU(), Linear(hidden, 3 * hidden))
        self.filter = Linear(num_rbf, 3 * hidden)

    def forward(self, s: Tensor, v: Tensor, edge_index: Tensor, rbf: Tensor, envelope: Tensor,
                unit: Tensor) -> tuple[Tensor, Tensor]:
        j, i = edge_index
        x = self.phi(s)[j] * self.filter(rbf) * envelope
        a, b, g = torch.split(x, self.hidden, dim=-1)
        dv = v[j] * b.unsqueeze(1) + unit.unsqueeze(-1) * g.unsqueeze(1)  # (E, 3, F)
        return (s + scatter(a, i, dim=0, dim_size=s.size(0), reduce="sum"),
                v + scatter(dv, i, dim=0, dim_size=v.size(0), reduce="sum"))


class PaiNNUpdate(torch.nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.U = Linear(hidden, hidden, bias=False)
        self.V = Linear(hidden, hidden, bias=False)
        self.mlp = torch.nn.Sequential(Linear(2 * hidden, hidden), SiLU(), Linear(hidden, 3 * hidden))

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        uv, vv = self.U(v), self.V(v)
        a = self.mlp(torch.cat([s, _vector_norm(vv)], dim=-1))
        a_vv, a_sv, a_ss = torch.split(a, self.hidden, dim=-1)
        return s + a_sv * (uv * vv).sum(dim=1) + a_ss, v + a_vv.unsqueeze(1) * uv


class PaiNNStudent(Student):
    def __init__(self, config: PaiNNConfig | None = None):
        super().__init__()
        self.config = c = config or PaiNNConfig()
        self.embedding = torch.nn.Embedding(c.max_z, c.hidden_channels)
        self.messages = torch.nn.ModuleList([PaiNNMessage(c.hidden_channels, c.num_rbf) for _ in range(c.num_layers)])
        self.updates = torch.nn.ModuleList([PaiNNUpdate(c.hidden_channels) for _ in range(c.num_layers)])
        self.head = torch.nn.Sequential(Linear(c.hidden_channels, c.hidden_channels // 2), SiLU(),
                                        Linear(c.hidden_channels // 2, c.out_dim))
        self.register_buffer("freqs", torch.arange(1, c.num_rbf + 1) * math.pi / c.cutoff)
        self.feature_dim = c.hidden_channels
        self.out_dim = c.out_dim

    def encode(self, z: Tensor, pos: Tensor, batch: Tensor, sizes: GraphSizes) -> tuple[Tensor, Tensor]:
        c = self.config
        edge_index = radius_graph(pos, c.cutoff, batch, c.max_num_neighbors, sizes=sizes)
        j, i = edge_index
        vec = pos[j] - pos[i]
        dist = vec.norm(dim=-1, keepdim=True)
        rbf = torch.sin(dist * self.freqs.to(dist.dtype)) / dist
        envelope = cosine_cutoff(dist, c.cutoff)
        s = self.embedding(z)
        v = s.new_zeros(s.size(0), 3, s.size(1))
        for message, update in zip(self.messages, self.updates):
            s, v = message(s, v, edge_index, rbf, envelope, vec / dist)
            s, v = update(s, v)
        return pool(s, batch, sizes.num_graphs, c.feature_pool), pool(self.head(s), batch, sizes.num_graphs, "sum")

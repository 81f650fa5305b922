"""EGNN student: E(n)-equivariant graph neural network (Satorras, Hoogeboom & Welling, ICML 2021).

Per layer, over the fully connected graph of each molecule (or a radius graph, cutoff in Å), with
d_ij = |x_i - x_j| and C(d_ij) = 1 (or, with ``envelope``, a smooth cosine cutoff):

    m_ij  = C(d_ij) * phi_e(h_i, h_j, d_ij^2)                 (edge MLP, SiLU)
    e_ij  = sigmoid(phi_inf(m_ij))                             (attention gate; 1 without attention)
    h_i  <- h_i + phi_h(h_i, sum_j e_ij m_ij)                  (node MLP, residual)
    x_i  <- x_i + mean_j (x_i - x_j) phi_x(m_ij)               (only with update_coords)

then F_G = mean_i phi_dec(h_i) (node decoder, mean pooling) and pred = phi_graph(F_G) (Linear, SiLU, Linear).
Energies are invariant and forces (-dE/dx) equivariant under rotations, reflections and translations.

Defaults are the Geom3D EGNN the paper ran for QM9 (``EDG/finetune_QM9_EDG.py``): 7 layers, 128 hidden, SiLU,
attention, no coordinate updates, fully connected graph (``cutoff=None``), mean pooling (``global_mean_pool``),
no envelope. The authors' rMD17 script uses a 5 Å radius graph instead (``EGNN_radius_cutoff``; see
``train/paper_settings.py``); a hard cutoff makes the energy jump when an atom crosses it, which
``envelope=True`` (a cosine cutoff on the messages, not in the paper) removes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import Linear, SiLU
from torch_geometric.utils import scatter

from .base import Student, pool
from .graph import GraphSizes, radius_graph, radius_graph_torch


@dataclass
class EGNNConfig:
    hidden_channels: int = 128
    num_layers: int = 7
    cutoff: float | None = None  # Å; None: every pair of atoms of a molecule (fully connected)
    max_num_neighbors: int | None = None  # with a cutoff: keep at most this many nearest neighbours
    envelope: bool = False  # multiply messages by a cosine cutoff (needs a cutoff)
    attention: bool = True
    update_coords: bool = False
    max_z: int = 100
    feature_pool: str = "mean"
    out_dim: int = 1


def cosine_cutoff(d: Tensor, cutoff: float) -> Tensor:
    """0.5 (cos(pi d / c) + 1) for d < c, else 0."""
    return 0.5 * (torch.cos(d * math.pi / cutoff) + 1.0) * (d < cutoff).to(d.dtype)


def mlp(n_in: int, n_hidden: int, n_out: int, act_last: bool = False) -> torch.nn.Sequential:
    layers = [Linear(n_in, n_hidden), SiLU(), Linear(n_hidden, n_out)]
    return torch.nn.Sequential(*layers, SiLU()) if act_last else torch.nn.Sequential(*layers)


class EGNNLayer(torch.nn.Module):
    """One E(n)-equivariant layer (equations in the module docstring)."""

    def __init__(self, hidden: int, attention: bool, update_coords: bool):
        super().__init__()
        self.edge_mlp = mlp(2 * hidden + 1, hidden, hidden, act_last=True)
        self.node_mlp = mlp(2 * hidden, hidden, hidden)
        self.att = torch.nn.Sequential(Linear(hidden, 1), torch.nn.Sigmoid()) if attention else None
        self.coord_mlp = None
        if update_coords:
            last = Linear(hidden, 1, bias=False)
            torch.nn.init.xavier_uniform_(last.weight, gain=0.001)  # small first steps, as in the EGNN code
            self.coord_mlp = torch.nn.Sequential(Linear(hidden, hidden), SiLU(), last)

    def forward(self, h: Tensor, x: Tensor, edge_index: Tensor, envelope: Tensor | float
                ) -> tuple[Tensor, Tensor]:
        j, i = edge_index
        diff = x[i] - x[j]
        m = self.edge_mlp(torch.cat([h[i], h[j], diff.pow(2).sum(-1, keepdim=True)], dim=-1)) * envelope
        if self.coord_mlp is not None:
            x = x + scatter(diff * self.coord_mlp(m), i, dim=0, dim_size=x.size(0), reduce="mean")
        if self.att is not None:
            m = m * self.att(m)
        agg = scatter(m, i, dim=0, dim_size=h.size(0), reduce="sum")
        return h + self.node_mlp(torch.cat([h, agg], dim=-1)), x


class EGNNStudent(Student):
    def __init__(self, config: EGNNConfig | None = None):
        super().__init__()
        self.config = c = config or EGNNConfig()
        if c.envelope and c.cutoff is None:
            raise ValueError("EGNN: envelope=True needs a cutoff (the fully connected graph has none)")
        self.embedding = torch.nn.Embedding(c.max_z, c.hidden_channels)
        self.layers = torch.nn.ModuleList(
            [EGNNLayer(c.hidden_channels, c.attention, c.update_coords) for _ in range(c.num_layers)])
        self.node_dec = mlp(c.hidden_channels, c.hidden_channels, c.hidden_channels)
        self.graph_dec = mlp(c.hidden_channels, c.hidden_channels, c.out_dim)
        self.feature_dim = c.hidden_channels
        self.out_dim = c.out_dim

    def encode(self, z: Tensor, pos: Tensor, batch: Tensor, sizes: GraphSizes) -> tuple[Tensor, Tensor]:
        c = self.config
        if c.cutoff is None:  # every ordered pair i != j of a molecule
            edge_index = radius_graph_torch(pos, float("inf"), batch, max_num_neighbors=None, sizes=sizes)
        else:
            edge_index = radius_graph(pos, c.cutoff, batch, c.max_num_neighbors, sizes=sizes)
        envelope = 1.0
        if c.envelope:
            j, i = edge_index
            envelope = cosine_cutoff((pos[i] - pos[j]).norm(dim=-1), c.cutoff).unsqueeze(-1)
        h, x = self.embedding(z), pos
        for layer in self.layers:
            h, x = layer(h, x, edge_index, envelope)
        feats = pool(self.node_dec(h), batch, sizes.num_graphs, c.feature_pool)
        return feats, self.graph_dec(feats)

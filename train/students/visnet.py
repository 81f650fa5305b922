"""ViSNet student (Wang et al., 2022/2024) wrapping ``torch_geometric.nn.models.ViSNet``.

The representation block (``ViSNetBlock``) maps atoms to scalar features x_i (hidden) and vector features
v_i ((lmax+1)^2 - 1, hidden) by vector-scalar interactive message passing over the radius graph with
self-loops. F_G = sum_i x_i (the paper pools ViSNet by sum); pred = sum_i GatedEquivariant2(x_i, v_i)
(two gated equivariant blocks, hidden -> hidden/2 -> out_dim, as PyG's ``EquivariantScalar``).

Defaults are the ViSNet the paper ran on rMD17 (``EDG-for-VisNet/examples/ViSNet-rMD17.yml``: 256 hidden,
9 layers, lmax 2, 8 heads, 32 expnorm RBFs (not trainable), cutoff 5 Å, at most 32 neighbours, no vector
norm, no vertex angles, sum readout; about 9.8 M parameters), not PyG's smaller defaults (128 / 6 / lmax 1).
The graph step is ours (``train.students.graph.radius_graph``): PyG's needs pyg-lib, and its self-loop edge lengths are
created as float32 whatever the input dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.nn.models import ViSNet
from torch_geometric.nn.models.visnet import GatedEquivariantBlock

from .base import Student, pool
from .graph import GraphSizes, radius_graph


@dataclass
class ViSNetConfig:
    lmax: int = 2
    num_heads: int = 8
    num_layers: int = 9
    hidden_channels: int = 256
    num_rbf: int = 32
    trainable_rbf: bool = False
    cutoff: float = 5.0  # Å
    max_num_neighbors: int = 32
    vecnorm_type: str | None = None
    vertex: bool = False
    feature_pool: str = "sum"
    out_dim: int = 1


class SelfLoopRadiusDistance(torch.nn.Module):
    """``(pos, batch) -> (edge_index, edge_weight, edge_vec)`` with self-loops, as ViSNet's ``Distance``.

    edge_vec = pos[j] - pos[i] (Å), edge_weight = |edge_vec| (0 on self-loops, without a NaN gradient).
    Self-loops are masked arithmetically (no boolean indexing: no host sync).
    """

    def __init__(self, cutoff: float, max_num_neighbors: int):
        super().__init__()
        self.cutoff = cutoff
        self.max_num_neighbors = max_num_neighbors

    def forward(self, pos: Tensor, batch: Tensor, sizes: GraphSizes | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        edge_index = radius_graph(pos, self.cutoff, batch, self.max_num_neighbors, loop=True, sizes=sizes)
        edge_vec = pos[edge_index[0]] - pos[edge_index[1]]
        not_loop = (edge_index[0] != edge_index[1])[:, None]
        safe = torch.where(not_loop, edge_vec, torch.ones_like(edge_vec))  # no 0/0 in the norm's gradient
        edge_weight = torch.where(not_loop, safe, torch.zeros_like(safe)).norm(dim=-1)
        return edge_index, edge_weight, edge_vec


class ViSNetStudent(Student):
    def __init__(self, config: ViSNetConfig | None = None):
        super().__init__()
        self.config = c = config or ViSNetConfig()
        net = ViSNet(lmax=c.lmax, vecnorm_type=c.vecnorm_type, num_heads=c.num_heads, num_layers=c.num_layers,
                     hidden_channels=c.hidden_channels, num_rbf=c.num_rbf, trainable_rbf=c.trainable_rbf,
                     cutoff=c.cutoff, max_num_neighbors=c.max_num_neighbors, vertex=c.vertex)
        self.representation = net.representation_model
        self.representation.distance = SelfLoopRadiusDistance(c.cutoff, c.max_num_neighbors)
        self.head = torch.nn.ModuleList([
            GatedEquivariantBlock(c.hidden_channels, c.hidden_channels // 2, scalar_activation=True),
            GatedEquivariantBlock(c.hidden_channels // 2, c.out_dim, scalar_activation=False),
        ])
        self.feature_dim = c.hidden_channels
        self.out_dim = c.out_dim

    def represent(self, z: Tensor, pos: Tensor, batch: Tensor, sizes: GraphSizes) -> tuple[Tensor, Tensor]:
        """PyG's ``ViSNetBlock.forward`` without its host syncs: scalar features x (A, hidden) and vector
        features vec (A, (lmax+1)^2 - 1, hidden). PyG drops the self-loops with boolean masks (and a
        data-dependent branch) for the edge normalisation and the neighbour embedding; here they stay and are
        zeroed (same sums: self-loop terms add exact zeros)."""
        rep = self.representation
        x = rep.embedding(z)
        edge_index, edge_weight, edge_vec = rep.distance(pos, batch, sizes)
        edge_attr = rep.distance_expansion(edge_weight)
        not_loop = edge_index[0] != edge_index[1]
        length = torch.where(not_loop, edge_weight, torch.ones_like(edge_weight))
        edge_vec = rep.sphere(edge_vec / length[:, None])  # self-loop vectors are 0 and stay 0
        x = self._neighbour_embedding(z, x, edge_index, edge_weight, edge_attr, not_loop)
        vec = torch.zeros(x.size(0), ((rep.lmax + 1) ** 2) - 1, x.size(1), dtype=x.dtype, device=x.device)
        edge_attr = rep.edge_embedding(edge_index, edge_attr, x)
        for attn in rep.vis_mp_layers[:-1]:
            dx, dvec, dedge_attr = attn(x, vec, edge_index, edge_weight, edge_attr, edge_vec)
            x, vec, edge_attr = x + dx, vec + dvec, edge_attr + dedge_attr
        dx, dvec, _ = rep.vis_mp_layers[-1](x, vec, edge_index, edge_weight, edge_attr, edge_vec)
        return rep.out_norm(x + dx), rep.vec_out_norm(vec + dvec)

    def _neighbour_embedding(self, z: Tensor, x: Tensor, edge_index: Tensor, edge_weight: Tensor,
                             edge_attr: Tensor, not_loop: Tensor) -> Tensor:
        """PyG's ``NeighborEmbedding.forward`` with self-loop messages weighted 0 instead of removed."""
        ne = self.representation.neighbor_embedding
        w = ne.distance_proj(edge_attr) * (ne.cutoff(edge_weight) * not_loop).view(-1, 1)
        neighbours = ne.propagate(edge_index, x=ne.embedding(z), W=w)
        return ne.combine(torch.cat([x, neighbours], dim=1))

    def encode(self, z: Tensor, pos: Tensor, batch: Tensor, sizes: GraphSizes) -> tuple[Tensor, Tensor]:
        x, vec = self.represent(z, pos, batch, sizes)
        feats = pool(x, batch, sizes.num_graphs, self.config.feature_pool)
        for block in self.head:
            x, vec = block(x, vec)
        return feats, pool(x, batch, sizes.num_graphs, "sum")

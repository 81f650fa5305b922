"""DimeNet++ student (Gasteiger et al., 2020) wrapping ``torch_geometric.nn.models.DimeNetPlusPlus``.

Directional messages m_ji on edges j -> i are updated from the messages m_kj of triplets k -> j -> i with a
radial Bessel basis of d_ji and a spherical basis of (d_kj, angle_kji). Each of the num_blocks + 1 output
blocks turns the messages into atom features h_i^b = MLP_b(sum_j RBF(d_ji) * m_ji) (out_emb_channels) and
a prediction Linear_b(h_i^b). Here F_G = sum_i sum_b h_i^b (the pooled input of the output heads) and
pred = sum_i sum_b Linear_b(h_i^b), exactly what PyG's ``DimeNetPlusPlus`` returns.

The model is assembled from PyG's DimeNet++ blocks (Bessel basis, embedding, interaction and output
blocks) with the spherical basis from ``basis.py``: PyG's sympy-built one takes about a minute to construct
at the default size. Defaults are the DimeNet++ paper's (hidden 128, 4 blocks, int_emb 64, basis_emb 8, out_emb 256,
7 spherical, 6 radial, cutoff 5 Å, envelope exponent 5, 1/2 residual layers before/after skip, 3 output
layers). Graph and triplets come from ``train.students.graph`` (PyG's need pyg-lib and torch-sparse).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.nn.models.dimenet import BesselBasisLayer, EmbeddingBlock, InteractionPPBlock, OutputPPBlock
from torch_geometric.nn.resolver import activation_resolver
from torch_geometric.utils import scatter

from .base import Student, pool
from .basis import SphericalBasis
from .graph import GraphSizes, radius_graph_and_triplets


@dataclass
class DimeNetPPConfig:
    hidden_channels: int = 128
    num_blocks: int = 4
    int_emb_size: int = 64
    basis_emb_size: int = 8
    out_emb_channels: int = 256
    num_spherical: int = 7
    num_radial: int = 6
    cutoff: float = 5.0  # Å
    max_num_neighbors: int = 32
    envelope_exponent: int = 5
    num_before_skip: int = 1
    num_after_skip: int = 2
    num_output_layers: int = 3
    output_initializer: str = "zeros"
    feature_pool: str = "sum"
    out_dim: int = 1


class DimeNetPPStudent(Student):
    def __init__(self, config: DimeNetPPConfig | None = None):
        super().__init__()
        self.config = c = config or DimeNetPPConfig()
        act = activation_resolver("swish")
        self.rbf = BesselBasisLayer(c.num_radial, c.cutoff, c.envelope_exponent)
        self.sbf = SphericalBasis(c.num_spherical, c.num_radial, c.cutoff, c.envelope_exponent)
        self.emb = EmbeddingBlock(c.num_radial, c.hidden_channels, act)
        self.output_blocks = torch.nn.ModuleList([
            OutputPPBlock(c.num_radial, c.hidden_channels, c.out_emb_channels, c.out_dim, c.num_output_layers, act,
                          c.output_initializer) for _ in range(c.num_blocks + 1)])
        self.interaction_blocks = torch.nn.ModuleList([
            InteractionPPBlock(c.hidden_channels, c.int_emb_size, c.basis_emb_size, c.num_spherical, c.num_radial,
                               c.num_before_skip, c.num_after_skip, act) for _ in range(c.num_blocks)])
        self.feature_dim = c.out_emb_channels
        self.out_dim = c.out_dim

    @staticmethod
    def _output_features(block, x: Tensor, rbf: Tensor, i: Tensor, num_nodes: int) -> Tensor:
        """PyG's ``OutputPPBlock.forward`` without its final linear layer: (A, out_emb_channels)."""
        x = scatter(block.lin_rbf(rbf) * x, i, dim=0, dim_size=num_nodes, reduce="sum")
        x = block.lin_up(x)
        for lin in block.lins:
            x = block.act(lin(x))
        return x

    def encode(self, z: Tensor, pos: Tensor, batch: Tensor, sizes: GraphSizes) -> tuple[Tensor, Tensor]:
        c, n = self.config, z.size(0)
        _, (i, j, idx_i, idx_j, idx_k, idx_kj, idx_ji) = radius_graph_and_triplets(
            pos, c.cutoff, batch, c.max_num_neighbors, sizes)
        dist = (pos[i] - pos[j]).norm(dim=-1)
        pos_jk, pos_ij = pos[idx_j] - pos[idx_k], pos[idx_i] - pos[idx_j]
        angle = torch.atan2(torch.cross(pos_ij, pos_jk, dim=1).norm(dim=-1), (pos_ij * pos_jk).sum(dim=-1))
        rbf = self.rbf(dist)
        sbf = self.sbf(dist, angle, idx_kj)

        x = self.emb(z, rbf, i, j)
        h = self._output_features(self.output_blocks[0], x, rbf, i, n)
        feats_atom, per_atom = h, self.output_blocks[0].lin(h)
        for interaction, out_block in zip(self.interaction_blocks, self.output_blocks[1:]):
            x = interaction(x, rbf, sbf, idx_kj, idx_ji)
            h = self._output_features(out_block, x, rbf, i, n)
            feats_atom = feats_atom + h
            per_atom = per_atom + out_block.lin(h)
        n_graphs = sizes.num_graphs
        return pool(feats_atom, batch, n_graphs, self.config.feature_pool), pool(per_atom, batch, n_graphs, "sum")

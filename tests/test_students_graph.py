"""Radius graph and triplets against brute-force references (and torch-cluster when installed)."""
from __future__ import annotations

import itertools

import pytest
import torch
from edg.train.students.graph import (
    RadiusInteractionGraph,
    radius_graph,
    radius_graph_torch,
    triplets,
    undirected_pairs,
)


def random_batch(sizes, seed=0, box=6.0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(sum(sizes), 3, generator=g, dtype=torch.float64) * box
    batch = torch.cat([torch.full((n,), b, dtype=torch.long) for b, n in enumerate(sizes)])
    return pos, batch


def brute_force_edges(pos, batch, r, max_num_neighbors=None, loop=False):
    """Every (j, i) pair in one molecule closer than r; nearest max_num_neighbors per centre i."""
    edges = set()
    n = pos.size(0)
    for i in range(n):
        cands = []
        for j in range(n):
            if j != i and batch[i] == batch[j]:
                d = float((pos[i] - pos[j]).norm())
                if d < r:
                    cands.append((d, j))
        cands.sort()
        if max_num_neighbors is not None:
            cands = cands[:max_num_neighbors]
        edges.update((j, i) for _, j in cands)
        if loop:
            edges.add((i, i))
    return edges


def as_set(edge_index):
    return set(map(tuple, edge_index.t().tolist()))


@pytest.mark.parametrize("r", [1.5, 3.0, 20.0])
def test_radius_graph_equals_brute_force(r):
    pos, batch = random_batch([5, 1, 9, 3], seed=1)
    ei = radius_graph_torch(pos, r, batch, max_num_neighbors=None)
    assert ei.dtype == torch.long and ei.shape[0] == 2
    assert as_set(ei) == brute_force_edges(pos, batch, r)
    assert ei.size(1) == len(as_set(ei))  # no duplicates
    # ordered by centre, then neighbour
    key = ei[1] * pos.size(0) + ei[0]
    assert torch.all(key[1:] > key[:-1])


def test_radius_graph_max_neighbours_keeps_nearest():
    pos, batch = random_batch([12, 7], seed=2)
    ei = radius_graph_torch(pos, 10.0, batch, max_num_neighbors=4)
    assert as_set(ei) == brute_force_edges(pos, batch, 10.0, max_num_neighbors=4)
    assert torch.bincount(ei[1], minlength=pos.size(0)).max() == 4


def test_radius_graph_self_loops_and_single_molecule():
    pos, _ = random_batch([6], seed=3)
    ei = radius_graph_torch(pos, 2.5, None, loop=True)
    assert as_set(ei) == brute_force_edges(pos, torch.zeros(6, dtype=torch.long), 2.5, loop=True)


def test_radius_graph_rejects_unsorted_batch():
    pos, _ = random_batch([4], seed=4)
    with pytest.raises(ValueError, match="sorted"):
        radius_graph(pos, 2.0, torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="shape"):
        radius_graph(pos[:, :2], 2.0)


def test_interaction_graph_weights_are_differentiable_lengths():
    pos, batch = random_batch([5, 4], seed=5)
    pos.requires_grad_(True)
    ei, w = RadiusInteractionGraph(cutoff=3.0, max_num_neighbors=32)(pos, batch)
    assert torch.allclose(w, (pos[ei[1]] - pos[ei[0]]).norm(dim=-1))
    w.sum().backward()
    assert pos.grad is not None and pos.grad.abs().sum() > 0


def test_radius_graph_matches_torch_cluster():
    torch_cluster = pytest.importorskip("torch_cluster")
    pos, batch = random_batch([8, 11, 3], seed=6)
    ref = torch_cluster.radius_graph(pos, 3.0, batch, max_num_neighbors=100)
    assert as_set(radius_graph_torch(pos, 3.0, batch, max_num_neighbors=100)) == as_set(ref)


def test_triplets_equal_enumeration():
    pos, batch = random_batch([6, 5], seed=7)
    ei = radius_graph_torch(pos, 4.0, batch, max_num_neighbors=None)
    i, j, idx_i, idx_j, idx_k, idx_kj, idx_ji = triplets(ei, pos.size(0))
    assert torch.equal(i, ei[1]) and torch.equal(j, ei[0])
    edges = [tuple(e) for e in ei.t().tolist()]  # (src, dst)
    expected = set()
    for (a, e1), (b, e2) in itertools.product(enumerate(edges), repeat=2):
        # e1 = kj (k -> j), e2 = ji (j -> i)
        if e1[1] == e2[0] and e1[0] != e2[1]:
            expected.add((e2[1], e2[0], e1[0], a, b))
    got = set(zip(idx_i.tolist(), idx_j.tolist(), idx_k.tolist(), idx_kj.tolist(), idx_ji.tolist()))
    assert got == expected and len(idx_i) == len(expected)
    assert len(expected) > 0


def test_undirected_pairs_group_both_directions():
    edge_index = torch.tensor([[0, 1, 2, 0, 3, 1], [1, 0, 0, 2, 1, 3]])  # 0-1 twice, 0-2 twice, 3-1 twice
    rep, pair = undirected_pairs(torch.tensor([[0, 1, 2, 0, 3], [1, 0, 0, 2, 1]]), 4)
    assert pair.tolist() == [0, 0, 1, 1, 2] and rep.tolist() == [0, 2, 4]  # 3 -> 1 alone: a pair of its own
    rep, pair = undirected_pairs(edge_index, 4)
    assert len(rep) == 3 and torch.equal(pair[rep], torch.arange(3))
    ends = torch.sort(edge_index, 0)[0]
    assert torch.equal(ends[:, rep][:, pair], ends)  # every edge reads back its own pair
    rep, pair = undirected_pairs(torch.zeros(2, 0, dtype=torch.long), 4)
    assert rep.numel() == 0 and pair.numel() == 0

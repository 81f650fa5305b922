"""Students without host syncs (issue 24, part 3): every registered student's training step reads the device at
most ``SYNC_BUDGET`` (= 1) times, counted op by op with a ``TorchDispatchMode``; the sync-free graph functions
give the same numbers as the formulas they replaced (kept below as the reference)."""
from __future__ import annotations

import math

import pytest
import torch
from edg.train.students import STUDENTS, build_student
from edg.train.students.graph import (
    neighbour_mask,
    radius_graph_and_triplets,
    radius_graph_torch,
    sizes_of,
    triplets,
    undirected_pairs,
)
from edg.train.students.host_syncs import SMALL_STUDENTS, SYNC_BUDGET, HostSyncCounter, student_step_syncs
from edg.train.students.spherenet import torsions
from edg.train.tasks.packed import PackedMolecules
from torch_geometric.nn.models.visnet import ViSNetBlock
from torch_geometric.utils import scatter


# ---------------------------------------------------------------- the formulas before issue 24 (reference)
def old_radius_graph(pos, r, batch, max_num_neighbors=32, loop=False):
    n_mol = int(batch.max()) + 1
    counts = torch.bincount(batch, minlength=n_mol)
    ptr = torch.zeros(n_mol + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(counts, 0)
    local = torch.arange(pos.size(0)) - ptr[batch]
    n_max = int(counts.max())
    padded = pos.new_zeros(n_mol, n_max, 3)
    padded[batch, local] = pos
    valid = torch.zeros(n_mol, n_max, dtype=torch.bool)
    valid[batch, local] = True
    dist = torch.cdist(padded, padded)
    eye = torch.eye(n_max, dtype=torch.bool)
    mask = valid[:, :, None] & valid[:, None, :] & (dist < r) & ~eye
    if max_num_neighbors is not None and n_max - 1 > max_num_neighbors:
        order = torch.sort(dist.masked_fill(~mask, float("inf")), dim=2, stable=True).indices[:, :, :max_num_neighbors]
        keep = torch.zeros_like(mask)
        keep.scatter_(2, order, True)
        mask = mask & keep
    if loop:
        mask = mask | (eye & valid[:, :, None])
    b, i, j = mask.nonzero(as_tuple=True)
    return torch.stack([ptr[b] + j, ptr[b] + i])


def old_undirected_pairs(edge_index, num_nodes):
    a = torch.minimum(edge_index[0], edge_index[1])
    b = torch.maximum(edge_index[0], edge_index[1])
    keys, pair = torch.unique(a * num_nodes + b, return_inverse=True)
    n_edges = edge_index.size(1)
    rep = torch.full((len(keys),), n_edges, dtype=torch.long)
    rep.scatter_reduce_(0, pair, torch.arange(n_edges), "amin")
    return rep, pair


def old_triplets(edge_index, num_nodes):
    row, col = edge_index
    perm = torch.argsort(col, stable=True)
    indeg = torch.bincount(col, minlength=num_nodes)
    start = torch.cumsum(indeg, 0) - indeg
    per_edge = indeg[row]
    idx_ji = torch.repeat_interleave(torch.arange(row.size(0)), per_edge)
    first = torch.cumsum(per_edge, 0) - per_edge
    offset = torch.arange(idx_ji.size(0)) - first[idx_ji]
    idx_kj = perm[start[row[idx_ji]] + offset]
    idx_i, idx_j, idx_k = col[idx_ji], row[idx_ji], row[idx_kj]
    keep = idx_i != idx_k
    return col, row, idx_i[keep], idx_j[keep], idx_k[keep], idx_kj[keep], idx_ji[keep]


def old_torsions(pos, idx_i, idx_j, idx_k, idx_ji, n_edges):
    n_trip = idx_ji.size(0)
    count = torch.bincount(idx_ji, minlength=n_edges)
    start = torch.cumsum(count, 0) - count
    per_trip = count[idx_ji]
    t = torch.repeat_interleave(torch.arange(n_trip), per_trip)
    first = torch.cumsum(per_trip, 0) - per_trip
    other = start[idx_ji[t]] + torch.arange(t.size(0)) - first[t]
    axis = pos[idx_i] - pos[idx_j]
    plane = torch.cross(axis, pos[idx_k] - pos[idx_j], dim=1)
    p1, p2, ax = plane[t], plane[other], axis[t]
    phi = torch.atan2((torch.cross(p1, p2, dim=1) * ax).sum(dim=-1) / ax.norm(dim=-1), (p1 * p2).sum(dim=-1))
    phi = torch.where(phi <= 0, phi + 2 * math.pi, phi)
    phi = torch.where(other == t, torch.full_like(phi, 2 * math.pi), phi)
    return scatter(phi, t, dim=0, dim_size=n_trip, reduce="min")


def molecules(n_molecules: int = 5, seed: int = 3) -> PackedMolecules:
    """Random molecules of 4..12 atoms in a box a few Å wide (dense enough for capped neighbour lists)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(4, 13, (n_molecules,), generator=g)
    n = int(counts.sum())
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    return PackedMolecules(torch.randint(1, 9, (n,), generator=g), torch.rand(n, 3, generator=g) * 4.0, offsets,
                           [str(i) for i in range(n_molecules)])


# ---------------------------------------------------------------- the budget, for every registered student
@pytest.mark.parametrize("name", list(STUDENTS))
def test_training_step_reads_the_device_at_most_once(name):
    """Forward (energy and forces with the force graph), backward and a fused optimizer step (the loops'
    choice on CUDA), on a batch from ``PackedMolecules.gather``: at most SYNC_BUDGET = 1 host sync."""
    syncs = student_step_syncs(name)
    assert len(syncs) <= SYNC_BUDGET, f"{name}: {syncs}"


def test_registry_and_small_configs_cover_the_same_students():
    assert set(SMALL_STUDENTS) == set(STUDENTS)


def test_counter_sees_each_kind_of_sync():
    x = torch.tensor([3, 1, 2, 2])
    cases = {
        "item": lambda: x.sum().item(),
        "int": lambda: int(x.max()),
        "bool": lambda: bool((x > 2).any()),
        "nonzero": lambda: x.nonzero(),
        "unique": lambda: torch.unique(x),
        "bincount": lambda: torch.bincount(x),
        "boolean mask": lambda: x[x > 1],
        "boolean mask put": lambda: x.clone().__setitem__(x > 1, 0),
        "masked_select": lambda: x.masked_select(x > 1),
        "repeat_interleave": lambda: torch.repeat_interleave(torch.arange(4), x),
    }
    for what, op in cases.items():
        with HostSyncCounter() as c:
            op()
        assert len(c.syncs) >= 1, what
    free = {
        "repeat_interleave with output_size": lambda: torch.repeat_interleave(torch.arange(4), x, output_size=8),
        "nonzero_static": lambda: torch.nonzero_static(x > 1, size=3),
        "long index": lambda: x[torch.tensor([0, 2])],
        "arithmetic": lambda: (x * 2).sum(),
    }
    for what, op in free.items():
        with HostSyncCounter() as c:
            op()
        assert c.syncs == [], what


def test_the_old_graph_code_would_exceed_the_budget():
    """The counter on the replaced formulas: they read the device several times per call."""
    data = molecules()
    b = data.gather(torch.arange(len(data)))
    with HostSyncCounter() as c:
        edge_index = old_radius_graph(b.pos, 3.0, b.batch)
        old_triplets(edge_index, b.z.size(0))
    assert len(c.syncs) > SYNC_BUDGET + 2


# ---------------------------------------------------------------- same numbers as the replaced formulas
@pytest.mark.parametrize("cap", [32, 3, None])
def test_radius_graph_and_triplets_equal_the_old_formulas(cap):
    data = molecules()
    b = data.gather(torch.arange(len(data)))
    old_edges = old_radius_graph(b.pos, 3.0, b.batch, cap)
    assert torch.equal(radius_graph_torch(b.pos, 3.0, b.batch, cap, sizes=b.sizes), old_edges)
    assert torch.equal(radius_graph_torch(b.pos, 3.0, b.batch, cap, loop=True, sizes=b.sizes),
                       old_radius_graph(b.pos, 3.0, b.batch, cap, loop=True))
    edges, trip = radius_graph_and_triplets(b.pos, 3.0, b.batch, cap, b.sizes, backend="torch")
    assert torch.equal(edges, old_edges)
    for new, old in zip(trip, old_triplets(old_edges, b.z.size(0))):
        assert torch.equal(new, old)
    for new, old in zip(triplets(old_edges, b.z.size(0)), old_triplets(old_edges, b.z.size(0))):
        assert torch.equal(new, old)  # the count read from the device: same triplets


def test_triplets_of_an_unordered_graph_equal_the_old_formula():
    """Edge order as a compiled backend may give it (not sorted by centre): same triplets, same order."""
    data = molecules(seed=5)
    b = data.gather(torch.arange(len(data)))
    edges = old_radius_graph(b.pos, 3.0, b.batch, 4)
    shuffled = edges[:, torch.randperm(edges.size(1), generator=torch.Generator().manual_seed(0))]
    for new, old in zip(triplets(shuffled, b.z.size(0)), old_triplets(shuffled, b.z.size(0))):
        assert torch.equal(new, old)


def test_undirected_pairs_equal_the_old_formula():
    data = molecules()
    b = data.gather(torch.arange(len(data)))
    edges = old_radius_graph(b.pos, 3.0, b.batch, None)
    rep, pair = undirected_pairs(edges, b.z.size(0), symmetric=True)
    old_rep, old_pair = old_undirected_pairs(edges, b.z.size(0))
    assert torch.equal(rep, old_rep) and torch.equal(pair, old_pair)
    capped = old_radius_graph(b.pos, 3.0, b.batch, 2)  # not symmetric: the general path
    assert all(torch.equal(x, y) for x, y in zip(undirected_pairs(capped, b.z.size(0)),
                                                  old_undirected_pairs(capped, b.z.size(0))))


def test_torsions_equal_the_old_formula_values_and_gradients():
    data = molecules(seed=7)
    b = data.gather(torch.arange(len(data)))
    edges = old_radius_graph(b.pos, 3.0, b.batch, None)
    _, _, i, j, k, _, ji = old_triplets(edges, b.z.size(0))
    pos_new = b.pos.clone().requires_grad_(True)
    pos_old = b.pos.clone().requires_grad_(True)
    new = torsions(pos_new, i, j, k, ji, edges.size(1), max_per_edge=b.sizes.max_atoms - 1)
    old = old_torsions(pos_old, i, j, k, ji, edges.size(1))
    assert torch.equal(new, old)
    weights = torch.randn(new.shape, generator=torch.Generator().manual_seed(1))
    (new * weights).sum().backward()
    (old * weights).sum().backward()
    torch.testing.assert_close(pos_new.grad, pos_old.grad, rtol=1e-5, atol=1e-6)


def test_visnet_representation_equals_pygs_block():
    """ViSNet's sync-free representation (self-loops zeroed, not removed) against PyG's ``ViSNetBlock.forward``
    with the same weights: features and their gradients with respect to the positions."""
    torch.manual_seed(0)
    model = build_student("visnet", **SMALL_STUDENTS["visnet"])
    data = molecules(seed=11)
    b = data.gather(torch.arange(len(data)))
    pos_new = b.pos.clone().requires_grad_(True)
    pos_old = b.pos.clone().requires_grad_(True)
    x_new, v_new = model.represent(b.z, pos_new, b.batch, b.sizes)
    x_old, v_old = ViSNetBlock.forward(model.representation, b.z, pos_old, b.batch)
    torch.testing.assert_close(x_new, x_old, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v_new, v_old, rtol=1e-5, atol=1e-6)
    (x_new.sum() + v_new.pow(2).sum()).backward()
    (x_old.sum() + v_old.pow(2).sum()).backward()
    torch.testing.assert_close(pos_new.grad, pos_old.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(STUDENTS))
def test_host_sizes_give_the_same_outputs_as_sizes_read_from_the_device(name):
    torch.manual_seed(0)
    model = build_student(name, **SMALL_STUDENTS[name]).eval()
    data = molecules(seed=13)
    b = data.gather(torch.arange(len(data)))
    assert b.sizes == sizes_of(b.z, b.batch)
    with torch.no_grad():
        with_sizes = model(b.z, b.pos, b.batch, b.sizes)
        without = model(b.z, b.pos, b.batch)
    for x, y in zip(with_sizes, without):
        assert torch.equal(x, y)


def test_neighbour_mask_counts_need_no_sync():
    data = molecules()
    b = data.gather(torch.arange(len(data)))
    with HostSyncCounter() as c:
        neighbour_mask(b.pos, 3.0, b.batch, b.sizes, 3, loop=False)
    assert c.syncs == []


def test_atomic_numbers_out_of_range_are_a_clear_error_from_host_sizes():
    model = build_student("spherenet", **SMALL_STUDENTS["spherenet"])
    data = molecules()
    b = data.gather(torch.arange(len(data)))
    bad = PackedMolecules(b.z * 0 + 99, b.pos, data.offsets, data.ids).gather(torch.arange(len(data)))
    with pytest.raises(ValueError, match=r"atomic numbers must lie in \[0, 95\), got 99..99"):
        model(bad.z, bad.pos, bad.batch, bad.sizes)

"""Interaction graphs for the geometry students: radius graphs and DimeNet-style triplets.

Edge convention (PyG ``source_to_target``): ``edge_index[0] = j`` is the neighbour (source) and
``edge_index[1] = i`` the centre (target); messages flow j -> i. Positions are in Å and cutoffs in Å.

``radius_graph`` uses pyg-lib (what torch-geometric 2.8 calls) or torch-cluster when one of them is
importable, and otherwise an exact plain-torch fallback: the batch is padded to (B, n_max, 3), distances
are taken per molecule with one batched ``cdist`` (block-diagonal, so the cost is B * n_max^2, not A^2),
and the pairs within the cutoff are read off a mask. No Python loop over molecules.

Host syncs: given the batch's host-side ``GraphSizes`` (known when the batch is built), the plain-torch graph
reads exactly one thing from the device per call: the number of edges (``nonzero``), or, with
``radius_graph_and_triplets``, the numbers of edges and triplets together in one transfer (``read_counts``).
Without ``GraphSizes`` the sizes are read from ``batch`` (more syncs; for one-off calls such as predictions).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["radius_graph", "radius_graph_torch", "accelerated_backend", "triplets", "RadiusInteractionGraph",
           "num_graphs", "undirected_pairs", "GraphSizes", "sizes_of", "read_counts", "radius_graph_and_triplets",
           "is_symmetric", "count_per_index", "neighbour_mask", "triplet_count", "edges_at_least_two"]


@dataclass(frozen=True)
class GraphSizes:
    """Sizes of a batch of molecules known on the host when the batch is built (no device read).

    num_graphs: molecules B; max_atoms: atoms of the largest molecule; z_range: (smallest, largest) atomic
    number in the batch or a data set containing it (used to check embeddings' ranges without a device read).
    """
    num_graphs: int
    max_atoms: int
    z_range: tuple[int, int]


def sizes_of(z: Tensor, batch: Tensor) -> GraphSizes:
    """``GraphSizes`` read from device tensors z (A,) and sorted batch (A,): several host syncs (for one-off
    calls without the batch builder's metadata). Checks that ``batch`` is sorted."""
    if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("radius_graph: batch vector must be sorted (atoms of one molecule contiguous)")
    n_graphs = num_graphs(batch)
    if n_graphs == 0:
        return GraphSizes(0, 0, (0, 0))
    counts = torch.bincount(batch, minlength=n_graphs)
    return GraphSizes(n_graphs, int(counts.max()), (int(z.min()), int(z.max())))


def num_graphs(batch: Tensor) -> int:
    """Number of molecules in a batch vector (``batch.max() + 1``; 0 for an empty batch). A host sync."""
    return int(batch.max()) + 1 if batch.numel() else 0


def count_per_index(index: Tensor, size: int) -> Tensor:
    """How often each of 0..size-1 occurs in ``index`` (size,) long. ``torch.bincount``'s output length
    depends on the data (max + 1), so it reads the device; a scatter-add into a host-sized vector does not."""
    return torch.zeros(size, dtype=torch.long, device=index.device).index_add_(0, index, torch.ones_like(index))


def read_counts(first: Tensor, second: Tensor) -> tuple[int, int]:
    """Two non-negative integer counts (0-dim device tensors, each < 2^31) read to the host in ONE transfer:
    they travel packed in one int64, ``first * 2^32 + second``, so a step that needs both pays one sync.

    Under ``torch.export`` the two are read separately instead (``torch.compile`` keeps the packed read): the
    packed read leaves size expressions with ``<<``, ``>>`` and ``&`` (``BitwiseFn_bitwise_and``) that torch 2.14 cannot
    deserialize from a saved program. Each traced read is an unbacked size declared >= 0."""
    if torch.compiler.is_exporting():
        n_first, n_second = first.item(), second.item()
        torch._check(n_first >= 0)
        torch._check(n_second >= 0)
        return n_first, n_second
    packed = (first.long() << 32) + second.long()
    value = int(packed.item())
    return value >> 32, value & 0xFFFFFFFF


def edges_at_least_two(n_edges) -> None:
    """Under ``torch.export``, declare that the radius graph has at least 2 edges. The edge count is a
    data-dependent size; without a lower bound torch cannot decide the size-1 tests of its broadcasting and
    reshapes (e3nn's ``tensordot``: ``Ne(3*u0, 1)``) and refuses to trace. The exported program then checks it
    at run time, and the loader (``train.io.exported``) guarantees it by adding a 2-atom molecule within the
    cutoff to every call. Eager and ``torch.compile``d calls (training) are not affected: a batch may have 0
    edges there."""
    if torch.compiler.is_exporting():
        torch._check(n_edges >= 2)


def accelerated_backend() -> str | None:
    """``"pyg-lib"`` or ``"torch-cluster"`` when a compiled radius search is importable, else ``None``."""
    try:
        import torch_geometric.typing as pyg_typing
        if pyg_typing.WITH_RADIUS:
            return "pyg-lib"
    except ImportError:
        pass
    try:
        import torch_cluster  # noqa: F401
        return "torch-cluster"
    except ImportError:
        return None


def _check_shapes(pos: Tensor, batch: Tensor | None) -> Tensor:
    if pos.dim() != 2 or pos.size(1) != 3:
        raise ValueError(f"radius_graph: positions must have shape (A, 3), got {tuple(pos.shape)}")
    if batch is None:
        return torch.zeros(pos.size(0), dtype=torch.long, device=pos.device)
    if batch.shape != (pos.size(0),):
        raise ValueError(f"radius_graph: batch must have shape ({pos.size(0)},), got {tuple(batch.shape)}")
    return batch.long()


def _sizes(pos: Tensor, batch: Tensor | None, sizes: GraphSizes | None) -> tuple[Tensor, GraphSizes]:
    """The long batch vector and the sizes (read from the device, with the sorted check, when not given)."""
    batch = _check_shapes(pos, batch)
    if sizes is None:
        sizes = sizes_of(torch.zeros_like(batch), batch)
    return batch, sizes


def neighbour_mask(pos: Tensor, r: float, batch: Tensor, sizes: GraphSizes, max_num_neighbors: int | None,
                   loop: bool) -> tuple[Tensor, Tensor]:
    """The radius graph as a dense mask, without a host sync.

    pos (A, 3) Å; batch (A,) sorted long. Returns ``mask`` (B, n_max, n_max) bool with mask[b, i, j] = atom j
    is a neighbour of centre i in molecule b (|pos_i - pos_j| < r, the ``max_num_neighbors`` nearest kept,
    ties by index), and ``ptr`` (B + 1,) the first atom of each molecule.
    """
    n_atoms, n_mol, n_max = pos.size(0), sizes.num_graphs, sizes.max_atoms
    pos = pos.detach()
    counts = count_per_index(batch, n_mol)
    ptr = torch.zeros(n_mol + 1, dtype=torch.long, device=pos.device)
    ptr[1:] = torch.cumsum(counts, 0)
    local = torch.arange(n_atoms, device=pos.device) - ptr[batch]

    padded = pos.new_zeros(n_mol, n_max, 3)
    padded[batch, local] = pos
    valid = torch.zeros(n_mol, n_max, dtype=torch.bool, device=pos.device)
    valid[batch, local] = True

    dist = torch.cdist(padded, padded)  # (B, n_max, n_max): [b, i, j]
    eye = torch.eye(n_max, dtype=torch.bool, device=pos.device)
    mask = valid[:, :, None] & valid[:, None, :] & (dist < r) & ~eye
    if max_num_neighbors is not None and n_max - 1 > max_num_neighbors:
        k = int(max_num_neighbors)
        far = dist.masked_fill(~mask, float("inf"))
        # stable sort keeps ties in index order
        order = torch.sort(far, dim=2, stable=True).indices[:, :, :k]
        keep = torch.zeros_like(mask)
        keep.scatter_(2, order, True)
        mask = mask & keep
    if loop:
        mask = mask | (eye & valid[:, :, None])
    return mask, ptr


def _edges(mask: Tensor, ptr: Tensor, n_edges: int | None = None) -> Tensor:
    """edge_index (2, E) of a ``neighbour_mask``, ordered by centre then neighbour. ``n_edges`` known on the
    host: no sync (``nonzero_static``); ``None``: one sync (``nonzero``)."""
    if n_edges is None:
        b, i, j = mask.nonzero(as_tuple=True)
        edges_at_least_two(b.size(0))
    else:
        b, i, j = torch.nonzero_static(mask, size=n_edges).unbind(1)
    return torch.stack([ptr[b] + j, ptr[b] + i])


def radius_graph_torch(pos: Tensor, r: float, batch: Tensor | None = None, max_num_neighbors: int | None = 32,
                       loop: bool = False, sizes: GraphSizes | None = None) -> Tensor:
    """Exact radius graph in plain torch.

    pos (A, 3); batch (A,) sorted molecule index. Returns edge_index (2, E) long with every pair (j, i) of
    atoms of the same molecule with |pos_i - pos_j| < r (and j != i unless ``loop``). When a centre has more
    than ``max_num_neighbors`` neighbours the nearest ones are kept (ties by index); self-loops do not count.
    Edges are ordered by centre i, then by neighbour j. With ``sizes``: one host sync (the edge count).
    """
    batch, sizes = _sizes(pos, batch, sizes)
    if pos.size(0) == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=pos.device)
    mask, ptr = neighbour_mask(pos, r, batch, sizes, max_num_neighbors, loop)
    return _edges(mask, ptr)


def radius_graph(pos: Tensor, r: float, batch: Tensor | None = None, max_num_neighbors: int | None = 32,
                 loop: bool = False, backend: str = "auto", sizes: GraphSizes | None = None) -> Tensor:
    """Radius graph (2, E) of atoms closer than ``r`` Å within each molecule; see module docstring.

    backend: ``"auto"`` (compiled search when importable, else plain torch), ``"torch"``, ``"pyg-lib"`` or
    ``"torch-cluster"``. The compiled searches keep the *first* ``max_num_neighbors`` neighbours they find
    rather than the nearest, so the backends agree exactly only when no centre exceeds the limit.
    ``sizes``: the batch's host-side sizes (then the only host sync is the edge count).
    """
    if backend == "auto":
        backend = accelerated_backend() or "torch"
    if backend == "torch":
        return radius_graph_torch(pos, r, batch, max_num_neighbors, loop, sizes)
    batch, sizes = _sizes(pos, batch, sizes)
    limit = max_num_neighbors if max_num_neighbors is not None else pos.size(0)
    if backend == "pyg-lib":
        from torch_geometric.nn import radius_graph as pyg_radius_graph
        return pyg_radius_graph(pos.detach(), r, batch, loop=loop, max_num_neighbors=limit)
    if backend == "torch-cluster":
        import torch_cluster
        return torch_cluster.radius_graph(pos.detach(), r, batch, loop=loop, max_num_neighbors=limit)
    raise ValueError(f"radius_graph: unknown backend {backend!r}; use auto, torch, pyg-lib or torch-cluster")


def is_symmetric(sizes: GraphSizes, max_num_neighbors: int | None) -> bool:
    """Whether a radius graph of a batch with ``sizes`` has edge i -> j for every edge j -> i: true when no
    centre can have more neighbours than the limit (decided on the host)."""
    return max_num_neighbors is None or sizes.max_atoms - 1 <= max_num_neighbors


class RadiusInteractionGraph(torch.nn.Module):
    """``(pos, batch) -> (edge_index, edge_weight)``: the radius graph and its edge lengths (Å, differentiable).

    Drop-in for torch_geometric's ``SchNet(interaction_graph=...)``.
    """

    def __init__(self, cutoff: float = 10.0, max_num_neighbors: int | None = 32, loop: bool = False):
        super().__init__()
        self.cutoff = cutoff
        self.max_num_neighbors = max_num_neighbors
        self.loop = loop

    def forward(self, pos: Tensor, batch: Tensor | None, sizes: GraphSizes | None = None) -> tuple[Tensor, Tensor]:
        edge_index = radius_graph(pos, self.cutoff, batch, self.max_num_neighbors, self.loop, sizes=sizes)
        j, i = edge_index
        return edge_index, (pos[i] - pos[j]).norm(dim=-1)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, max_num_neighbors={self.max_num_neighbors}, loop={self.loop}"


def undirected_pairs(edge_index: Tensor, num_nodes: int, symmetric: bool = False) -> tuple[Tensor, Tensor]:
    """The unordered atom pairs of a directed graph: ``rep`` (U,) the index of one edge of each pair (the first)
    and ``pair`` (E,) the pair of every edge, pairs in the order of (smaller atom, larger atom). Edges j -> i and
    i -> j have the same length, so anything that depends on the length alone (a SchNet filter) is computed
    once per pair and read back with ``[pair]``.

    ``symmetric`` (the caller knows on the host that every edge has its reverse, ``is_symmetric``): U = E / 2
    and no host sync; otherwise U is found with ``torch.unique`` (one sync).
    """
    a = torch.minimum(edge_index[0], edge_index[1])
    b = torch.maximum(edge_index[0], edge_index[1])
    key = a * num_nodes + b
    n_edges = edge_index.size(1)
    if symmetric:
        # the first edge of a pair in (centre, neighbour) order points from the larger atom to the smaller
        first = edge_index[0] > edge_index[1]
        candidates = torch.argsort((~first).to(torch.uint8), stable=True)[:n_edges // 2]
        key_sorted, order = torch.sort(key[candidates])
        return candidates[order], torch.searchsorted(key_sorted, key)
    keys, pair = torch.unique(key, return_inverse=True)
    rep = torch.full((len(keys),), n_edges, dtype=torch.long, device=pair.device)
    rep.scatter_reduce_(0, pair, torch.arange(n_edges, device=pair.device), "amin")
    return rep, pair


def _reverse_position(row: Tensor, col: Tensor, num_nodes: int, perm: Tensor, start: Tensor,
                      indeg: Tensor) -> Tensor:
    """For every edge j -> i (E,): the position of its reverse i -> j among the incoming edges of j (in
    ``perm`` order), or indeg(j) when there is none."""
    n_edges = row.size(0)
    key = col * num_nodes + row  # (target, source) of each edge
    key_sorted, key_order = torch.sort(key)
    reverse_key = row * num_nodes + col
    at = torch.searchsorted(key_sorted, reverse_key).clamp(max=max(n_edges - 1, 0))
    exists = key_sorted[at] == reverse_key
    position_in_list = torch.empty_like(perm)
    position_in_list[perm] = torch.arange(n_edges, device=row.device) - start[col[perm]]
    return torch.where(exists, position_in_list[key_order[at]], indeg[row])


def triplet_count(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Number of triplets k -> j -> i (k != i) of a graph without duplicate edges, as a 0-dim device tensor."""
    row, col = edge_index
    indeg = count_per_index(col, num_nodes)
    perm = torch.argsort(col, stable=True)
    start = torch.cumsum(indeg, 0) - indeg
    skip = _reverse_position(row, col, num_nodes, perm, start, indeg) < indeg[row]
    return (indeg[row] - skip.long()).sum()


def triplets(edge_index: Tensor, num_nodes: int, num_triplets: int | None = None
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Angle triplets k -> j -> i of a directed graph (same outputs as torch_geometric's DimeNet ``triplets``).

    edge_index (2, E) with edge_index[0] = j (source), edge_index[1] = i (target), no self-loops or duplicate
    edges. For every edge ji (j -> i) and every edge kj (k -> j) with k != i, one triplet, ordered by edge ji,
    then by the position of kj among the edges into j.
    Returns ``(i, j, idx_i, idx_j, idx_k, idx_kj, idx_ji)``: ``i``/``j`` (E,) the target/source of each
    edge, then per triplet (T,) the three atoms and the indices of its two edges.
    ``num_triplets`` (T, known on the host, see ``radius_graph_and_triplets``): no host sync; ``None``: one.
    """
    row, col = edge_index  # j -> i
    n_edges = row.size(0)
    device = row.device
    # CSR of incoming edges per node: the edges kj that end in node j
    perm = torch.argsort(col, stable=True)
    indeg = count_per_index(col, num_nodes)
    start = torch.cumsum(indeg, 0) - indeg
    reverse = _reverse_position(row, col, num_nodes, perm, start, indeg)  # the k == i edge kj, to skip
    per_edge = indeg[row] - (reverse < indeg[row]).long()  # edges k -> j, k != i, for each edge ji
    if num_triplets is None:
        num_triplets = int(per_edge.sum().item())
    idx_ji = torch.repeat_interleave(torch.arange(n_edges, device=device), per_edge, output_size=num_triplets)
    first = torch.cumsum(per_edge, 0) - per_edge
    offset = torch.arange(num_triplets, device=device) - first[idx_ji]
    offset = offset + (offset >= reverse[idx_ji]).long()  # step over the edge i -> j
    idx_kj = perm[start[row[idx_ji]] + offset]
    return col, row, col[idx_ji], row[idx_ji], row[idx_kj], idx_kj, idx_ji


def radius_graph_and_triplets(pos: Tensor, r: float, batch: Tensor | None, max_num_neighbors: int | None,
                              sizes: GraphSizes | None = None, backend: str = "auto"):
    """``radius_graph`` (no self-loops) and its ``triplets``: ``(edge_index (2, E), triplets(...))``.

    With the plain-torch graph and ``sizes``, the edge and triplet counts are computed on the dense mask and
    read together: one host sync per call. A compiled backend reads its edge count itself, then the triplet
    count is read: two.
    """
    if backend == "auto":
        backend = accelerated_backend() or "torch"
    n_atoms = pos.size(0)
    if backend != "torch" or n_atoms == 0:
        edge_index = radius_graph(pos, r, batch, max_num_neighbors, backend=backend, sizes=sizes)
        return edge_index, triplets(edge_index, n_atoms)
    batch, sizes = _sizes(pos, batch, sizes)
    mask, ptr = neighbour_mask(pos, r, batch, sizes, max_num_neighbors, loop=False)
    # mask[b, i, j]: edge j -> i. Triplets k -> j -> i per edge: edges into j (centre j) minus i -> j if present
    into = mask.sum(dim=2)  # (B, n_max) edges into each atom
    per_edge = mask * (into[:, None, :] - mask.transpose(1, 2).long())
    n_edges, n_triplets = read_counts(mask.sum(), per_edge.sum())
    edges_at_least_two(n_edges)
    edge_index = _edges(mask, ptr, n_edges)
    return edge_index, triplets(edge_index, n_atoms, n_triplets)

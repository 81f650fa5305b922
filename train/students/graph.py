"""Interaction graphs for the geometry students: radius graphs and DimeNet-style triplets.

Edge convention (PyG ``source_to_target``): ``edge_index[0] = j`` is the neighbour (source) and
``edge_index[1] = i`` the centre (target); messages flow j -> i. Positions are in Å and cutoffs in Å.

``radius_graph`` uses pyg-lib (what torch-geometric 2.8 calls) or torch-cluster when one of them is
importable, and otherwise an exact plain-torch fallback: the batch is padded to (B, n_max, 3), distances
are taken per molecule with one batched ``cdist`` (block-diagonal, so the cost is B * n_max^2, not A^2),
and the pairs within the cutoff are read off a mask. No Python loop over molecules.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["radius_graph", "radius_graph_torch", "accelerated_backend", "triplets", "RadiusInteractionGraph",
           "num_graphs", "undirected_pairs"]


def num_graphs(batch: Tensor) -> int:
    """Number of molecules in a batch vector (``batch.max() + 1``; 0 for an empty batch)."""
    return int(batch.max()) + 1 if batch.numel() else 0


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


def _check_batch(pos: Tensor, batch: Tensor | None) -> Tensor:
    if pos.dim() != 2 or pos.size(1) != 3:
        raise ValueError(f"radius_graph: positions must have shape (A, 3), got {tuple(pos.shape)}")
    if batch is None:
        return torch.zeros(pos.size(0), dtype=torch.long, device=pos.device)
    if batch.shape != (pos.size(0),):
        raise ValueError(f"radius_graph: batch must have shape ({pos.size(0)},), got {tuple(batch.shape)}")
    if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("radius_graph: batch vector must be sorted (atoms of one molecule contiguous)")
    return batch.long()


def radius_graph_torch(pos: Tensor, r: float, batch: Tensor | None = None, max_num_neighbors: int | None = 32,
                       loop: bool = False) -> Tensor:
    """Exact radius graph in plain torch.

    pos (A, 3); batch (A,) sorted molecule index. Returns edge_index (2, E) long with every pair (j, i) of
    atoms of the same molecule with |pos_i - pos_j| < r (and j != i unless ``loop``). When a centre has more
    than ``max_num_neighbors`` neighbours the nearest ones are kept (ties by index); self-loops do not count.
    Edges are ordered by centre i, then by neighbour j.
    """
    batch = _check_batch(pos, batch)
    n_atoms = pos.size(0)
    if n_atoms == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=pos.device)
    pos = pos.detach()
    n_mol = num_graphs(batch)
    counts = torch.bincount(batch, minlength=n_mol)
    ptr = torch.zeros(n_mol + 1, dtype=torch.long, device=pos.device)
    ptr[1:] = torch.cumsum(counts, 0)
    local = torch.arange(n_atoms, device=pos.device) - ptr[batch]
    n_max = int(counts.max())

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
    b, i, j = mask.nonzero(as_tuple=True)
    return torch.stack([ptr[b] + j, ptr[b] + i])


def radius_graph(pos: Tensor, r: float, batch: Tensor | None = None, max_num_neighbors: int | None = 32,
                 loop: bool = False, backend: str = "auto") -> Tensor:
    """Radius graph (2, E) of atoms closer than ``r`` Å within each molecule; see module docstring.

    backend: ``"auto"`` (compiled search when importable, else plain torch), ``"torch"``, ``"pyg-lib"`` or
    ``"torch-cluster"``. The compiled searches keep the *first* ``max_num_neighbors`` neighbours they find
    rather than the nearest, so the backends agree exactly only when no centre exceeds the limit.
    """
    if backend == "auto":
        backend = accelerated_backend() or "torch"
    if backend == "torch":
        return radius_graph_torch(pos, r, batch, max_num_neighbors, loop)
    batch = _check_batch(pos, batch)
    limit = max_num_neighbors if max_num_neighbors is not None else pos.size(0)
    if backend == "pyg-lib":
        from torch_geometric.nn import radius_graph as pyg_radius_graph
        return pyg_radius_graph(pos.detach(), r, batch, loop=loop, max_num_neighbors=limit)
    if backend == "torch-cluster":
        import torch_cluster
        return torch_cluster.radius_graph(pos.detach(), r, batch, loop=loop, max_num_neighbors=limit)
    raise ValueError(f"radius_graph: unknown backend {backend!r}; use auto, torch, pyg-lib or torch-cluster")


class RadiusInteractionGraph(torch.nn.Module):
    """``(pos, batch) -> (edge_index, edge_weight)``: the radius graph and its edge lengths (Å, differentiable).

    Drop-in for torch_geometric's ``SchNet(interaction_graph=...)``.
    """

    def __init__(self, cutoff: float = 10.0, max_num_neighbors: int | None = 32, loop: bool = False):
        super().__init__()
        self.cutoff = cutoff
        self.max_num_neighbors = max_num_neighbors
        self.loop = loop

    def forward(self, pos: Tensor, batch: Tensor | None) -> tuple[Tensor, Tensor]:
        edge_index = radius_graph(pos, self.cutoff, batch, self.max_num_neighbors, self.loop)
        j, i = edge_index
        return edge_index, (pos[i] - pos[j]).norm(dim=-1)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, max_num_neighbors={self.max_num_neighbors}, loop={self.loop}"


def undirected_pairs(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """The unordered atom pairs of a directed graph: ``rep`` (U,) the index of one edge of each pair (the first)
    and ``pair`` (E,) the pair of every edge. Edges j -> i and i -> j have the same length, so anything that
    depends on the length alone (a SchNet filter) is computed once per pair and read back with ``[pair]``."""
    a = torch.minimum(edge_index[0], edge_index[1])
    b = torch.maximum(edge_index[0], edge_index[1])
    keys, pair = torch.unique(a * num_nodes + b, return_inverse=True)
    n_edges = edge_index.size(1)
    rep = torch.full((len(keys),), n_edges, dtype=torch.long, device=pair.device)
    rep.scatter_reduce_(0, pair, torch.arange(n_edges, device=pair.device), "amin")
    return rep, pair


def triplets(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Angle triplets k -> j -> i of a directed graph (same outputs as torch_geometric's DimeNet ``triplets``).

    edge_index (2, E) with edge_index[0] = j (source), edge_index[1] = i (target), no self-loops.
    For every edge ji (j -> i) and every edge kj (k -> j) with k != i, one triplet.
    Returns ``(i, j, idx_i, idx_j, idx_k, idx_kj, idx_ji)``: ``i``/``j`` (E,) the target/source of each
    edge, then per triplet (T,) the three atoms and the indices of its two edges.
    """
    row, col = edge_index  # j -> i
    n_edges = row.size(0)
    device = row.device
    # CSR of incoming edges per node: the edges kj that end in node j
    perm = torch.argsort(col, stable=True)
    indeg = torch.bincount(col, minlength=num_nodes)
    start = torch.cumsum(indeg, 0) - indeg
    per_edge = indeg[row]  # edges k -> j arriving at the source j of edge ji
    idx_ji = torch.repeat_interleave(torch.arange(n_edges, device=device), per_edge)
    first = torch.cumsum(per_edge, 0) - per_edge
    offset = torch.arange(idx_ji.size(0), device=device) - first[idx_ji]
    idx_kj = perm[start[row[idx_ji]] + offset]
    idx_i, idx_j, idx_k = col[idx_ji], row[idx_ji], row[idx_kj]
    keep = idx_i != idx_k
    idx_i, idx_j, idx_k, idx_kj, idx_ji = idx_i[keep], idx_j[keep], idx_k[keep], idx_kj[keep], idx_ji[keep]
    return col, row, idx_i, idx_j, idx_k, idx_kj, idx_ji

"""What every geometry student shares: the call signature, pooling, and energy + forces by autograd.

A student maps a batch of molecules to ``(F_G, pred)``:

* ``z`` (A,) long atomic numbers, ``pos`` (A, 3) float positions in Å, ``batch`` (A,) long molecule index
  (sorted; ``None`` means one molecule);
* ``F_G`` (B, feature_dim): pooled node features before the output head (what EDG distils into);
* ``pred`` (B, out_dim): the property or energy in the task's units (the model is unit-agnostic).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from .graph import num_graphs

__all__ = ["Student", "energy_and_forces", "pool"]


def pool(x: Tensor, batch: Tensor, n_graphs: int, reduce: str) -> Tensor:
    """Pool node rows x (A, ...) into (B, ...) with ``reduce`` in {"sum", "add", "mean"}."""
    if reduce not in ("sum", "add", "mean"):
        raise ValueError(f"unknown pooling {reduce!r}; use sum or mean")
    return scatter(x, batch, dim=0, dim_size=n_graphs, reduce="sum" if reduce == "add" else reduce)


class Student(torch.nn.Module):
    """Base class: subclasses set ``feature_dim`` and ``out_dim`` and implement ``encode``."""

    feature_dim: int
    out_dim: int

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch = self.check_inputs(z, pos, batch)
        return self.encode(z, pos, batch, num_graphs(batch))

    def encode(self, z: Tensor, pos: Tensor, batch: Tensor, n_graphs: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def check_inputs(self, z: Tensor, pos: Tensor, batch: Tensor | None) -> Tensor:
        name = type(self).__name__
        if z.dim() != 1 or z.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"{name}: z must be a 1-D integer tensor, got shape {tuple(z.shape)} {z.dtype}")
        if pos.shape != (z.size(0), 3) or not pos.is_floating_point():
            raise ValueError(f"{name}: pos must be a float tensor of shape ({z.size(0)}, 3), "
                             f"got {tuple(pos.shape)} {pos.dtype}")
        if z.numel() == 0:
            raise ValueError(f"{name}: empty batch (zero atoms)")
        if batch is None:
            return torch.zeros_like(z, dtype=torch.long)
        if batch.shape != z.shape:
            raise ValueError(f"{name}: batch must have shape {tuple(z.shape)}, got {tuple(batch.shape)}")
        return batch.long()


def energy_and_forces(model: torch.nn.Module, z: Tensor, pos: Tensor, batch: Tensor | None = None,
                      create_graph: bool | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Energy and forces of a student whose ``pred`` is one energy per molecule.

    Returns ``(F_G (B, d_G), energy (B,), forces (A, 3))`` with forces = -dE/dpos by autograd, in the
    energy unit per Å. ``create_graph`` (default: ``model.training``) keeps the force graph so that a
    force loss can be back-propagated; it works under ``torch.no_grad()`` too (gradients are enabled here).
    """
    if create_graph is None:
        create_graph = model.training
    with torch.enable_grad():
        if not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        feats, pred = model(z, pos, batch)
        if pred.dim() != 2 or pred.size(1) != 1:
            raise ValueError(f"energy_and_forces: the student predicts {tuple(pred.shape)}; an energy model "
                             "needs out_dim=1")
        energy = pred[:, 0]
        (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
    return feats, energy, -grad

"""Count the host syncs of a student's training step: ops whose output size or value must reach the host.

On a GPU such an op makes the CPU wait for every queued kernel; at small batches (rMD17 batch 1) those waits,
not the arithmetic, set the speed. ``HostSyncCounter`` is a ``TorchDispatchMode`` that records, for every aten
op run under it (forward, backward on the calling thread, optimizer), the ones that read the device:

* values read by the host: ``_local_scalar_dense`` (``.item()``, ``int(t)``, ``bool(t)``), ``equal``;
* data-dependent output sizes: ``nonzero``, ``unique*``, ``masked_select``, ``bincount``, indexing with a
  boolean mask, ``repeat_interleave`` without ``output_size``;
* copies from a device to the CPU (only visible when the step runs on a device).

``nonzero_static`` (size given by the caller) and ``repeat_interleave(..., output_size=n)`` are not syncs.
On the CPU the count is a stand-in for what the same step does on CUDA: the same ops are dispatched.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncCounter", "student_step_syncs", "SYNC_BUDGET"]

SYNC_BUDGET = 1
"""Host syncs allowed per training step of a student: the size of its neighbour list (with triplets, the
edge and triplet counts read together in one transfer)."""

_ALWAYS = {"_local_scalar_dense", "equal", "nonzero", "argwhere", "masked_select", "bincount", "_unique",
           "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive"}


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in indices or ())


def _is_device_to_host(name: str, args, out) -> bool:
    if name not in ("_to_copy", "copy_"):
        return False
    src = args[1] if name == "copy_" else args[0]
    dst = args[0] if name == "copy_" else out
    return (isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor)
            and src.device.type not in ("cpu", "meta") and dst.device.type == "cpu")


def reads_host(func, args, kwargs, out) -> bool:
    """Whether one dispatched aten op makes the host wait for the device (see the module docstring)."""
    name = func.overloadpacket.__name__
    if name in _ALWAYS:
        return True
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        return _has_bool_index(args)
    if name == "repeat_interleave":
        return func._overloadname != "self_int" and kwargs.get("output_size") is None
    return _is_device_to_host(name, args, out)


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter() as c: ...``; then ``c.syncs`` lists the op names (one entry per sync)."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if reads_host(func, args, kwargs, out):
            self.syncs.append(str(func))
        return out


def _small_molecules(n_molecules: int, seed: int = 0):
    """A ``PackedMolecules`` of ``n_molecules`` random molecules of 5..9 atoms (H, C, N, O; bonds ~1.2 Å apart)
    with energy and force labels."""
    from edg.train.tasks.packed import PackedMolecules
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(5, 10, (n_molecules,), generator=g)
    n_atoms = int(counts.sum())
    z = torch.tensor([1, 6, 7, 8])[torch.randint(0, 4, (n_atoms,), generator=g)]
    pos = torch.randn(n_atoms, 3, generator=g) * 1.2
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    return PackedMolecules(z, pos, offsets, [f"m{i}" for i in range(n_molecules)],
                           {"energy": torch.randn(n_molecules, generator=g)},
                           {"forces": torch.randn(n_atoms, 3, generator=g)})


SMALL_STUDENTS: dict[str, dict] = {
    "schnet": dict(hidden_channels=16, num_filters=16, num_interactions=2, num_gaussians=8),
    "visnet": dict(hidden_channels=16, num_layers=2, num_heads=2, num_rbf=8),
    "dimenetpp": dict(hidden_channels=16, num_blocks=2, int_emb_size=8, basis_emb_size=4, out_emb_channels=16,
                      num_spherical=3, num_radial=4),
    "egnn": dict(hidden_channels=16, num_layers=2),
    "painn": dict(hidden_channels=16, num_layers=2, num_rbf=8),
    "spherenet": dict(hidden_channels=16, out_emb_channels=16, int_emb_size=8, basis_emb_size_dist=4,
                      basis_emb_size_angle=4, basis_emb_size_torsion=4, num_layers=2, num_radial=4),
    "spherenet-edg": dict(hidden_channels=16, out_emb_channels=16, int_emb_size=8, basis_emb_size_dist=4,
                          basis_emb_size_angle=4, basis_emb_size_torsion=4, num_layers=2, num_radial=4),
    "equiformer": dict(irreps_node_embedding="16x0e+8x1e+4x2e", num_layers=2, irreps_feature="16x0e",
                       irreps_head="8x0e+4x1e+2x2e", num_heads=2, irreps_mlp_mid="16x0e+8x1e+4x2e", num_basis=8,
                       fc_neurons=(8, 8)),
    "equiformer-edg": dict(hidden_channels=16, num_layers=2, num_heads=2, alpha_channels=4, num_rbf=8,
                           radial_hidden=8, feature_channels=16),
}
"""Small configs of every registered student (same code paths as the defaults, a fraction of the arithmetic)."""


def student_step_syncs(name: str, student_args: dict | None = None, n_molecules: int = 4,
                       device: str = "cpu", make_optimizer: Callable | None = None) -> list[str]:
    """The host syncs of one rMD17-style training step (the batch gathered by ``PackedMolecules.gather``,
    energy and forces by autograd with the force graph kept, L1 loss on both, backward, optimizer step) of
    student ``name``. ``make_optimizer(params)``: the training loops' choice for CUDA (fused AdamW) by default.
    The model and data are made, and one step taken (lazy optimizer state), outside the count."""
    from edg.train.loops.optim import adamw_for
    from edg.train.students import build_student, energy_and_forces
    torch.manual_seed(0)
    args = SMALL_STUDENTS.get(name, {}) if student_args is None else student_args
    model = build_student(name, **args).to(device)
    optimizer = (make_optimizer or (lambda p: adamw_for(p, lr=1e-4, device=torch.device("cuda"))))(
        model.parameters())
    data = _small_molecules(n_molecules).to(device)
    index = torch.arange(n_molecules)

    def step():
        batch = data.gather(index)
        optimizer.zero_grad(set_to_none=True)
        _, energy, forces = energy_and_forces(model, batch.z, batch.pos, batch.batch, create_graph=True,
                                              sizes=batch.sizes)
        loss = (torch.nn.functional.l1_loss(energy, batch.labels["energy"])
                + torch.nn.functional.l1_loss(forces, batch.labels["forces"]))
        loss.backward()
        optimizer.step()

    step()  # first step: lazy state (optimizer moments) is created outside the count
    with HostSyncCounter() as counter:
        step()
    return counter.syncs

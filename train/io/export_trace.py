"""What ``edg export`` traces: a student's standardised energy with the batch sizes carried by tensor shapes.

``EnergyOutput(student)`` is called as ``(z (A,), pos (A, 3) Å, batch (A,), graphs (B,), atoms (n_max,))``
and returns the student's output (B,) (energy in units of the run's scale, around its mean). The lengths of the
zero tensors ``graphs`` and ``atoms`` are the batch's molecule count B and largest molecule n_max, which the
students' radius graph needs on the host (``GraphSizes``); passing them as shapes lets ``torch.export`` keep
them symbolic instead of baking in the example's values.

This module imports the students (the training code): only ``export_run`` uses it, never the loader.
"""
from __future__ import annotations

import contextlib

import torch
from edg.train.students.graph import GraphSizes
from torch import Tensor

NODE_META_DROPPED = ("stack_trace", "nn_module_stack", "source_fn_stack", "from_node", "torch_fn")
"""Node metadata a model file does not need: source lines and module paths of the machine that exported it."""


class EnergyOutput(torch.nn.Module):
    """The traced function of an energy student (see the module docstring). ``z_range`` of the sizes is (1, 1):
    the atomic-number check of the students is replaced by the loader's check against the model card, which is
    stricter (only elements seen in training)."""

    def __init__(self, student: torch.nn.Module):
        super().__init__()
        self.student = student

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor, graphs: Tensor, atoms: Tensor) -> Tensor:
        sizes = GraphSizes(graphs.shape[0], atoms.shape[0], (1, 1))
        _, pred = self.student(z, pos, batch, sizes)
        return pred[:, 0]


@contextlib.contextmanager
def plain_torch_graphs():
    """Within the block, the students build radius graphs with the plain-torch search, never pyg-lib or
    torch-cluster: the exported program must hold only ATen operators (a loader has neither library, and the
    compiled searches are not traceable)."""
    from edg.train.students import graph
    saved = graph.accelerated_backend
    graph.accelerated_backend = lambda: None
    try:
        yield
    finally:
        graph.accelerated_backend = saved


def strip_metadata(ep):
    """``ep`` with the machine-specific node metadata (``NODE_META_DROPPED``) removed, in place."""
    for node in ep.graph.nodes:
        for key in NODE_META_DROPPED:
            node.meta.pop(key, None)
    return ep

"""Molecules packed into flat tensors once, so that a training step gathers a batch with a few index ops.

``PackedMolecules`` holds every atom of a data set in one tensor (``z`` (A,), ``pos`` (A, 3) Å) with per-molecule
``offsets`` (M + 1,); a batch of molecule indices becomes (z, pos, batch) without a Python loop over molecules.
The atom counts are also kept on the host, so that a batch's sizes (``GraphSizes``: molecules, atoms of the
largest) are known without reading the device: a student's step then reads it at most once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from edg.train.students.graph import GraphSizes


@dataclass
class Batch:
    """One batch of molecules: flat atoms plus per-molecule labels.

    z (A,) long; pos (A, 3) float Å; batch (A,) long molecule index in 0..B-1; index (B,) long positions of the
    molecules in their data set; labels: name -> tensor with leading dimension B (molecule labels) or A (atom
    labels, for example forces (A, 3)); sizes: the host-side ``GraphSizes`` the students take (no device read).
    """
    z: torch.Tensor
    pos: torch.Tensor
    batch: torch.Tensor
    index: torch.Tensor
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    sizes: GraphSizes | None = None

    @property
    def num_molecules(self) -> int:
        return int(self.index.shape[0])


@dataclass
class PackedMolecules:
    """A data set as flat tensors.

    z (A,) long; pos (A, 3) float32 Å; offsets (M + 1,) long; mol_labels: name -> (M, ...) tensors;
    atom_labels: name -> (A, ...) tensors; ids: list of M molecule ids (for teacher targets and reports).
    """
    z: torch.Tensor
    pos: torch.Tensor
    offsets: torch.Tensor
    ids: list[str]
    mol_labels: dict[str, torch.Tensor] = field(default_factory=dict)
    atom_labels: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        m = len(self.ids)
        if self.offsets.shape[0] != m + 1:
            raise ValueError(f"{m} ids but {self.offsets.shape[0]} offsets (need M + 1)")
        a = int(self.offsets[-1])
        if self.z.shape[0] != a or self.pos.shape != (a, 3):
            raise ValueError(f"offsets end at {a} atoms but z{tuple(self.z.shape)} pos{tuple(self.pos.shape)}")
        for k, v in self.mol_labels.items():
            if v.shape[0] != m:
                raise ValueError(f"molecule label {k!r} has {v.shape[0]} rows for {m} molecules")
        for k, v in self.atom_labels.items():
            if v.shape[0] != a:
                raise ValueError(f"atom label {k!r} has {v.shape[0]} rows for {a} atoms")
        self.counts = self.offsets[1:] - self.offsets[:-1]
        self.host_counts = np.diff(self.offsets.cpu().numpy())  # (M,) atoms per molecule, on the host
        self.z_range = (int(self.z.min()), int(self.z.max())) if a else (0, 0)  # read once per data set

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_atoms(self) -> int:
        return int(self.z.shape[0])

    def with_labels(self, **mol_labels: torch.Tensor) -> PackedMolecules:
        """A copy sharing the atoms with extra molecule labels (for example teacher targets ``edp`` (M, 768))."""
        return PackedMolecules(self.z, self.pos, self.offsets, self.ids, {**self.mol_labels, **mol_labels},
                               self.atom_labels)

    def to(self, device) -> PackedMolecules:
        return PackedMolecules(self.z.to(device), self.pos.to(device), self.offsets.to(device), self.ids,
                               {k: v.to(device) for k, v in self.mol_labels.items()},
                               {k: v.to(device) for k, v in self.atom_labels.items()})

    def gather(self, index: torch.Tensor) -> Batch:
        """The molecules at ``index`` (B,) as a ``Batch`` (vectorised; no loop over molecules)."""
        host_counts = self.host_counts[index.cpu().numpy()]
        n_atoms = int(host_counts.sum())
        sizes = GraphSizes(len(host_counts), int(host_counts.max()) if len(host_counts) else 0, self.z_range)
        index = index.to(self.offsets.device, non_blocking=True)
        counts = self.counts[index]
        starts = self.offsets[index]
        batch = torch.repeat_interleave(torch.arange(index.shape[0], device=index.device), counts,
                                        output_size=n_atoms)
        first = torch.cumsum(counts, 0) - counts  # position of each molecule's first atom in the batch
        atom = starts[batch] + torch.arange(batch.shape[0], device=index.device) - first[batch]
        labels = {k: v[index] for k, v in self.mol_labels.items()}
        labels.update({k: v[atom] for k, v in self.atom_labels.items()})
        return Batch(self.z[atom], self.pos[atom], batch, index, labels, sizes)

    def select(self, index: torch.Tensor | np.ndarray) -> PackedMolecules:
        """A new data set of the molecules at ``index`` (in that order)."""
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        b = self.gather(index)
        counts = self.counts[index]
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
        atom_labels = {k: b.labels[k] for k in self.atom_labels}
        mol_labels = {k: b.labels[k] for k in self.mol_labels}
        return PackedMolecules(b.z, b.pos, offsets, [self.ids[i] for i in index.tolist()], mol_labels, atom_labels)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        """Yield ``Batch`` objects covering the data set once (shuffled with ``generator`` if asked)."""
        m = len(self)
        order = torch.randperm(m, generator=generator) if shuffle else torch.arange(m)
        for i in range(0, m, batch_size):
            yield self.gather(order[i:i + batch_size])

    @classmethod
    def from_arrays(cls, zs: list[np.ndarray] | np.ndarray, pos: np.ndarray, offsets: np.ndarray | None,
                    ids: list[str], mol_labels: dict[str, np.ndarray] | None = None,
                    atom_labels: dict[str, np.ndarray] | None = None) -> PackedMolecules:
        """Build from flat numpy arrays (``offsets`` None: ``pos`` is (M, N, 3) frames of one molecule ``zs`` (N,))."""
        if offsets is None:  # frames of a single molecule
            frames, n = pos.shape[0], pos.shape[1]
            z = np.tile(np.asarray(zs, dtype=np.int64), frames)
            pos = pos.reshape(-1, 3)
            offsets = np.arange(frames + 1, dtype=np.int64) * n
            atom_labels = {k: np.asarray(v).reshape(frames * n, *np.asarray(v).shape[2:])
                           for k, v in (atom_labels or {}).items()}
        else:
            z = np.asarray(zs, dtype=np.int64)
        return cls(torch.as_tensor(z, dtype=torch.long), torch.as_tensor(pos, dtype=torch.float32),
                   torch.as_tensor(offsets, dtype=torch.long), list(ids),
                   {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in (mol_labels or {}).items()},
                   {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in (atom_labels or {}).items()})

"""Warm starts along a trajectory: the SCF of a frame starts from the densities of the frames before it.

A DFT worker sees the frames of a trajectory (an MD run, rMD17 in time order, a multi-frame XYZ) one after the
other. ``WarmStart`` keeps the converged densities of the last few frames of one chain and guesses the next
frame's density from them, so the SCF starts near its answer instead of from PySCF's atomic guess (``minao``).

When a frame continues the chain (``WarmStart.match``): the same atomic numbers in the same order, the same
charge, multiplicity, basis and d/f convention (hence the same AO layout), and no atom moved more than
``max_shift`` Å from the previous frame (lab frame, no alignment: the AO basis moves with the atoms, so a rigid
translation costs nothing, and the threshold is a sanity bound on what the old density can say about the new
geometry, not a convergence criterion). Anything else (another molecule, a jump, a failed frame) starts a new
chain with a cold SCF. Detection is by the molecules themselves, so no reader has to declare its input a
trajectory, and unrelated molecules (QM9) are never warm-started.

The guess: each stored density in the orthonormal (Löwdin) basis of its own geometry, P' = S^1/2 D S^1/2 / n_spin,
which moves with the atoms; a polynomial extrapolation in the frame index (previous frame, linear or quadratic),
whichever order predicts the new *geometry* best from the stored geometries (uneven spacing or a turn in the
path falls back to a lower order); back to the new geometry's AO basis with S^-1/2 and made idempotent with the
right electron count (the occupied eigenvectors of P'). Measured on an ethanol MD (B3LYP/6-31G**, frames 1 fs
apart): 9 SCF cycles cold, 7 from the previous density, 6 with the extrapolation (docs/scale.md).

The guess only changes where the SCF starts: it converges to the same criteria, to the same total energy (1e-10
Eh apart in the tests and the benchmark; the requirement is 1e-6; the energy parts E3..E5, linear in the density,
agree to what the stopping criteria leave open, ~5e-5 Eh, as from any two starts), and a warm SCF that does
not converge is redone cold (``dft.scf.run_scf``). The arithmetic is on the host (numpy): a few (nao, nao)
products and three eigendecompositions per warm frame. A frame's orthonormal density is computed only when a
next frame continues its chain, so inputs without chains (QM9) pay a host copy of each density and nothing else.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

EXTRAPOLATION = ((1.0,), (2.0, -1.0), (3.0, -3.0, 1.0))
"""Coefficients of the stored frames (newest first) for orders 0, 1 and 2 (equal time steps)."""


@dataclass
class _Frame:
    pos: np.ndarray          # (N, 3) Å
    spins: np.ndarray        # (n_spin, nao, nao): the converged density of each spin (RKS: half the total), AO basis
    pmol: object             # the frame's pyscf Mole (its overlap matrix)
    _p_orth: np.ndarray | None = None

    @property
    def p_orth(self) -> np.ndarray:
        """S^1/2 D_spin S^1/2 in this frame's orthonormal basis, computed when a next frame first needs it (a
        molecule no frame follows, as in QM9, costs no eigendecomposition)."""
        if self._p_orth is None:
            s_half, _ = _sqrt_pair(self.pmol.intor_symmetric("int1e_ovlp"))
            self._p_orth = np.stack([s_half @ d @ s_half for d in self.spins])
        return self._p_orth


@dataclass
class Guess:
    """A start density for one frame: ``dm`` (nao, nao) RKS or (2, nao, nao) UKS, AO basis, numpy; the
    extrapolation ``order`` used (0: the previous density) and the largest atomic move ``shift`` (Å) since the
    previous frame."""
    dm: np.ndarray
    order: int
    shift: float


def _sqrt_pair(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """S^1/2 and S^-1/2 of a symmetric positive definite overlap matrix."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(w)) @ v.T, (v / np.sqrt(w)) @ v.T


def _occupied(p_orth: np.ndarray, n_occ: int) -> np.ndarray:
    """The ``n_occ`` eigenvectors of the largest eigenvalues of ``p_orth`` (nao, n_occ): the idempotent density
    nearest to an extrapolated one."""
    w, v = np.linalg.eigh((p_orth + p_orth.T) / 2)
    return v[:, len(w) - n_occ:]


class WarmStart:
    """The chain of recent frames a DFT worker has converged; see the module docstring.

    ``max_shift``: Å, the largest move of any atom from the previous frame that still continues the chain;
    ``depth``: frames kept (3 allows the quadratic extrapolation)."""

    def __init__(self, max_shift: float = 0.5, depth: int = 3):
        self.max_shift = max_shift
        self.frames: deque[_Frame] = deque(maxlen=max(1, min(depth, len(EXTRAPOLATION))))
        self.signature: tuple | None = None
        self._next_root: tuple | None = None  # (pmol, S^1/2) of the frame guess() was last asked for

    @staticmethod
    def _signature(mol, pmol) -> tuple:
        return (tuple(int(z) for z in mol.z), int(mol.charge), int(pmol.spin), str(pmol.basis), bool(pmol.cart),
                int(pmol.nao))

    def forget(self) -> None:
        """End the chain: the next frame starts cold."""
        self.frames.clear()
        self.signature = None
        self._next_root = None

    def match(self, mol, pmol) -> float | None:
        """The largest atomic move (Å) from the previous frame when ``mol`` (built as ``pmol``) continues the
        chain, else None."""
        if not self.frames or self._signature(mol, pmol) != self.signature:
            return None
        shift = float(np.linalg.norm(np.asarray(mol.pos, float) - self.frames[-1].pos, axis=1).max())
        return shift if shift <= self.max_shift else None

    def _order(self, pos: np.ndarray) -> int:
        """The extrapolation order (up to what the stored frames allow) whose extrapolated geometry is nearest
        to ``pos``; ties go to the lower order."""
        best, best_err = 0, np.inf
        for order in range(len(self.frames)):
            coef = EXTRAPOLATION[order]
            predicted = sum(c * self.frames[-1 - k].pos for k, c in enumerate(coef))
            err = float(np.abs(predicted - pos).max())
            if err < best_err - 1e-12:
                best, best_err = order, err
        return best

    def guess(self, mol, pmol) -> Guess | None:
        """The start density for ``mol`` (built as ``pmol``), or None when it does not continue the chain (which
        then ends)."""
        shift = self.match(mol, pmol)
        if shift is None:
            self.forget()
            return None
        pos = np.asarray(mol.pos, float)
        order = self._order(pos)
        p_orth = sum(c * self.frames[-1 - k].p_orth for k, c in enumerate(EXTRAPOLATION[order]))
        s_half, s_inv_half = _sqrt_pair(pmol.intor_symmetric("int1e_ovlp"))
        n_alpha, n_beta = pmol.nelec
        if pmol.spin == 0:
            c = s_inv_half @ _occupied(p_orth[0], n_alpha)
            dm = 2.0 * c @ c.T
        else:
            dm = np.stack([(lambda c: c @ c.T)(s_inv_half @ _occupied(p, n)) for p, n in
                           zip(p_orth, (n_alpha, n_beta))])
        self._next_root = (pmol, s_half)  # this frame's S^1/2, for remember()
        return Guess(dm=dm, order=order, shift=shift)

    def remember(self, mol, pmol, dm) -> None:
        """Add a converged frame: ``dm`` its density matrix (RKS (nao, nao) total, UKS (2, nao, nao); numpy or
        a device array: copied to the host). A frame that does not continue the chain starts a new one."""
        from .backend import to_numpy
        if self.match(mol, pmol) is None:
            self.forget()
        dm = np.asarray(to_numpy(dm), dtype=np.float64)
        frame = _Frame(pos=np.array(mol.pos, dtype=np.float64), spins=dm[None] / 2.0 if dm.ndim == 2 else dm,
                       pmol=pmol)
        root, self._next_root = self._next_root, None
        if root is not None and root[0] is pmol:  # guess() computed S^1/2 of this geometry already
            frame._p_orth = np.stack([root[1] @ d @ root[1] for d in frame.spins])
        self.frames.append(frame)
        self.signature = self._signature(mol, pmol)

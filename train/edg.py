"""EDG distillation: a student's pooled features are mapped into the teacher's feature space and pushed,
through the teacher's frozen ED predictor, towards the stored ED knowledge of each conformation.

    M = Linear(d_G -> 512)                       (trained with the student)
    L_ED = SmoothL1(EDP(M(F_G)), EDP(F_S))       (EDP frozen; EDP(F_S) stored once per conformation)
    L = L_task + lambda * L_ED                   (lambda = 0: the baseline; L_ED is then not computed)

Shapes: F_G (B, d_G); F_S (B, 512); EDP(.) (B, 768). The teacher itself never runs during student training.
Teacher targets are read from an ``.npz`` or from shards (``fs.npy`` / ``edp.npy`` members, edg_core/shards.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edg.edg_core.errors import DataSourceError
from edg.edg_core.units import ANGSTROM_IN_BOHR

FS_DIM = 512   # teacher feature F_S (ResNet18)
EDP_DIM = 768  # ED predictor output (ImageED feature space)


@dataclass
class EDGConfig:
    lambda_ed: float = 0.0              # weight of L_ED; the paper searches {1e-4, 5e-4, ..., 1.0}; 0 = baseline
    smooth_l1_beta: float = 1.0         # SmoothL1 transition point (torch default, as the official code)
    ed_predictor: str | None = None     # trained ED predictor weights (teacher stage); None: seeded random init
    ed_predictor_seed: int = 0          # seed of the random ED predictor when no weights are given
    teacher_targets: str | None = None  # .npz / shard folder with edp (or fs) per molecule id, or "standin:coulomb"


class EDGHead(nn.Module):
    """Mapper M (trainable) followed by the frozen ED predictor; ``loss`` is L_ED."""

    def __init__(self, feature_dim: int, ed_predictor: nn.Module, fs_dim: int | None = None, beta: float = 1.0):
        super().__init__()
        self.mapper = nn.Linear(feature_dim, fs_dim or predictor_dims(ed_predictor)[0])
        self.ed_predictor = ed_predictor
        self.ed_predictor.requires_grad_(False)
        self.ed_predictor.eval()
        self.beta = beta

    def train(self, mode: bool = True) -> EDGHead:
        super().train(mode)
        self.ed_predictor.eval()  # frozen: never in training mode
        return self

    def forward(self, f_g: torch.Tensor) -> torch.Tensor:
        """F_G (B, d_G) -> EDP(M(F_G)) (B, 768)."""
        return self.ed_predictor(self.mapper(f_g))

    def loss(self, f_g: torch.Tensor, edp_target: torch.Tensor) -> torch.Tensor:
        """L_ED = SmoothL1(EDP(M(F_G)), EDP(F_S)), mean over batch and features."""
        return nn.functional.smooth_l1_loss(self(f_g), edp_target, beta=self.beta)


def edg_objective(task_loss: torch.Tensor, lambda_ed: float, head: EDGHead | None = None,
                  f_g: torch.Tensor | None = None, edp_target: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """L = L_task + lambda * L_ED; returns (L, L_ED). With lambda = 0, L is L_task itself and L_ED is None."""
    if lambda_ed == 0:
        return task_loss, None
    if head is None or f_g is None or edp_target is None:
        raise ValueError("lambda_ed > 0 needs the EDG head, the student features F_G and the teacher targets")
    l_ed = head.loss(f_g, edp_target)
    return task_loss + lambda_ed * l_ed, l_ed


def build_ed_predictor(path: str | None = None, seed: int = 0) -> nn.Module:
    """The teacher's ED predictor: trained weights from ``path`` (a plain-data teacher checkpoint; see
    ``train.checkpoint.load_checkpoint``), or a seeded random one (tests, stand-ins)."""
    from edg.train.teacher import EDPredictor, load_ed_predictor
    if path:
        if not Path(path).exists():
            raise DataSourceError(f"ED predictor weights {path} do not exist")
        return load_ed_predictor(path)
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return EDPredictor()
    finally:
        torch.random.set_rng_state(gen_state)


# ---------------------------------------------------------------- teacher targets
def _rows_from_npz(path: Path, fs_dim: int = FS_DIM, edp_dim: int = EDP_DIM
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """id -> edp (768,) and id -> fs (512,) from an npz in either layout (see ``load_teacher_targets``)."""
    edp, fs = {}, {}
    with np.load(path, allow_pickle=False) as d:
        files = set(d.files)
        if "ids" in files:
            ids = [str(x) for x in d["ids"]]
            for name, dest in (("edp", edp), ("fs", fs)):
                if name in files:
                    arr = d[name]
                    if arr.shape[0] != len(ids):
                        raise DataSourceError(f"{path}: {name} has {arr.shape[0]} rows for {len(ids)} ids")
                    dest.update(zip(ids, arr))
        else:
            for key in files:
                mol_id, _, member = key.rpartition("/") if "/" in key else (key, "", "")
                vec = d[key].reshape(-1)
                kind = member or {edp_dim: "edp", fs_dim: "fs"}.get(vec.shape[0], "")
                if kind == "edp":
                    edp[mol_id] = vec
                elif kind == "fs":
                    fs[mol_id] = vec
                else:
                    raise DataSourceError(f"{path}: key {key!r} holds {vec.shape[0]} values; expected "
                                          f"edp ({edp_dim}) or fs ({fs_dim}), or name it '<id>/edp' / '<id>/fs'")
    if not edp and not fs:
        raise DataSourceError(f"{path}: no teacher targets (need arrays ids + edp/fs, or one key per molecule id)")
    return edp, fs


def _rows_from_shards(spec: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    from edg.edg_core.shards import read_samples
    edp, fs = {}, {}
    for s in read_samples(spec, torch_tensors=False):
        mol_id = s["meta"]["id"]
        if "edp" in s:
            edp[mol_id] = s["edp"]
        if "fs" in s:
            fs[mol_id] = s["fs"]
    return edp, fs


def predictor_dims(module: nn.Module | None) -> tuple[int, int]:
    """(input, output) width of an ED predictor: (512, 768) for the paper's; smaller in demo-size pipelines."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)] if module is not None else []
    return (linears[0].in_features, linears[-1].out_features) if linears else (FS_DIM, EDP_DIM)


def load_teacher_targets(source: str, ids: list[str], ed_predictor: nn.Module | None = None) -> torch.Tensor:
    """EDP(F_S) (M, 768) float32 for the molecules ``ids``, in that order (the width is the ED predictor's output
    when one is given: demo-size teachers predict fewer than 768 features).

    ``source``: an ``.npz`` with arrays ``ids`` (M,) str and ``edp`` (M, 768) and/or ``fs`` (M, 512); or an
    ``.npz`` with one key per molecule id (value (768,) = edp or (512,) = fs; or keys ``<id>/edp``, ``<id>/fs``);
    or shards (folder / glob / .tar) whose samples carry ``edp.npy`` or ``fs.npy``. Where only F_S is stored,
    EDP(F_S) is computed once with ``ed_predictor``. A missing id raises ``DataSourceError`` naming it.
    """
    fs_dim, edp_dim = predictor_dims(ed_predictor)
    path = Path(source)
    if path.suffix == ".npz":
        if not path.exists():
            raise DataSourceError(f"teacher targets {path} do not exist")
        edp, fs = _rows_from_npz(path, fs_dim, edp_dim)
    else:
        edp, fs = _rows_from_shards(source)
    missing = [i for i in ids if i not in edp and i not in fs]
    if missing:
        raise DataSourceError(f"teacher targets {source}: no edp/fs for {len(missing)} of {len(ids)} molecules, "
                              f"first {missing[:3]}")
    need_fs = [i for i in ids if i not in edp]
    if need_fs:
        if ed_predictor is None:
            raise DataSourceError(f"teacher targets {source}: {len(need_fs)} molecules have only fs "
                                  f"(first {need_fs[0]!r}); an ED predictor is needed to compute EDP(F_S)")
        with torch.no_grad():
            x = torch.as_tensor(np.stack([fs[i] for i in need_fs]), dtype=torch.float32)
            computed = ed_predictor(x).numpy()
        edp.update(zip(need_fs, computed))
    out = np.stack([np.asarray(edp[i], dtype=np.float32).reshape(-1) for i in ids])
    if out.shape[1] != edp_dim:
        raise DataSourceError(f"teacher targets {source}: edp has {out.shape[1]} values per molecule, "
                              f"expected {edp_dim} (the ED predictor's output)")
    if not np.isfinite(out).all():
        bad = ids[int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])]
        raise DataSourceError(f"teacher targets {source}: non-finite edp for {bad}")
    return torch.from_numpy(out)


# ---------------------------------------------------------------- stand-in teacher (no pipeline teacher yet)
def coulomb_standin_features(z: torch.Tensor, pos: torch.Tensor, offsets: torch.Tensor, dim: int = FS_DIM,
                             seed: int = 0) -> torch.Tensor:
    """A stand-in for F_S when no image teacher exists: a fixed random 2-layer Softplus network applied to
    the sorted eigenvalues of each molecule's Coulomb matrix (C_ii = 0.5 Z^2.4, C_ij = Z_i Z_j / r_ij, bohr).

    It carries geometry information only (no electron density); use it to exercise EDG, never to claim an
    ED benefit. z (A,), pos (A, 3) Å, offsets (M + 1,) -> (M, dim) float32.
    """
    counts = offsets[1:] - offsets[:-1]
    m, n_max = counts.shape[0], int(counts.max())
    mol = torch.repeat_interleave(torch.arange(m), counts)
    local = torch.arange(z.shape[0]) - offsets[:-1][mol]
    zp = torch.zeros(m, n_max, dtype=torch.float64)
    xp = torch.zeros(m, n_max, 3, dtype=torch.float64)
    zp[mol, local] = z.double()
    xp[mol, local] = pos.double() * ANGSTROM_IN_BOHR
    r = torch.cdist(xp, xp)
    eye = torch.eye(n_max, dtype=torch.bool)
    cm = zp[:, :, None] * zp[:, None, :] / torch.where(eye | (r == 0), torch.ones_like(r), r)
    cm = torch.where(eye, 0.5 * zp[:, :, None] ** 2.4 * torch.ones_like(r), cm)
    cm = cm * ((zp[:, :, None] > 0) & (zp[:, None, :] > 0))
    eig = torch.linalg.eigvalsh(cm).flip(-1).float()  # (M, n_max), descending
    eig = (eig - eig.mean(0)) / (eig.std(0) + 1e-6) if m > 1 else eig
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(n_max, 256, generator=gen) / n_max ** 0.5
    w2 = torch.randn(256, dim, generator=gen) / 16.0
    return nn.functional.softplus(nn.functional.softplus(eig @ w1) @ w2)

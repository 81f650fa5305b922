"""The distillation targets EDP(F_S) of each molecule: read from an ``.npz`` or from shards (``fs.npy`` /
``edp.npy`` members, edg_core/shards.py), or the Coulomb-matrix stand-in for runs without a teacher."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from edg.edg_core.errors import DataSourceError
from edg.edg_core.units import ANGSTROM_IN_BOHR
from edg.train.models.edg_head import EDP_DIM, FS_DIM, predictor_dims
from torch import nn


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


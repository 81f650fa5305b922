"""The molecules of the ED representation study in memory (``StudyData``): ED point clouds (``sample_points``),
voxels (``voxelise``) and images of decoded shard samples (``build_study_data``), their seeded split
(``split_indices``) and the standardised targets (``TargetScaler``: per-element atom references, mean, std)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from edg.edg_core.errors import EDGError, InvalidRecord
from edg.edg_core.grid import CubeGrid
from edg.edg_core.io import progress
from edg.edg_core.units import ANGSTROM_IN_BOHR
from edg.train.configs import TARGETS, RepresentationConfig


def atoms_centre_bohr(pos_angstrom) -> torch.Tensor:
    """Centroid of the atoms, (3,) float64, bohr."""
    return torch.as_tensor(np.asarray(pos_angstrom, dtype=np.float64)).mean(0) * ANGSTROM_IN_BOHR


def sample_points(ed: torch.Tensor, grid: CubeGrid, centre_bohr: torch.Tensor, n_points: int, iso: float,
                  generator: torch.Generator, jitter: bool = True, record: str = "?") -> torch.Tensor:
    """An ED point cloud: (n_points, 4) float32 = (x, y, z relative to ``centre_bohr`` in bohr, log rho).

    Grid points with rho > ``iso`` are drawn with replacement, with probability proportional to rho; with
    ``jitter`` each point is moved uniformly within +-spacing/2 of its grid point. ``ed`` (nx, ny, nz) e/bohr^3.
    """
    rho = ed.reshape(-1).double()
    idx = torch.nonzero(rho > iso).squeeze(1)
    if idx.numel() == 0:
        raise InvalidRecord(record, f"no grid point has rho > {iso} e/bohr^3 (max {float(rho.max()):.3g})")
    pick = idx[torch.multinomial(rho[idx], n_points, replacement=True, generator=generator)]
    nx, ny, nz = grid.shape
    ijk = torch.stack([pick // (ny * nz), (pick // nz) % ny, pick % nz], dim=1).double()
    spacing = torch.tensor(grid.spacing, dtype=torch.float64)
    xyz = torch.tensor(grid.origin, dtype=torch.float64) + ijk * spacing - centre_bohr
    if jitter:
        xyz = xyz + (torch.rand(n_points, 3, generator=generator, dtype=torch.float64) - 0.5) * spacing
    return torch.cat([xyz, rho[pick].log()[:, None]], dim=1).float()


def voxelise(ed: torch.Tensor, grid: CubeGrid, centre_bohr: torch.Tensor, size: int, box_bohr: float) -> torch.Tensor:
    """The ED resampled (trilinear, zero outside the grid) at the centres of a ``size``^3 cube of side
    ``box_bohr`` centred on ``centre_bohr``: (size, size, size) float32 e/bohr^3, indexed [x, y, z] like the grid."""
    h = box_bohr / size
    offsets = (torch.arange(size, dtype=torch.float64) + 0.5) * h - box_bohr / 2
    norm = []  # per axis: voxel centres -> grid_sample's [-1, 1] (align_corners: -1 = first, +1 = last point)
    for a in range(3):
        index = (centre_bohr[a] + offsets - grid.origin[a]) / grid.spacing[a]
        norm.append(2 * index / max(grid.shape[a] - 1, 1) - 1)
    gx, gy, gz = torch.meshgrid(*norm, indexing="ij")
    where = torch.stack([gz, gy, gx], dim=-1)[None].float()  # grid_sample wants (W, H, D) = (z, y, x) order
    out = F.grid_sample(ed.float()[None, None], where, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, 0]


@dataclass
class StudyData:
    """All molecules of the study in memory. M molecules; ``counts`` (M, n_elements) atoms per element."""
    ids: list[str]
    elements: list[int]
    counts: np.ndarray
    targets: np.ndarray        # (M, 6) Hartree, E1..E6
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    # pointnet: (M, n_points, 4); voxel: (M, 1, S, S, S) e/bohr^3; image: (M, 6, 4, H, W) in [0, 1]

    def __len__(self) -> int:
        return len(self.ids)


def build_study_data(samples: Iterable[dict], cfg: RepresentationConfig, total: int | None = None) -> StudyData:
    """Decoded shard samples -> ``StudyData`` with the inputs of every representation in ``cfg.reps``.

    Point clouds are drawn with a generator seeded by ``cfg.seed`` and the molecule's position in the input.
    """
    ids, zs, ys, pts, vox, imgs = [], [], [], [], [], []
    need_fields = any(r in cfg.reps for r in ("pointnet", "voxel"))
    for i, s in enumerate(progress(samples, "study data", total=total)):
        rec = str(s.get("meta", {}).get("id", s.get("__key__")))
        missing = [t for t in TARGETS if t not in s["labels"]]
        if missing:
            raise InvalidRecord(rec, f"no DFT energy label(s) {missing}; render from `edg dft` output (--fields)")
        if need_fields and ("ed" not in s or "grid" not in s):
            raise InvalidRecord(rec, "no ED grid in the sample; render with --keep-fields")
        if "image" in cfg.reps and "edimg" not in s:
            raise InvalidRecord(rec, "no ED images (edimg) in the sample")
        ids.append(rec)
        zs.append(np.asarray(s["z"]))
        ys.append([float(s["labels"][t]) for t in TARGETS])
        centre = atoms_centre_bohr(np.asarray(s["pos"]))
        if "pointnet" in cfg.reps:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)
            pts.append(sample_points(torch.as_tensor(s["ed"]), s["grid"], centre, cfg.n_points, cfg.point_iso,
                                     g, cfg.point_jitter, rec))
        if "voxel" in cfg.reps:
            vox.append(voxelise(torch.as_tensor(s["ed"]), s["grid"], centre, cfg.voxel_size, cfg.voxel_box_bohr))
        if "image" in cfg.reps:
            imgs.append(torch.as_tensor(s["edimg"]).float())
    if not ids:
        raise EDGError("the representation study got no molecules")
    elements = sorted({int(z) for zz in zs for z in zz})
    counts = np.stack([np.bincount(zz, minlength=max(elements) + 1)[elements] for zz in zs]).astype(np.float64)
    data = StudyData(ids, elements, counts, np.asarray(ys, dtype=np.float64))
    if pts:
        data.inputs["pointnet"] = torch.stack(pts)
    if vox:
        data.inputs["voxel"] = torch.stack(vox)[:, None]
    if imgs:
        shapes = {tuple(x.shape) for x in imgs}
        if len(shapes) != 1:
            raise EDGError(f"ED images of different shapes in one study: {sorted(shapes)}")
        data.inputs["image"] = torch.stack(imgs)
    return data


MIN_TEST = 10  # fewer validation or test molecules than this: a warning (their MAEs are anecdotes)


def split_indices(n: int, fractions: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    """A seeded random split of ``n`` molecules into train/valid/test (at least one train and one validation);
    warns when the validation or test set has fewer than ``MIN_TEST`` molecules."""
    if n < 3:
        raise EDGError(f"the representation study needs at least 3 molecules, got {n}")
    f = np.asarray(fractions, dtype=np.float64) / sum(fractions)
    n_valid = max(1, int(round(f[1] * n)))
    n_test = int(round(f[2] * n)) if f[2] > 0 else 0
    n_test = max(n_test, 1) if f[2] > 0 else 0
    n_train = n - n_valid - n_test
    if n_train < 1:
        raise EDGError(f"split {fractions} of {n} molecules leaves no training molecule")
    if n_test < MIN_TEST or n_valid < MIN_TEST:
        import logging
        logging.getLogger(__name__).warning(
            "tiny split of %d molecules: %d train / %d validation / %d test; test MAEs from fewer than %d "
            "molecules cannot rank representations (render more molecules)", n, n_train, n_valid, n_test, MIN_TEST)
    perm = np.random.default_rng(seed).permutation(n)
    return {"train": np.sort(perm[:n_train]), "valid": np.sort(perm[n_train:n_train + n_valid]),
            "test": np.sort(perm[n_train + n_valid:])}


@dataclass
class TargetScaler:
    """E (M, 6) Hartree <-> standardised residual: (E - counts @ refs - mean) / std."""
    refs: np.ndarray   # (n_elements, 6) Hartree per atom
    mean: np.ndarray   # (6,)
    std: np.ndarray    # (6,)

    @classmethod
    def fit(cls, counts: np.ndarray, targets: np.ndarray, use_refs: bool = True) -> TargetScaler:
        if use_refs:
            refs = np.linalg.lstsq(counts, targets, rcond=None)[0]
        else:
            refs = np.zeros((counts.shape[1], targets.shape[1]))
        resid = targets - counts @ refs
        std = resid.std(axis=0)
        return cls(refs, resid.mean(axis=0), np.where(std > 1e-12, std, 1.0))

    def transform(self, counts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return (targets - counts @ self.refs - self.mean) / self.std

    def inverse(self, counts: np.ndarray, z: np.ndarray) -> np.ndarray:
        return z * self.std + self.mean + counts @ self.refs


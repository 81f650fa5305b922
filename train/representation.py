"""The ED representation study (paper Table 4): which form of the electron density predicts DFT energies best.

Three representations of the same molecules' ED, each with its own model, regress the six DFT energy labels
E1..E6 (SCF final energy, nuclear repulsion, one-electron, two-electron, exchange-correlation, total; Hartree):

- ``pointnet``: an ED point cloud, ``n_points`` grid points with rho > ``point_iso`` drawn with probability
  proportional to rho (coordinates in bohr relative to the atoms' centroid, feature log rho), and a PointNet;
- ``voxel``: the ED grid resampled trilinearly to a ``voxel_size``^3 cube of side ``voxel_box_bohr`` centred on
  the atoms' centroid, and a small 3-D ResNet;
- ``image``: the 6 rendered RGB-D ED images (shard member ``edimg``), a randomly initialised timm ResNet18 with
  4 input channels, features averaged over the views (as the teacher pools its views).

Input is decoded shard samples (``edg_core.shards.read_samples``) that carry ``ed`` + ``grid`` (rendered with
``--keep-fields``), ``edimg`` and labels E1..E6. Targets: per-element atom references are fitted by least
squares on the training molecules and subtracted (``atom_refs``), the residuals standardised with the training
mean/std; L1 loss; the epoch with the lowest mean standardised validation MAE is kept and its test MAE reported
in Hartree and kcal/mol. The composition-only model (atom references + training mean) is reported as a
reference row, so a representation that learns nothing beyond the atom counts is visible as such.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edg.edg_core.errors import EDGError, InvalidRecord
from edg.edg_core.grid import CubeGrid
from edg.edg_core.io import progress
from edg.edg_core.units import ANGSTROM_IN_BOHR, HARTREE_IN_KCAL_PER_MOL

from .loops.epoch_loop import LoopConfig, ModelSteps, checkpoints_of, find_checkpoint, run_epochs
from .loops.run_state import RunState
from .configs import IMAGENET_MEAN, IMAGENET_STD, REPRESENTATIONS, TARGETS, RepresentationConfig  # noqa: F401 (re-exported)

REP_TITLES = {"pointnet": "ED point cloud (PointNet)", "voxel": "ED voxels (3-D ResNet)",
              "image": "ED images (ResNet18, 6 views)", "atomref": "atom references only (composition)"}


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


# ---------------------------------------------------------------- the data set
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


# ---------------------------------------------------------------- models
class PointNet(nn.Module):
    """PointNet: points (B, N, 4) = (x, y, z bohr, log rho) -> (B, 6); shared MLP then max over points.

    Inputs are scaled by fixed constants (coordinates / 5 bohr, log rho / 5) so no data statistics are needed.
    """

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256), out_dim: int = len(TARGETS)):
        super().__init__()
        layers, c = [], 4
        for w in widths:
            layers += [nn.Linear(c, w), nn.LayerNorm(w), nn.ReLU()]
            c = w
        self.point_mlp = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c, 128), nn.ReLU(), nn.Linear(128, out_dim))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        x = points / 5.0
        return self.head(self.point_mlp(x).amax(dim=1))


class _Block3d(nn.Module):
    """3-D basic residual block (two 3^3 convolutions, GroupNorm), optional stride-2 downsampling."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(min(8, cout), cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv3d(cin, cout, 1, stride, bias=False), nn.GroupNorm(min(8, cout), cout))

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.skip(x))


class VoxelResNet(nn.Module):
    """A small 3-D ResNet: ED voxels (B, 1, S, S, S) e/bohr^3 -> (B, 6).

    The density is compressed with log(1 + rho / 0.01) (rho spans ~1e-4 near the box edge to >100 at nuclei);
    three stages of width w, 2w, 4w (the last two stride 2), global average pooling, linear head.
    """

    def __init__(self, width: int = 16, out_dim: int = len(TARGETS)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(1, width, 3, 1, 1, bias=False), nn.GroupNorm(min(8, width), width),
                                  nn.ReLU())
        self.stages = nn.Sequential(_Block3d(width, width), _Block3d(width, 2 * width, 2),
                                    _Block3d(2 * width, 4 * width, 2))
        self.head = nn.Linear(4 * width, out_dim)

    def forward(self, vox: torch.Tensor) -> torch.Tensor:
        x = torch.log1p(vox.clamp(min=0) / 0.01)
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3, 4)))


class ImageRegressor(nn.Module):
    """ED images (B, V, 4, H, W) in [0, 1] -> (B, 6): a timm backbone (random init, 4 input channels) per view,
    features averaged over the views, linear head. RGB normalised with ImageNet mean/std, depth as (d - 0.5)/0.5."""

    def __init__(self, arch: str = "resnet18", out_dim: int = len(TARGETS)):
        super().__init__()
        import timm
        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=4)
        self.head = nn.Linear(self.backbone.num_features, out_dim)
        self.register_buffer("mean", torch.tensor([*IMAGENET_MEAN, 0.5]).view(1, 4, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([*IMAGENET_STD, 0.5]).view(1, 4, 1, 1), persistent=False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        b, v = img.shape[:2]
        if img.shape[2] != 4:
            raise ValueError(f"ED images must be (B, V, 4, H, W), got {tuple(img.shape)}")
        x = (img.flatten(0, 1) - self.mean) / self.std
        return self.head(self.backbone(x).reshape(b, v, -1).mean(dim=1))


def build_model(rep: str, cfg: RepresentationConfig) -> nn.Module:
    if rep == "pointnet":
        return PointNet()
    if rep == "voxel":
        return VoxelResNet(cfg.voxel_width)
    if rep == "image":
        return ImageRegressor(cfg.image_arch)
    raise EDGError(f"unknown representation {rep!r}; choose from {REPRESENTATIONS}")


# ---------------------------------------------------------------- training and evaluation
def _mae(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Mean absolute error per label E1..E6 over the molecules (rows) of ``pred`` and ``true`` (M, 6)."""
    if len(true) == 0:
        return {t: float("nan") for t in TARGETS}
    return {t: float(v) for t, v in zip(TARGETS, np.abs(pred - true).mean(axis=0))}


def _rmse(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Root-mean-square error per label E1..E6 (the paper's Table 4 metric)."""
    if len(true) == 0:
        return {t: float("nan") for t in TARGETS}
    return {t: float(v) for t, v in zip(TARGETS, np.sqrt(((pred - true) ** 2).mean(axis=0)))}


def _errors(result: dict, part: str, pred: np.ndarray, true: np.ndarray) -> None:
    """Record ``<part>_mae_hartree`` and ``<part>_rmse_hartree`` (and, for test, both in kcal/mol) in ``result``."""
    result[f"{part}_mae_hartree"] = _mae(pred, true)
    result[f"{part}_rmse_hartree"] = _rmse(pred, true)
    if part == "test":
        for metric in ("mae", "rmse"):
            result[f"test_{metric}_kcal_per_mol"] = {t: v * HARTREE_IN_KCAL_PER_MOL
                                                     for t, v in result[f"test_{metric}_hartree"].items()}


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, idx: np.ndarray, batch_size: int, device) -> np.ndarray:
    """Standardised predictions (len(idx), 6)."""
    model.eval()
    out = [model(x[idx[i:i + batch_size]].to(device)).double().cpu() for i in range(0, len(idx), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(TARGETS)))


def train_representation(rep: str, data: StudyData, split: dict[str, np.ndarray], cfg: RepresentationConfig,
                         show_progress: bool | None = None, run_dir=None, stop_after: int | None = None) -> dict:
    """Train one representation's model through the epoch loop; returns errors (Hartree and kcal/mol) at the
    best validation epoch.

    History: ``valid_std_mae`` is the mean over E1..E6 of the standardised validation MAE per epoch (entry 0:
    the untrained model, which is the best "epoch 0"); ``train_loss`` the mean training L1 loss of each epoch.
    With ``run_dir`` the loop keeps the run-folder files (``train.progress``) and plain-data checkpoints every
    ``cfg.checkpoint_every`` epochs (0: none) from which a rerun resumes; they are removed when it is done.
    ``stop_after``: end after that many epochs of the schedule, keeping the checkpoints (an interruption).
    """
    if rep not in data.inputs:
        raise EDGError(f"representation {rep!r} was not built into the study data (have {sorted(data.inputs)})")
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    scaler = TargetScaler.fit(data.counts[split["train"]], data.targets[split["train"]], cfg.atom_refs)
    y = torch.as_tensor(scaler.transform(data.counts, data.targets), dtype=torch.float32)
    x = data.inputs[rep]
    model = build_model(rep, cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(split["train"]) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.epochs * steps_per_epoch))
    state = RunState(model, opt, sched, torch.Generator().manual_seed(cfg.seed))
    loop = LoopConfig(rep, cfg.epochs, steps_per_epoch, cfg.batch_size, device,
                      Path(run_dir) if run_dir is not None else None, checkpoints=bool(cfg.checkpoint_every),
                      checkpoint_every=cfg.checkpoint_every, keep_last=cfg.keep_last, stop_after=stop_after,
                      units={"loss": "(L1 of standardised E1-E6)", "std_mae": "(standardised MAE, mean of E1-E6)"},
                      show=("train_loss", "valid_std_mae"), quiet=run_dir is None, progress_bar=show_progress)

    def std_mae(idx):
        return float(np.abs(_predict(model, x, idx, cfg.batch_size, device) - y[idx].numpy()).mean())

    ck = find_checkpoint(loop)
    if ck is not None:
        state.restore(ck)
    else:  # the untrained model is the best so far
        untrained = std_mae(split["valid"])
        state.extra["untrained_valid_std_mae"] = untrained
        state.keep_best(untrained, 0, keep_weights=True)

    def batches(k):
        order = split["train"][torch.randperm(len(split["train"]), generator=state.generator).numpy()]
        return (order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size))

    def step(b):
        loss = F.l1_loss(model(x[b].to(device)), y[b].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": loss.detach()}, len(b)

    steps = ModelSteps(batches, step, evaluate=lambda k: {"valid_std_mae": std_mae(split["valid"])},
                       select_metric="valid_std_mae", keep_best_weights=True)
    run_epochs(state, steps, loop)
    model.load_state_dict(state.best.weights)
    history = {"train_loss": [r["train_loss"] for r in state.history],
               "valid_std_mae": [state.extra["untrained_valid_std_mae"], *(r["valid_std_mae"] for r in state.history)]}
    result = {"rep": rep, "title": REP_TITLES[rep], "best_epoch": state.best.epoch, "epochs": cfg.epochs,
              "seconds": state.seconds, "n_params": sum(p.numel() for p in model.parameters()), "history": history}
    for part in ("valid", "test"):
        idx = split[part]
        pred = scaler.inverse(data.counts[idx], _predict(model, x, idx, cfg.batch_size, device))
        _errors(result, part, pred, data.targets[idx])
    ckpts = checkpoints_of(loop)
    if ckpts is not None and state.epoch == cfg.epochs:
        ckpts.clear()  # the caller records the result; nothing is left to resume
    return result


def atomref_baseline(data: StudyData, split: dict[str, np.ndarray], cfg: RepresentationConfig) -> dict:
    """The composition-only reference row: predict counts @ refs + training mean (no ED at all)."""
    scaler = TargetScaler.fit(data.counts[split["train"]], data.targets[split["train"]], cfg.atom_refs)
    result = {"rep": "atomref", "title": REP_TITLES["atomref"], "best_epoch": 0, "epochs": 0, "seconds": 0.0,
              "n_params": int(scaler.refs.size + scaler.mean.size)}
    for part in ("valid", "test"):
        idx = split[part]
        pred = scaler.inverse(data.counts[idx], np.zeros((len(idx), len(TARGETS))))
        _errors(result, part, pred, data.targets[idx])
    return result


def table_rows(results: list[dict], unit: str = "hartree") -> list[list[str]]:
    """Table 4's layout: one row per representation, columns E1..E6 "test RMSE (MAE)" (``hartree`` or ``kcal``);
    the paper reports the RMSE, the MAE stands beside it."""
    suffix = "hartree" if unit == "hartree" else "kcal_per_mol"
    fmt = "{:.4f}" if unit == "hartree" else "{:.2f}"
    return [[r["title"], *(f"{fmt.format(r[f'test_rmse_{suffix}'][t])} ({fmt.format(r[f'test_mae_{suffix}'][t])})"
                           for t in TARGETS)] for r in results]


def markdown_table(results: list[dict], unit: str = "hartree") -> str:
    head = f"| representation | {' | '.join(f'{t} RMSE (MAE)' for t in TARGETS)} |"
    sep = "|---" * (len(TARGETS) + 1) + "|"
    return "\n".join([head, sep, *("| " + " | ".join(row) + " |" for row in table_rows(results, unit))])

"""The ED representation study (paper Table 4): which form of the electron density predicts DFT energies best.

Three representations of the same molecules' ED, each with its own model, regress the six DFT energy labels
E1..E6 (SCF final energy, nuclear repulsion, one-electron, two-electron, exchange-correlation, total; Hartree):

- ``pointnet``: an ED point cloud, ``n_points`` grid points with rho > ``point_iso`` drawn with probability
  proportional to rho (coordinates in bohr relative to the atoms' centroid, feature log rho), and a PointNet;
- ``voxel``: the ED grid resampled trilinearly to a ``voxel_size``^3 cube of side ``voxel_box_bohr`` centred on
  the atoms' centroid, and a small 3-D ResNet;
- ``image``: the 6 rendered RGB-D ED images (shard member ``edimg``), a randomly initialised timm ResNet18 with
  4 input channels, features averaged over the views (as the teacher pools its views).

Input is decoded shard samples (``edg_core.shards.read_samples``; ``train.data.study``) that carry ``ed`` +
``grid`` (rendered with ``--keep-fields``), ``edimg`` and labels E1..E6. Targets: per-element atom references are
fitted by least squares on the training molecules and subtracted (``atom_refs``), the residuals standardised with
the training mean/std; L1 loss; the epoch with the lowest mean standardised validation MAE is kept and its test
MAE reported in Hartree and kcal/mol. The composition-only model (atom references + training mean) is reported as
a reference row, so a representation that learns nothing beyond the atom counts is visible as such.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from edg.edg_core.errors import EDGError
from edg.edg_core.units import HARTREE_IN_KCAL_PER_MOL
from edg.train.configs import REPRESENTATIONS, TARGETS, RepresentationConfig  # noqa: F401 (re-exported)
from edg.train.data.study import StudyData, TargetScaler
from edg.train.devices import resolve_device
from edg.train.loops.epoch_loop import LoopConfig, ModelSteps, checkpoints_of, find_checkpoint, run_epochs
from edg.train.loops.optim import adamw_for
from edg.train.loops.run_state import RunState
from edg.train.loops.speed import apply_speed_choices, speed_choices
from edg.train.models.representation import build_model

REP_TITLES = {"pointnet": "ED point cloud (PointNet)", "voxel": "ED voxels (3-D ResNet)",
              "image": "ED images (ResNet18, 6 views)", "atomref": "atom references only (composition)"}


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
    With ``run_dir`` the loop keeps the run-folder files (``train.io.progress``) and plain-data checkpoints every
    ``cfg.checkpoint_every`` epochs (0: none) from which a rerun resumes; they are removed when it is done.
    ``stop_after``: end after that many epochs of the schedule, keeping the checkpoints (an interruption).
    """
    if rep not in data.inputs:
        raise EDGError(f"representation {rep!r} was not built into the study data (have {sorted(data.inputs)})")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    scaler = TargetScaler.fit(data.counts[split["train"]], data.targets[split["train"]], cfg.atom_refs)
    y = torch.as_tensor(scaler.transform(data.counts, data.targets), dtype=torch.float32)
    x = data.inputs[rep]
    apply_speed_choices(speed_choices(device, tf32=cfg.tf32, compile=cfg.compile), f"representation {rep}")
    model = build_model(rep, cfg).to(device)
    fwd = torch.compile(model) if cfg.compile else model  # training forward only; weights shared
    opt = adamw_for(model.parameters(), cfg.lr, device, cfg.weight_decay)  # fused on CUDA
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
        loss = F.l1_loss(fwd(x[b].to(device)), y[b].to(device))
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

"""Pretraining loops for ImageED and the ED-aware teacher (no Ray here; ``cluster/train_ray.py`` wraps them).

``train_imageed(cfg, shards, out_dir)`` and ``train_teacher(cfg, shards, out_dir)`` run the whole schedule
in this process, or as one rank of a ``torch.distributed`` group (DDP; the shards are split by rank and by
DataLoader worker). After each epoch, rank 0 writes ``<out_dir>/checkpoint/checkpoint.pt`` atomically
(model, optimizer, scheduler, epoch, config, metric history) and appends the epoch's metrics to
``<out_dir>/metrics.jsonl``; then every rank calls ``report(metrics, checkpoint_dir)`` (the directory on
rank 0, ``None`` elsewhere). A rerun resumes after the last finished epoch and takes the same steps it would
have taken without the interruption: data order, masks and augmentations are seeded by (seed, epoch, rank).

Every rank takes the same number of steps per epoch (``ceil(train samples / global batch)``; a rank whose
shards run out starts another pass), so DDP never waits on a rank that has finished.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from edg_core.config import dump_yaml
from edg_core.errors import EDGError, ShardError
from edg_core.io import append_jsonl, atomic_path, progress
from edg_core.shards import shard_paths

from .configs import ImageEDTrainConfig, TeacherTrainConfig  # noqa: F401 (re-exported)
from .data import ShardImages, count_samples, image_loader
from .imageed import ImageED, imageed_state, save_reconstruction_png
from .optim import adamw, scaled_lr, sgd, warmup_cosine
from .teacher import Teacher, augment_structure_images, teacher_loss, teacher_state

Report = Callable[[dict, "Path | None"], None]


# ---------------------------------------------------------------- the two stages
@dataclass
class _Stage:
    name: str
    model: nn.Module
    make_optimizer: Callable[[nn.Module, int], torch.optim.Optimizer]  # (model, global batch) -> optimizer
    loss: Callable[[nn.Module, dict, torch.Generator, bool], tuple[torch.Tensor, dict]]  # (model, batch, g, train)
    dataset: Callable[[str, int], ShardImages]                           # (split, seed) -> one pass
    export: Callable[[nn.Module], dict]                                  # model -> its standalone file content
    export_name: str
    after_epoch: Callable[[nn.Module, int, Path, dict], None] | None = None


def _imageed_stage(cfg: ImageEDTrainConfig, shards) -> _Stage:
    mc = cfg.model

    def make_optimizer(model, global_batch):
        return adamw(model, cfg.lr or scaled_lr(cfg.blr, global_batch), cfg.weight_decay, cfg.betas)

    def loss(model, batch, g, train):
        out = model(batch["edimg"], generator=g)
        return out["loss"], {"loss": out["loss"].detach(), "l_mp": out["l_mp"].detach(), "l_rp": out["l_rp"].detach()}

    def dataset(split, seed):
        return ShardImages(shards, "imageed", img_size=mc.img_size, n_views=mc.n_views, split=split,
                           val_fraction=cfg.val_fraction, shuffle=cfg.shuffle_buffer if split == "train" else 0,
                           seed=seed)

    def after_epoch(model, epoch, out_dir, batch):
        if cfg.figure_every and (epoch + 1) % cfg.figure_every == 0:
            save_reconstruction_png(model, batch["edimg"], out_dir / "figures" / f"reconstruction-{epoch:04d}.png",
                                    seed=cfg.seed)
    return _Stage("imageed", ImageED(mc), make_optimizer, loss, dataset, imageed_state, "imageed.pt", after_epoch)


def _teacher_stage(cfg: TeacherTrainConfig, shards) -> _Stage:
    mc = cfg.model

    def loss(model, batch, g, train):
        stimg = augment_structure_images(batch["stimg"], mc, g) if train else batch["stimg"]
        _, edp = model(stimg)
        value = teacher_loss(edp, batch["fu"], batch["has_fu"])
        return value, {"loss": value.detach(), "with_fu": batch["has_fu"].float().mean()}

    def dataset(split, seed):
        return ShardImages(shards, "teacher", img_size=mc.img_size, n_views=mc.n_views, split=split,
                           val_fraction=cfg.val_fraction, shuffle=cfg.shuffle_buffer if split == "train" else 0,
                           seed=seed, fu_dim=mc.fu_dim)
    return _Stage("teacher", Teacher(mc),
                  lambda model, gb: sgd(model, cfg.lr, cfg.momentum, cfg.weight_decay),
                  loss, dataset, teacher_state, "teacher.pt")


def train_imageed(cfg: ImageEDTrainConfig, shards, out_dir, report: Report | None = None,
                  device: torch.device | str | None = None, resume_from: str | Path | None = None) -> dict:
    """Pretrain ImageED on the ``edimg`` of ``shards``; returns the last epoch's metrics. Writes
    ``out_dir/imageed.pt`` (config + weights) when the schedule is done."""
    torch.manual_seed(cfg.seed)  # the initial weights
    return train_stage(_imageed_stage(cfg, shards), cfg, shards, out_dir, report, device, resume_from)


def train_teacher(cfg: TeacherTrainConfig, shards, out_dir, report: Report | None = None,
                  device: torch.device | str | None = None, resume_from: str | Path | None = None) -> dict:
    """Pretrain the teacher on ``stimg`` -> ``fu`` of ``shards`` (molecules without ``fu`` are masked out of
    the loss); writes ``out_dir/teacher.pt`` (loadable with ``load_teacher`` / ``load_ed_predictor``)."""
    torch.manual_seed(cfg.seed)
    return train_stage(_teacher_stage(cfg, shards), cfg, shards, out_dir, report, device, resume_from)


# ---------------------------------------------------------------- the loop
def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _batches(stage: _Stage, seed: int, batch_size: int, num_workers: int, rank: int):
    """Endless batches of the train split: pass after pass, each reshuffled with its own seed."""
    for cycle in range(1 << 30):
        n = 0
        for batch in image_loader(stage.dataset("train", seed + 104_729 * cycle), batch_size, num_workers):
            n += 1
            yield batch
        if n == 0:
            raise ShardError(f"rank {rank} got no training samples from its shards; give at least "
                             f"world_size x num_workers shards, each with training samples")


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _mean_across_ranks(sums: dict, count: float, device, world: int) -> dict[str, float]:
    keys = sorted(sums)
    t = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=device).reshape(()) for k in keys]
                    + [torch.tensor(float(count), dtype=torch.float64, device=device)])
    if world > 1:
        dist.all_reduce(t)
    return {k: (t[i] / t[-1]).item() if t[-1] > 0 else float("nan") for i, k in enumerate(keys)}


def train_stage(stage: _Stage, cfg, shards, out_dir, report: Report | None = None, device=None, resume_from=None) -> dict:
    rank, world = _rank_world()
    device = torch.device(device) if device is not None else default_device()
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoint"
    ckpt_path = ckpt_dir / "checkpoint.pt"
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, out_dir / "config.yaml")

    model = stage.model.to(device)
    optimizer = stage.make_optimizer(model, cfg.batch_size * world)
    start_epoch, history, steps = 0, [], None
    src = Path(resume_from) if resume_from else (ckpt_path if ckpt_path.exists() else None)
    if src is not None:
        ck = torch.load(src, map_location=device, weights_only=False)
        if ck.get("stage") != stage.name:
            raise EDGError(f"{src}: checkpoint of stage {ck.get('stage')!r}, not {stage.name!r}")
        model.load_state_dict(ck["model"])
        start_epoch, history, steps = ck["epoch"] + 1, ck["history"], ck["steps_per_epoch"]
    if steps is None:
        shard_paths(shards)  # a missing folder or pattern raises here, naming it
        n_train = cfg.samples_per_epoch or count_samples(shards, "train", cfg.val_fraction)
        if n_train == 0:
            raise ShardError(f"{shards}: no training samples")
        steps = math.ceil(n_train / (cfg.batch_size * world))
    warmup = cfg.warmup_epochs * steps
    cosine = getattr(cfg, "cosine", True)
    scheduler = warmup_cosine(optimizer, warmup, cfg.epochs * steps if cosine else 1 << 62)
    if src is not None:  # after the scheduler is built, which would otherwise reset the lr of the restored state
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])

    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    fwd = torch.compile(net) if cfg.compile else net
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 and device.type == "cuda" \
        else contextlib.nullcontext()
    metrics: dict = history[-1] if history else {}

    for epoch in range(start_epoch, cfg.epochs):
        seed = cfg.seed * 1_000_003 + epoch * 7_919
        g = torch.Generator(device=device).manual_seed(seed + rank)
        batches = _batches(stage, seed + rank, cfg.batch_size, cfg.num_workers, rank)
        model.train()
        sums: dict[str, torch.Tensor] = {}
        t0, n_samples = time.perf_counter(), 0
        for _ in progress(range(steps), f"{stage.name} epoch {epoch + 1}/{cfg.epochs}"):
            batch = _to(next(batches), device)
            with autocast:
                loss, parts = stage.loss(fwd, batch, g, True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            b = len(batch["key"])
            n_samples += b
            for k, v in parts.items():  # kept on the device: no host sync per step
                sums[k] = sums.get(k, 0.0) + v.detach().double() * b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        train = _mean_across_ranks(sums, n_samples, device, world)
        metrics = {"epoch": epoch, "step": (epoch + 1) * steps, "lr": optimizer.param_groups[0]["lr"],
                   "samples_per_s": n_samples * world / max(dt, 1e-9), **{f"train_{k}": v for k, v in train.items()}}
        if cfg.val_fraction > 0:
            metrics.update(_validate(stage, model, cfg, device, world, autocast))
        history.append(metrics)
        if rank == 0:
            state = {"stage": stage.name, "epoch": epoch, "steps_per_epoch": steps, "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "config": asdict(cfg), "history": history, **stage.export(model)}
            with atomic_path(ckpt_path) as tmp:
                torch.save(state, tmp)
            append_jsonl(out_dir / "metrics.jsonl", metrics)
            if stage.after_epoch is not None:
                stage.after_epoch(model, epoch, out_dir, batch)
            if epoch == cfg.epochs - 1:
                with atomic_path(out_dir / stage.export_name) as tmp:
                    torch.save(stage.export(model), tmp)
        if world > 1:
            dist.barrier()
        if report is not None:
            report(metrics, ckpt_dir if rank == 0 else None)
    return metrics


@torch.no_grad()
def _validate(stage: _Stage, model: nn.Module, cfg, device, world: int, autocast) -> dict:
    """Mean validation metrics over every rank's share of the held-out keys (fixed masks: seed ``cfg.seed``)."""
    model.eval()
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    sums, n = {"loss": 0.0}, 0  # every rank joins the all-reduce, even one without validation samples
    for batch in image_loader(stage.dataset("valid", cfg.seed), cfg.batch_size, cfg.num_workers):
        batch = _to(batch, device)
        with autocast:
            _, parts = stage.loss(model, batch, g, False)
        n += len(batch["key"])
        sums["loss"] += float(parts["loss"]) * len(batch["key"])
    model.train()
    means = _mean_across_ranks(sums, n, device, world)
    return {} if math.isnan(means["loss"]) else {f"valid_{k}": v for k, v in means.items()}  # {}: no held-out keys

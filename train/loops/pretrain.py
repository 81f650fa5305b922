"""Pretraining loops for ImageED and the ED-aware teacher (no Ray here; ``cluster/train_ray.py`` wraps them).

``train_imageed(cfg, shards, out_dir)`` and ``train_teacher(cfg, shards, out_dir)`` run the whole schedule
in this process, or as one rank of a ``torch.distributed`` group (DDP; the shards are split by rank and by
DataLoader worker). Before any work the model's image size, view count and F_U width are checked against
the first sample of the shards (``check_shapes``; ``fit_to_shards`` adapts a config to them).

Both run through the one epoch loop (``train.loops.epoch_loop``; epochs count from 1): this module only says
what a step, a validation and an export are (``_stage_steps``). Run folder: ``config.yaml``;
``metrics.jsonl``, ``metrics.csv`` and ``progress.json`` rewritten after every epoch, with a line per epoch on
stderr; ``checkpoint/epoch-NNNNNN.pt`` (``train.loops.run_state``, plus the export's keys) every
``checkpoint_every`` epochs and after the last, the newest ``keep_last`` kept, and ``checkpoint/best.pt`` (the
exported model at the lowest validation loss, when there is a validation split); ``imageed.pt`` /
``teacher.pt`` when the schedule is done. After each epoch every rank calls ``report(row, checkpoint_file)``
(the file written this epoch on rank 0, else ``None``). A rerun resumes after the last checkpointed epoch and
takes the same steps it would have taken without the interruption: data order, masks and augmentations are
seeded by (seed, epoch, rank).

Speed (``train.loops.speed``, one log line): one training DataLoader for the whole run, its workers kept
across epochs and passes (each pass reseeded as before, so the batches are the ones a new loader per epoch
gave); uint8 batches in pinned memory, converted on the device (``train.data.shards.to_device``); on CUDA
TF32 (``tf32``, default on), fused AdamW / SGD and, for the teacher, channels_last; ``compile`` opt-in.

Every rank takes the same number of steps per epoch (``ceil(train samples / global batch)``; a rank whose
shards run out starts another pass), so DDP never waits on a rank that has finished.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from edg.edg_core.config import dump_yaml
from edg.edg_core.errors import EDGError, ShardError
from edg.edg_core.shards import shard_paths, webdataset_pipeline
from edg.train.configs import ImageEDTrainConfig, TeacherTrainConfig  # noqa: F401 (re-exported)
from edg.train.data.shards import ShardImages, count_samples, image_loader, to_device
from edg.train.devices import resolve_device
from edg.train.io.backbone_weights import init_backbone
from edg.train.io.checkpoint import save_checkpoint
from edg.train.io.figures import save_reconstruction_png
from edg.train.io.model_files import imageed_state, teacher_state
from edg.train.loops.epoch_loop import LoopConfig, ModelSteps, Report, find_checkpoint, run_epochs
from edg.train.loops.optim import adamw, scaled_lr, sgd, warmup_cosine
from edg.train.loops.run_state import RunState
from edg.train.loops.speed import apply_speed_choices, place_model, speed_choices
from edg.train.models.imageed import ImageED
from edg.train.models.teacher import Teacher, augment_structure_images, teacher_loss

UNITS = {"imageed": {"loss": "(normalised-pixel MSE)", "l_mp": "(normalised-pixel MSE)",
                     "l_rp": "(normalised-pixel MSE)"},
         "teacher": {"loss": "(L1 to F_U, feature units)", "with_fu": "(fraction)"}}


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
    after_epoch: Callable[[nn.Module, int, Path, dict], dict | None] | None = None  # may return images
    init: Callable[[nn.Module], object] | None = None  # starting weights of a run that resumes nothing
    channels_last: bool = False  # a convolutional model: channels_last weights and inputs on CUDA


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
                           seed=seed, max_bad_samples=cfg.max_bad_samples)

    def after_epoch(model, epoch, out_dir, batch):  # epoch: 1-based
        if cfg.figure_every and epoch % cfg.figure_every == 0:
            grid = save_reconstruction_png(model, batch["edimg"],
                                           out_dir / "figures" / f"reconstruction-{epoch:04d}.png", seed=cfg.seed)
            return {"reconstruction": grid}
        return None
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
                           seed=seed, fu_dim=mc.fu_dim, max_bad_samples=cfg.max_bad_samples)
    return _Stage("teacher", Teacher(mc), lambda model, gb: sgd(model, cfg.lr, cfg.momentum, cfg.weight_decay),
                  loss, dataset, teacher_state, "teacher.pt", init=init_backbone, channels_last=True)


def train_imageed(cfg: ImageEDTrainConfig, shards, out_dir, report: Report | None = None,
                  device: torch.device | str | None = None, resume_from: str | Path | None = None) -> dict:
    """Pretrain ImageED on the ``edimg`` of ``shards``; returns the last epoch's metrics. Writes
    ``out_dir/imageed.pt`` (config + weights) when the schedule is done."""
    bind_device(resolve_device(device))  # before anything else
    _check_input("imageed", cfg, shards)
    torch.manual_seed(cfg.seed)  # the initial weights
    return train_stage(_imageed_stage(cfg, shards), cfg, shards, out_dir, report, device, resume_from)


def train_teacher(cfg: TeacherTrainConfig, shards, out_dir, report: Report | None = None,
                  device: torch.device | str | None = None, resume_from: str | Path | None = None) -> dict:
    """Pretrain the teacher on ``stimg`` -> ``fu`` of ``shards`` (molecules without ``fu`` are masked out of
    the loss); writes ``out_dir/teacher.pt`` (loadable with ``load_teacher`` / ``load_ed_predictor``)."""
    bind_device(resolve_device(device))  # before anything else
    _check_input("teacher", cfg, shards)
    torch.manual_seed(cfg.seed)
    return train_stage(_teacher_stage(cfg, shards), cfg, shards, out_dir, report, device, resume_from)


# ---------------------------------------------------------------- shapes read from the shards
def shard_shapes(shards, member: str, look_for_fu: int = 256) -> dict:
    """Image shape and F_U width of the shards, from their first samples: ``views``, ``channels``,
    ``img_size`` (side in pixels; images must be square), ``where`` (shard:key of the sample read), and
    ``fu_dim`` (``None`` if none of the first ``look_for_fu`` samples with ``member`` has ``fu``)."""
    found, seen = None, 0
    for s in webdataset_pipeline(shards):
        img = s.get(member)
        if img is None:
            continue
        seen += 1
        if found is None:
            v, c, h, w = img.shape
            if h != w:
                raise ShardError(f"{s.get('__url__')}:{s['__key__']}: {member} images are {h} x {w} px; "
                                 f"pretraining needs square images")
            found = {"views": v, "channels": c, "img_size": h, "fu_dim": None,
                     "where": f"{s.get('__url__')}:{s['__key__']}"}
        if s.get("fu") is not None:
            found["fu_dim"] = int(s["fu"].shape[-1])
        if found["fu_dim"] is not None or member != "stimg" or seen >= look_for_fu:
            break
    if found is None:
        raise ShardError(f"{shards}: no sample has {member} images (render them with `edg render`"
                         + (" --structure-images" if member == "stimg" else "") + ")")
    return found


def _shape_problems(stage: str, cfg, got: dict) -> list[str]:
    mc, out = cfg.model, []
    if stage == "imageed" and got["channels"] != mc.in_chans:
        out.append(f"{got['channels']} channels per view, the model takes {mc.in_chans} (--model.in-chans)")
    if got["views"] != mc.n_views:
        out.append(f"{got['views']} views per molecule, the model takes {mc.n_views}: set --model.n-views "
                   f"{got['views']}")
    if got["img_size"] != mc.img_size:
        hint = f" with a --model.patch-size that divides it (now {mc.patch_size})" if stage == "imageed" else ""
        out.append(f"{got['img_size']} px images, the model takes {mc.img_size} px: set --model.img-size "
                   f"{got['img_size']}{hint}")
    if stage == "imageed" and mc.img_size % mc.patch_size:
        out.append(f"--model.img-size {mc.img_size} is not a multiple of --model.patch-size {mc.patch_size}")
    if stage == "teacher" and got["fu_dim"] is not None and got["fu_dim"] != mc.fu_dim:
        out.append(f"F_U of width {got['fu_dim']} (the ImageED that wrote it), the teacher predicts "
                   f"{mc.fu_dim}: set --model.fu-dim {got['fu_dim']}")
    return out


def check_shapes(stage: str, cfg, shards, got: dict | None = None) -> dict:
    """Refuse, before any work, a model config that does not fit the shards' images or F_U; returns the
    shapes read (``shard_shapes``, or ``got`` when given)."""
    got = got or shard_shapes(shards, "edimg" if stage == "imageed" else "stimg")
    problems = _shape_problems(stage, cfg, got)
    if problems:
        raise EDGError(f"{stage}: the model does not fit the shards {shards} (first sample {got['where']}): "
                       + "; ".join(problems))
    return got


def fit_to_shards(stage: str, cfg, shards, explicit: frozenset[str] = frozenset()) -> tuple:
    """``cfg`` with its model's image size, views and F_U width taken from the shards, except the fields
    named in ``explicit`` (``img_size``, ``patch_size``, ``n_views``, ``fu_dim``: the user set them);
    returns (config, list of changes made, in words). An ImageED keeps its patch grid (its cost) when the
    new size allows, else its patch size. Anything that still does not fit raises ``EDGError`` (``check_shapes``)."""
    from dataclasses import replace
    got = shard_shapes(shards, "edimg" if stage == "imageed" else "stimg")
    mc, changes, new = cfg.model, [], {}
    if got["views"] != mc.n_views and "n_views" not in explicit:
        new["n_views"] = got["views"]
    if got["img_size"] != mc.img_size and "img_size" not in explicit:
        h = got["img_size"]
        new["img_size"] = h
        if stage == "imageed" and "patch_size" not in explicit:
            grid = mc.img_size // mc.patch_size
            if h % grid == 0 and h // grid >= 1:
                new["patch_size"] = h // grid
            elif h % mc.patch_size:
                raise EDGError(f"imageed: {h} px images in {shards}: neither the {grid} x {grid} patch grid nor "
                               f"{mc.patch_size} px patches fit; set --model.img-size {h} and --model.patch-size")
    if stage == "teacher" and got["fu_dim"] is not None and got["fu_dim"] != mc.fu_dim and "fu_dim" not in explicit:
        new["fu_dim"] = got["fu_dim"]
    for k, v in new.items():
        changes.append(f"model.{k} {getattr(mc, k)} -> {v}")
    cfg = replace(cfg, model=replace(mc, **new)) if new else cfg
    check_shapes(stage, cfg, shards, got)
    return cfg, changes


def _check_input(stage: str, cfg, shards) -> None:
    """Before the model is built: the shards exist and fit the model config."""
    shard_paths(shards)  # a missing folder or pattern raises here, naming it
    check_shapes(stage, cfg, shards)


# ---------------------------------------------------------------- the loop
def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def bind_device(device: torch.device) -> None:
    """Make ``device`` this process's current CUDA device (no-op for other devices) before any collective:
    NCCL barriers and all-reduces run on the current device, cuda:0 in every rank unless the rank sets it."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


class TrainBatches:
    """The train split's batches from ONE DataLoader kept for the whole run (its workers persist across
    epochs and passes; started once, not once per epoch)."""

    def __init__(self, stage: _Stage, batch_size: int, num_workers: int, rank: int):
        self.dataset = stage.dataset("train", 0)
        self.loader = image_loader(self.dataset, batch_size, num_workers, persistent=True)
        self.rank = rank

    def endless(self, seed: int):
        """Batches pass after pass, pass c shuffled with seed + 104729 c (what a new loader per pass used)."""
        for cycle in range(1 << 30):
            self.dataset.next_pass(seed + 104_729 * cycle)
            n = 0
            for batch in self.loader:  # a new pass of the same loader: its workers restart the dataset
                n += 1
                yield batch
            if n == 0:
                raise ShardError(f"rank {self.rank} got no training samples from its shards; give at least "
                                 f"world_size x num_workers shards, each with training samples")


def _mean_across_ranks(sums: dict, count: float, device, world: int) -> dict[str, float]:
    keys = sorted(sums)
    t = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=device).reshape(()) for k in keys]
                    + [torch.tensor(float(count), dtype=torch.float64, device=device)])
    if world > 1:
        dist.all_reduce(t)
    return {k: (t[i] / t[-1]).item() if t[-1] > 0 else float("nan") for i, k in enumerate(keys)}


def train_stage(stage: _Stage, cfg, shards, out_dir, report: Report | None = None, device=None,
                resume_from=None) -> dict:
    """Run ``stage``'s schedule through the epoch loop (see the module docstring); returns the last epoch's row."""
    rank, world = _rank_world()
    device = resolve_device(device)
    bind_device(device)
    out_dir = Path(out_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, out_dir / "config.yaml")
    loop = LoopConfig(stage.name, cfg.epochs, 0, cfg.batch_size * world, device, out_dir,
                      checkpoint_every=cfg.checkpoint_every, keep_last=cfg.keep_last,
                      resume_from=Path(resume_from) if resume_from else None, same_name_only=True,
                      units=UNITS[stage.name],
                      show=("train_loss", "valid_loss"), config=asdict(cfg), writer=rank == 0, world=world)

    choices = speed_choices(device, tf32=cfg.tf32, compile=cfg.compile, channels_last=stage.channels_last,
                            loader_workers=cfg.num_workers)
    apply_speed_choices(choices, stage.name)
    model = place_model(stage.model, choices)  # on the device; the teacher in channels_last on CUDA
    optimizer = stage.make_optimizer(model, cfg.batch_size * world)  # fused on CUDA (optim.fused_kwargs)
    ck = find_checkpoint(loop)
    if ck is None and stage.init is not None:  # e.g. the teacher's ImageNet backbone: not fetched on resume
        stage.init(model)
    steps = ck["extra"].get("steps_per_epoch") if ck is not None else None
    if steps is None:
        n_train = cfg.samples_per_epoch or count_samples(shards, "train", cfg.val_fraction)
        if n_train == 0:
            raise ShardError(f"{shards}: no training samples")
        steps = math.ceil(n_train / (cfg.batch_size * world))
    loop.steps_per_epoch = steps
    scheduler = warmup_cosine(optimizer, cfg.warmup_epochs * steps,
                              cfg.epochs * steps if getattr(cfg, "cosine", True) else 1 << 62)
    state = RunState(model, optimizer, scheduler, extra={"steps_per_epoch": steps})
    if ck is not None:  # after the scheduler is built, which would otherwise reset the lr of the restored state
        state.restore(ck)
    run_epochs(state, _stage_steps(stage, cfg, state, device, rank, world, out_dir), loop, report)
    return state.history[-1] if state.history else {}


def _stage_steps(stage: _Stage, cfg, state: RunState, device, rank: int, world: int, out_dir: Path) -> ModelSteps:
    """ImageED's or the teacher's contribution to the epoch loop: DDP, torch.compile, bf16 autocast, gradient
    clipping, per-step lr; data order, masks and augmentations seeded by (seed, epoch, rank)."""
    model, optimizer, scheduler = state.model, state.optimizer, state.scheduler
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    fwd = torch.compile(net) if cfg.compile else net
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 and device.type == "cuda" \
        else contextlib.nullcontext()
    epoch_rng: dict = {}  # "g": this epoch's generator (masks, augmentations); "last": its last batch (figures)
    train_batches: list[TrainBatches] = []  # made at the first epoch run (none when a resume has nothing left)

    def batches(k):
        seed = cfg.seed * 1_000_003 + (k - 1) * 7_919  # the seed of the epoch with 0-based index k - 1
        epoch_rng["g"] = torch.Generator(device=device).manual_seed(seed + rank)
        if not train_batches:
            train_batches.append(TrainBatches(stage, cfg.batch_size, cfg.num_workers, rank))
        return itertools.islice(train_batches[0].endless(seed + rank), state.extra["steps_per_epoch"])

    def train_step(batch):
        batch = to_device(batch, device)
        epoch_rng["last"] = batch
        with autocast:
            loss, parts = stage.loss(fwd, batch, epoch_rng["g"], True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        return parts, len(batch["key"])

    def evaluate(k):
        return _validate(stage, model, cfg, device, world, autocast) if cfg.val_fraction > 0 else {}

    def on_best(k, row):
        if rank == 0:
            save_checkpoint({**stage.export(model), "stage": stage.name, "epoch": k, "valid_loss": row["valid_loss"]},
                            out_dir / "checkpoint" / "best.pt")

    def after_epoch(k):
        images = stage.after_epoch(model, k, out_dir, epoch_rng["last"]) if stage.after_epoch is not None else None
        if k == cfg.epochs:
            save_checkpoint(stage.export(model), out_dir / stage.export_name)
        return images

    return ModelSteps(batches, train_step, evaluate, select_metric="valid_loss", on_best=on_best,
                      after_epoch=after_epoch, export=lambda: stage.export(model))


@torch.no_grad()
def _validate(stage: _Stage, model: nn.Module, cfg, device, world: int, autocast) -> dict:
    """Mean validation metrics over every rank's share of the held-out keys (fixed masks: seed ``cfg.seed``)."""
    model.eval()
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    sums, n = {"loss": 0.0}, 0  # every rank joins the all-reduce, even one without validation samples
    for batch in image_loader(stage.dataset("valid", cfg.seed), cfg.batch_size, cfg.num_workers):
        batch = to_device(batch, device)
        with autocast:
            _, parts = stage.loss(model, batch, g, False)
        n += len(batch["key"])
        sums["loss"] += float(parts["loss"]) * len(batch["key"])
    model.train()
    means = _mean_across_ranks(sums, n, device, world)
    return {} if math.isnan(means["loss"]) else {f"valid_{k}": v for k, v in means.items()}  # {}: no held-out keys

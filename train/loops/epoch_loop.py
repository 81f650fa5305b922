"""The one epoch loop of EDG: ImageED, the teacher, the students and the representation study all run here.

A model brings its ``ModelSteps`` (its batches, its training step, its evaluation and what "best" means);
the loop brings everything else, the same for all: resume from the newest checkpoint, per-epoch timing,
losses summed on the device and read once per epoch (averaged over ranks under ``torch.distributed``), the
metrics row, best-model tracking, checkpoints (``RunState.checkpoint``; every ``checkpoint_every`` epochs
and after the last, newest ``keep_last`` kept), and the run-folder files and log line (``train.io.progress``).
Epoch k counts from 1 everywhere (``train.loops.run_state``).

A row of ``metrics.jsonl``, in column order: ``epoch`` (k), ``train_<name>`` for each value the step returns
(mean over the epoch's samples and ranks), whatever ``evaluate`` returns (``valid_*``), ``step`` (optimiser
steps so far), ``lr`` (after the epoch's last step), ``train_seconds``, ``samples_per_s`` (all ranks), and
the columns ``on_best`` adds (``test_*``).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from edg.edg_core.io import progress
from edg.train.io.checkpoint import CheckpointError, Checkpoints
from edg.train.io.progress import TrainLog
from edg.train.io.tensorboard import TensorBoardLog

from .run_state import RunState, load_run_checkpoint

Report = Callable[[dict, "Path | None"], None]  # (epoch row, checkpoint file written this epoch or None)


@dataclass
class ModelSteps:
    """What one model contributes to the loop."""
    batches: Callable[[int], Iterable]  # epoch k -> that epoch's training batches
    train_step: Callable[[object], tuple[dict[str, torch.Tensor], int]]  # batch -> (detached 0-dim values, samples)
    evaluate: Callable[[int], dict[str, float]]  # epoch k -> validation columns (valid_*), {} for none
    select_metric: str | None = None   # the row key whose lowest value is the best epoch; None: no selection
    keep_best_weights: bool = False    # keep the best epoch's state dict in memory and in checkpoints
    on_best: Callable[[int, dict], dict | None] | None = None  # (k, row) at a new best: extras kept in Best.extra;
    #                                                           it may add columns (test_*) to row
    end_epoch: Callable[[dict], None] | None = None  # (row) after evaluation, e.g. ReduceLROnPlateau
    after_epoch: Callable[[int], dict | None] | None = None  # (k) after the epoch is recorded, on the writer only;
    #                                                          it may return images (name -> HxWx3 uint8) to log
    export: Callable[[], dict] | None = None  # the model's standalone file content, copied into checkpoints
    stop: Callable[[RunState], bool] | None = None  # checked before every epoch: True ends training (early stopping)


@dataclass
class LoopConfig:
    """How the loop runs (not what it trains)."""
    name: str                          # in log lines, progress.json and checkpoints
    epochs: int                        # the schedule's length
    steps_per_epoch: int
    batch_size: int                    # samples per step over all ranks (for the start-up line)
    device: torch.device
    run_dir: Path | None = None        # metrics/progress files and checkpoint/ (None: nothing written)
    checkpoints: bool = True
    checkpoint_every: int = 1          # 0: only after the last epoch
    keep_last: int = 1
    resume_from: Path | None = None    # else the newest checkpoint/epoch-*.pt of run_dir
    same_name_only: bool = False       # refuse a checkpoint written under another name (imageed vs teacher)
    stop_after: int | None = None      # end after this epoch (an interruption: a rerun resumes)
    units: dict[str, str] = field(default_factory=dict)
    show: tuple[str, ...] | None = None
    config: dict | None = None         # stored in checkpoints
    writer: bool = True                # this process writes files (rank 0)
    world: int = 1
    quiet: bool = False
    progress_bar: bool | None = None   # None: on a terminal
    tensorboard: bool = True           # event files under run_dir/tensorboard (train.io.tensorboard)


def checkpoints_of(loop: LoopConfig) -> Checkpoints | None:
    if loop.run_dir is None or not loop.checkpoints:
        return None
    return Checkpoints(Path(loop.run_dir) / "checkpoint", loop.checkpoint_every, loop.keep_last)


def find_checkpoint(loop: LoopConfig) -> dict | None:
    """The checkpoint a run resumes from (``resume_from``, else the newest epoch file, else the one-file
    ``checkpoint/checkpoint.pt`` of early EDG versions), in the current format; None for a fresh run."""
    ckpts = checkpoints_of(loop)
    src = Path(loop.resume_from) if loop.resume_from else ckpts.latest() if ckpts is not None else None
    if src is None and ckpts is not None and (ckpts.folder / "checkpoint.pt").is_file():
        src = ckpts.folder / "checkpoint.pt"
    if src is None:
        return None
    ck = load_run_checkpoint(src, loop.device, f"{loop.name} checkpoint")
    if loop.same_name_only and ck["name"] is not None and ck["name"] != loop.name:
        raise CheckpointError(f"{src}: checkpoint of stage {ck['name']!r}, not {loop.name!r}")
    return ck


def _epoch_means(sums: dict[str, torch.Tensor], count: int, device, world: int) -> dict[str, float]:
    """Sample-weighted means of the summed step values, over every rank: one host sync."""
    keys = list(sums)  # the step's order (the same on every rank)
    t = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=device).reshape(()) for k in keys]
                    + [torch.tensor(float(count), dtype=torch.float64, device=device)])
    if world > 1:
        torch.distributed.all_reduce(t)
    values = t.tolist()
    return {k: values[i] / values[-1] if values[-1] > 0 else float("nan") for i, k in enumerate(keys)}


def run_epochs(state: RunState, steps: ModelSteps, loop: LoopConfig, report: Report | None = None) -> RunState:
    """Train ``state`` from epoch ``state.epoch + 1`` to ``loop.epochs`` (or ``loop.stop_after``).

    ``state`` is fresh or restored (``RunState.restore(find_checkpoint(loop))``) by the caller, which builds
    the scheduler first when the schedule's length comes from the checkpoint."""
    ckpts = checkpoints_of(loop) if loop.writer else None
    # the rows come from the checkpoint; a student checkpoint of an earlier EDG has none: metrics.jsonl has them
    known_rows = state.history if state.history or not state.epoch else None
    log = TrainLog(loop.run_dir if loop.writer else None, loop.name, loop.epochs, state.epoch, loop.units,
                   show=loop.show, quiet=loop.quiet or not loop.writer, rows=known_rows)
    state.history = list(log.rows) if loop.writer else state.history[:state.epoch]
    first, last = state.epoch + 1, min(loop.epochs, loop.stop_after or loop.epochs)
    after_step = log.step_timer(loop.steps_per_epoch, loop.device)
    tb = None
    if first <= last:
        log.start(state.model, loop.epochs - state.epoch, loop.steps_per_epoch, loop.batch_size, loop.device)
        if loop.writer and loop.run_dir is not None and loop.tensorboard:
            tb = TensorBoardLog(loop.run_dir, loop.units)
    try:
        _epochs(state, steps, loop, report, log, ckpts, tb, first, last, after_step)
    finally:
        if tb is not None:
            tb.close()
    return state


def _epochs(state, steps, loop, report, log, ckpts, tb, first, last, after_step) -> None:

    for k in range(first, last + 1):
        if steps.stop is not None and steps.stop(state):
            log.say(f"{loop.name}: stopped early after epoch {state.epoch} (best epoch {state.best.epoch})")
            break
        t0 = time.perf_counter()
        state.model.train()
        sums: dict[str, torch.Tensor] = {}
        n = 0
        batches = progress(steps.batches(k), f"{loop.name} epoch {k}/{loop.epochs}", total=loop.steps_per_epoch,
                           disable=None if loop.progress_bar is None else not loop.progress_bar)
        for i, batch in enumerate(batches):
            values, b = steps.train_step(batch)
            for key, v in values.items():  # kept on the device: no host sync per step
                sums[key] = sums.get(key, 0.0) + v.detach().double() * b
            n += b
            if k == first:  # the first step includes loader start-up: not timed
                after_step(i)
        if loop.device.type == "cuda":
            torch.cuda.synchronize(loop.device)
        train_seconds = time.perf_counter() - t0
        lr = state.optimizer.param_groups[0]["lr"]  # before end_epoch: the lr of the epoch's last step
        row = {"epoch": k, **{f"train_{key}": v for key, v in _epoch_means(sums, n, loop.device, loop.world).items()},
               **steps.evaluate(k), "step": k * loop.steps_per_epoch, "lr": lr, "train_seconds": train_seconds,
               "samples_per_s": n * loop.world / max(train_seconds, 1e-9)}
        if steps.end_epoch is not None:
            steps.end_epoch(row)
        value = row.get(steps.select_metric) if steps.select_metric else None
        if value is not None and value < state.best.value:
            extra = steps.on_best(k, row) if steps.on_best is not None else None
            state.keep_best(value, k, steps.keep_best_weights, extra)
        state.epoch = k
        state.history.append(row)
        state.seconds += time.perf_counter() - t0
        written = None
        if ckpts is not None and ckpts.due(k, loop.epochs):
            export = steps.export() if steps.export is not None else None
            written = ckpts.save(state.checkpoint(loop.name, loop.config, export), k)
        if loop.writer:
            log.epoch(row, time.perf_counter() - t0, k)
            images = steps.after_epoch(k) if steps.after_epoch is not None else None
            if tb is not None:
                tb.epoch(row, k, images)
        if loop.world > 1:
            torch.distributed.barrier()
        if report is not None:
            report(row, written)

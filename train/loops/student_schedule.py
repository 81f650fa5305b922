"""The learning-rate schedule of student training (``train.loops.distill.train_student``).

An optional linear warm-up per optimiser step (lr = base * (step + 1) / warmup_steps for the first
``warmup_steps`` steps, as the authors' ViSNet ``optimizer_step``), then one of, per epoch:

* ``cosine``: cosine annealing to 0 over ``epochs`` (Geom3D's ``CosineAnnealingLR``);
* ``plateau``: ``ReduceLROnPlateau`` on the validation selection metric (factor, patience in epochs, min lr;
  the authors' ViSNet monitors its validation loss);
* ``none``: constant.

Selection as the authors' ViSNet (``FitConfig.select_ema``, ``early_stopping_patience``; its LNNP ``step`` with
``loss_scale_y`` and Lightning's ``EarlyStopping``/``ModelCheckpoint`` on ``val_loss``): validation runs in batches
b = 1, 2, ... (in order, carried across epochs), each with its weighted MSE energy term E_b = w_E MSE(E) and force
term F_b = w_F MSE(F); the energy term goes through an exponential moving average

    ema_b = a E_b + (1 - a) ema_{b-1},   ema = E_b at the first batch ever,   a = select_ema (ViSNet: 0.05)

and the epoch's validation loss is mean_b (ema_b + F_b); the best epoch, the plateau schedule and early stopping
watch it. Before the first epoch the untrained model's first two validation batches seed the EMA (Lightning's
sanity check, ``num_sanity_val_steps=2``). Early stopping: training ends when the selection metric has not
improved (strictly lower, as Lightning's ``min_delta=0``) for ``early_stopping_patience`` epochs, or when it is not
finite (``check_finite``). The EMA is part of the schedule's state, so a resumed run continues it (Lightning
restarts it from a new sanity check).
"""
from __future__ import annotations

import math

import torch
from edg.train.configs import FitConfig

SCHEDULERS = ("cosine", "plateau", "none")
SANITY_BATCHES = 2  # Lightning's num_sanity_val_steps: validation batches run before training


class LossEMA:
    """The authors' ViSNet EMA of a loss term over validation batches: ``update(terms)`` folds in one epoch's
    per-batch values in order and returns their smoothed values; ``value`` carries over to the next call."""

    def __init__(self, weight: float):
        if not 0 < weight <= 1:
            raise ValueError(f"select_ema must be in (0, 1] (the newest batch's weight), got {weight}")
        self.weight = weight
        self.value: float | None = None

    def update(self, terms: list[float]) -> list[float]:
        out = []
        for t in terms:
            self.value = t if self.value is None else self.weight * t + (1.0 - self.weight) * self.value
            out.append(self.value)
        return out


class StudentSchedule:
    """Warm-up per step plus a per-epoch schedule; ``state_dict`` / ``load_state_dict`` for checkpoints."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: FitConfig):
        if cfg.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {cfg.scheduler!r}; use one of {', '.join(SCHEDULERS)}")
        self.optimizer = optimizer
        self.kind = cfg.scheduler
        self.warmup_steps = int(cfg.warmup_steps or 0)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.steps = 0
        self.ema = LossEMA(cfg.select_ema) if cfg.select_ema else None
        self.patience = int(cfg.early_stopping_patience or 0)
        self.epoch_schedule = None
        if self.kind == "cosine":
            self.epoch_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
        elif self.kind == "plateau":
            self.epoch_schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr)

    def before_step(self) -> None:
        """Call before every optimiser step (sets the warm-up lr)."""
        if self.steps < self.warmup_steps:
            scale = (self.steps + 1) / self.warmup_steps
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = scale * base
        self.steps += 1

    def end_epoch(self, valid_metric: float) -> None:
        """Call after every epoch with the validation selection metric (used by ``plateau``)."""
        if self.kind == "cosine":
            self.epoch_schedule.step()
        elif self.kind == "plateau":
            self.epoch_schedule.step(valid_metric)

    def ema_loss(self, energy_terms: list[float], other_terms: list[float]) -> float:
        """The epoch's ViSNet validation loss from its batches' weighted energy and other (force) terms, in
        batch order: mean_b (EMA_b(energy) + other_b) (see the module docstring)."""
        smoothed = self.ema.update(energy_terms)
        return sum(e + o for e, o in zip(smoothed, other_terms)) / max(len(other_terms), 1)

    def should_stop(self, epoch: int, best_epoch: int, value: float | None) -> bool:
        """Early stopping after ``epoch`` epochs, the best at ``best_epoch`` (0: none) and ``value`` the last
        epoch's selection metric: not finite, or ``patience`` epochs without improvement (0: never)."""
        if not self.patience or value is None or epoch == 0:
            return False
        return not math.isfinite(value) or epoch - best_epoch >= self.patience

    def state_dict(self) -> dict:
        return {"steps": self.steps,
                "epoch_schedule": self.epoch_schedule.state_dict() if self.epoch_schedule is not None else None,
                "ema": self.ema.value if self.ema is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        if self.ema is not None:
            self.ema.value = state.get("ema")
        if self.epoch_schedule is not None and state.get("epoch_schedule") is not None:
            self.epoch_schedule.load_state_dict(state["epoch_schedule"])

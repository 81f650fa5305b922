"""The learning-rate schedule of student training (``train.loops.distill.train_student``).

An optional linear warm-up per optimiser step (lr = base * (step + 1) / warmup_steps for the first
``warmup_steps`` steps, as the authors' ViSNet ``optimizer_step``), then one of, per epoch:

* ``cosine``: cosine annealing to 0 over ``epochs`` (Geom3D's ``CosineAnnealingLR``);
* ``plateau``: ``ReduceLROnPlateau`` on the validation selection metric (factor, patience in epochs, min lr;
  the authors' ViSNet monitors its validation loss);
* ``none``: constant.
"""
from __future__ import annotations

import torch
from edg.train.configs import FitConfig

SCHEDULERS = ("cosine", "plateau", "none")


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

    def state_dict(self) -> dict:
        return {"steps": self.steps,
                "epoch_schedule": self.epoch_schedule.state_dict() if self.epoch_schedule is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        if self.epoch_schedule is not None and state.get("epoch_schedule") is not None:
            self.epoch_schedule.load_state_dict(state["epoch_schedule"])

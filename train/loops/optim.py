"""Optimisers and learning-rate schedules shared by the pretraining loops."""
from __future__ import annotations

import math

import torch
from timm.optim import param_groups_weight_decay


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int = 256) -> float:
    """MAE's linear scaling rule: lr = base_lr * global_batch / 256."""
    return base_lr * global_batch / reference_batch


def adamw(model: torch.nn.Module, lr: float, weight_decay: float = 0.05,
          betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms and 1-d parameters (embeddings of shape (1, ..., D) included)."""
    groups = param_groups_weight_decay(model, weight_decay,
                                       no_weight_decay_list=("mask_token", "view_embed", "decoder_view_embed"))
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def sgd(model: torch.nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up from 0 over ``warmup_steps``, then half-cosine to ``min_ratio * lr``
    at ``total_steps``. ``warmup_steps = 0`` gives a plain cosine decay."""
    total_steps = max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

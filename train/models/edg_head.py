"""EDG distillation: a student's pooled features are mapped into the teacher's feature space and pushed,
through the teacher's frozen ED predictor, towards the stored ED knowledge of each conformation.

    M = Linear(d_G -> 512)                       (trained with the student)
    L_ED = SmoothL1(EDP(M(F_G)), EDP(F_S))       (EDP frozen; EDP(F_S) stored once per conformation)
    L = L_task + lambda * L_ED                   (lambda = 0: the baseline; L_ED is then not computed)

Shapes: F_G (B, d_G); F_S (B, 512); EDP(.) (B, 768). The teacher itself never runs during student training.
Teacher targets are read from an ``.npz`` or from shards (``fs.npy`` / ``edp.npy`` members, edg_core/shards.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FS_DIM = 512   # teacher feature F_S (ResNet18)
EDP_DIM = 768  # ED predictor output (ImageED feature space)


@dataclass
class EDGConfig:
    lambda_ed: float = 0.0              # weight of L_ED; the paper searches {1e-4, 5e-4, ..., 1.0}; 0 = baseline
    smooth_l1_beta: float = 1.0         # SmoothL1 transition point (torch default, as the official code)
    ed_predictor: str | None = None     # trained ED predictor weights (teacher stage); None: seeded random init
    ed_predictor_seed: int = 0          # seed of the random ED predictor when no weights are given
    teacher_targets: str | None = None  # .npz / shard folder with edp (or fs) per molecule id, or "standin:coulomb"


class EDGHead(nn.Module):
    """Mapper M (trainable) followed by the frozen ED predictor; ``loss`` is L_ED."""

    def __init__(self, feature_dim: int, ed_predictor: nn.Module, fs_dim: int | None = None, beta: float = 1.0):
        super().__init__()
        self.mapper = nn.Linear(feature_dim, fs_dim or predictor_dims(ed_predictor)[0])
        self.ed_predictor = ed_predictor
        self.ed_predictor.requires_grad_(False)
        self.ed_predictor.eval()
        self.beta = beta

    def train(self, mode: bool = True) -> EDGHead:
        super().train(mode)
        self.ed_predictor.eval()  # frozen: never in training mode
        return self

    def forward(self, f_g: torch.Tensor) -> torch.Tensor:
        """F_G (B, d_G) -> EDP(M(F_G)) (B, 768)."""
        return self.ed_predictor(self.mapper(f_g))

    def loss(self, f_g: torch.Tensor, edp_target: torch.Tensor) -> torch.Tensor:
        """L_ED = SmoothL1(EDP(M(F_G)), EDP(F_S)), mean over batch and features."""
        return nn.functional.smooth_l1_loss(self(f_g), edp_target, beta=self.beta)


def edg_objective(task_loss: torch.Tensor, lambda_ed: float, head: EDGHead | None = None,
                  f_g: torch.Tensor | None = None, edp_target: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """L = L_task + lambda * L_ED; returns (L, L_ED). With lambda = 0, L is L_task itself and L_ED is None."""
    if lambda_ed == 0:
        return task_loss, None
    if head is None or f_g is None or edp_target is None:
        raise ValueError("lambda_ed > 0 needs the EDG head, the student features F_G and the teacher targets")
    l_ed = head.loss(f_g, edp_target)
    return task_loss + lambda_ed * l_ed, l_ed


# ---------------------------------------------------------------- teacher targets


def predictor_dims(module: nn.Module | None) -> tuple[int, int]:
    """(input, output) width of an ED predictor: (512, 768) for the paper's; smaller in demo-size pipelines."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)] if module is not None else []
    return (linears[0].in_features, linears[-1].out_features) if linears else (FS_DIM, EDP_DIM)


# ---------------------------------------------------------------- stand-in teacher (no pipeline teacher yet)

"""The training loops' speed choices, decided in one place and said once in the log.

On CUDA: TF32 matmuls and convolutions (on by default: ``tf32`` in the training configs), fused optimizers
(``optim.fused_kwargs``), ``channels_last`` weights and inputs for convolutional models (the teacher), pinned
loader batches copied without blocking (``train.data.shards``); anywhere: an opt-in ``torch.compile`` and
one DataLoader whose workers persist across epochs. On the CPU the CUDA-only choices are off.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

__all__ = ["SpeedChoices", "speed_choices", "apply_speed_choices", "place_model"]

_said: set[str] = set()


@dataclass(frozen=True)
class SpeedChoices:
    """What a training run on ``device`` uses; ``line()`` is its one log line."""
    device: str
    tf32: bool
    fused_optimizer: bool
    channels_last: bool
    compile: bool
    persistent_loader: bool | None  # None: the loop has no image loader (students)

    def line(self, stage: str) -> str:
        on = {True: "on", False: "off"}
        parts = [f"TF32 {on[self.tf32]}", f"fused optimizer {on[self.fused_optimizer]}",
                 f"torch.compile {on[self.compile]}"]
        if self.channels_last:
            parts.append("channels_last on")
        if self.persistent_loader is not None:
            parts.append("one loader kept across epochs" + (" (persistent workers)" if self.persistent_loader
                                                            else " (no workers)"))
        return f"{stage} on {self.device}: " + ", ".join(parts)


def speed_choices(device, *, tf32: bool = True, compile: bool = False, channels_last: bool = False,
                  loader_workers: int | None = None) -> SpeedChoices:
    """The choices for training on ``device``: TF32, fused optimizers and ``channels_last`` (when the model
    asks for it) on CUDA only; ``compile`` as asked; ``loader_workers``: the loop's DataLoader workers (None:
    no image loader)."""
    cuda = torch.device(device).type == "cuda"
    return SpeedChoices(str(device), tf32 and cuda, cuda, channels_last and cuda, compile,
                        None if loader_workers is None else loader_workers > 0)


def apply_speed_choices(choices: SpeedChoices, stage: str) -> None:
    """Set the process-wide TF32 switches as ``choices`` say and log its line (once per distinct line)."""
    if torch.device(choices.device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = choices.tf32
        torch.backends.cudnn.allow_tf32 = choices.tf32
    line = choices.line(stage)
    if line not in _said:
        _said.add(line)
        log.info("%s", line)


def place_model(model: torch.nn.Module, choices: SpeedChoices) -> torch.nn.Module:
    """``model`` on ``choices.device``, in channels_last layout when ``choices.channels_last`` (through the
    model's ``channels_last_()`` when it has one, which also lays out its inputs, else its 4-D weights; the
    values are unchanged). Build the optimizer after this: a fused one needs the parameters where they train."""
    model = model.to(choices.device)
    if choices.channels_last:
        model = model.channels_last_() if hasattr(model, "channels_last_") else \
            model.to(memory_format=torch.channels_last)
    return model

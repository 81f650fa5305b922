"""TensorBoard event files for a training run: every numeric column of an epoch row as a scalar (tags
``<split>/<metric>``, with its unit where the run states one: ``valid/energy [kcal/mol]``), and images a model
contributes (ImageED's input | masked | reconstruction panels), under ``<run_dir>/tensorboard/``.

Why TensorBoard: it is the tracker every PyTorch user already has (``torch.utils.tensorboard`` writes its
files; ``tensorboard --logdir`` reads them, on a laptop or through a tunnel to a cluster), it works offline and
on a shared folder, and it needs no server while training. MLflow and Weights & Biases need a tracking
server or an account and reach the network by default; our own CSV/JSONL files (``train.io.progress``) stay
the machine-readable record, TensorBoard is the view.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

SPLITS = ("train", "valid", "test")
BOOKKEEPING = {"lr": "optim/lr", "samples_per_s": "speed/samples_per_s", "train_seconds": "speed/train_seconds [s]",
               "epoch": None, "step": None}


def tag_for(column: str, units: dict[str, str]) -> str | None:
    """The TensorBoard tag of an epoch-row column (None for bookkeeping columns such as ``epoch``)."""
    if column in BOOKKEEPING:
        return BOOKKEEPING[column]
    for split in SPLITS:
        if column.startswith(split + "_"):
            base = column[len(split) + 1:]
            unit = units.get(base, "")
            return f"{split}/{base}" + (f" {unit}" if unit.startswith("(") else f" [{unit}]" if unit else "")
    return None


class TensorBoardLog:
    """One run's event files; ``epoch(row, k, images)`` after each epoch, ``close()`` at the end."""

    def __init__(self, run_dir: str | Path, units: dict[str, str] | None = None):
        from torch.utils.tensorboard import SummaryWriter
        self.folder = Path(run_dir) / "tensorboard"
        self.units = dict(units or {})
        self.writer = SummaryWriter(log_dir=str(self.folder))
        print(f"TensorBoard: tensorboard --logdir {self.folder.resolve()}", flush=True)

    def epoch(self, row: dict, k: int, images: dict[str, np.ndarray] | None = None) -> None:
        """Scalars of ``row`` at step k (the epoch), and ``images`` (name -> HxWx3 uint8)."""
        for column, value in row.items():
            tag = tag_for(column, self.units)
            if tag is not None and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag, value, k)
        for name, image in (images or {}).items():
            self.writer.add_image(f"images/{name}", image, k, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

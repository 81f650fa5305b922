"""Which torch device a run uses: ``auto`` (the default of every training and inference command) is CUDA when a
GPU is visible to this process (a Ray task or actor given GPUs sees exactly those), else the CPU, said once."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
AUTO = "auto"
_said: set[str] = set()


def resolve_device(name: str | torch.device | None = AUTO) -> torch.device:
    """``auto``/None -> ``cuda:<current>`` when CUDA is available, else ``cpu``; anything else as torch reads it."""
    if name is None or str(name) == AUTO:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        why = "a CUDA GPU is visible" if device.type == "cuda" else "no CUDA GPU is visible"
        if str(device) not in _said:
            _said.add(str(device))
            log.info("device: %s (auto: %s)", device, why)
        return device
    return torch.device(name)

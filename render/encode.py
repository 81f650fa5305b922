"""Render output off the render loop (issue 24): per batch, the float images are quantised to uint8 on the
renderer's device, copied to the host in one device-to-host copy, and compressed into shard samples by a
thread pool (zstd and zlib release the GIL) while the loop renders the next batch.

Before, each molecule's images went to the host one by one as float32 (7.2 MB for 6 ED + 4 structure views at
224 px), were rounded by numpy and deflated with zlib on the actor's CPU: 10 to 30 ms of CPU per molecule.
Figures and the codec choice: docs/shards.md; ``python -m bench throughput`` prints the encode line.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch


def quantise_to_host(images: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Float images in [0, 1] (any shapes, all on one device) -> uint8 host arrays of the same shapes.

    Rounded as ``edg_core.shards.to_uint8`` rounds (x 255, half to even, clipped to 0..255), on the images'
    device and in place (the images are consumed), each written straight into its part of one uint8 device
    buffer, which is copied to the host once (into pinned memory from CUDA). The arrays are views of that
    one host buffer."""
    if not images:
        return {}
    device = next(iter(images.values())).device
    sizes = {name: x.numel() for name, x in images.items()}
    flat = torch.empty(sum(sizes.values()), dtype=torch.uint8, device=device)
    offset = 0
    with torch.no_grad():
        for name, x in images.items():
            if x.device != device:
                raise ValueError(f"{name} images are on {x.device}, the others on {device}")
            x.mul_(255).round_().clamp_(0, 255)
            flat[offset:offset + sizes[name]].view(x.shape).copy_(x)
            offset += sizes[name]
        if device.type == "cpu":
            host = flat
        else:  # the one device-to-host copy of the batch; blocking, since the threads read it next
            host = torch.empty(flat.shape, dtype=torch.uint8, pin_memory=device.type == "cuda")
            host.copy_(flat)
    whole = host.numpy()  # the arrays below keep the host buffer alive
    out, offset = {}, 0
    for name, x in images.items():
        out[name] = whole[offset:offset + sizes[name]].reshape(tuple(x.shape))
        offset += sizes[name]
    return out


def encode_threads() -> int:
    """Threads of a worker's compression pool: the CPUs this process may use, at most 4 (a batch's
    molecules compress in parallel; more threads than that only wait on the render loop)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))

"""Zero-copy hand-off of device fields to torch (the fused DFT -> render path on one GPU)."""
from __future__ import annotations

import numpy as np


def cupy_to_torch(arr):
    """A torch tensor sharing memory with ``arr`` (CuPy via DLPack, no host copy; numpy via ``from_numpy``).

    Shape and dtype are kept; the tensor lives on the array's device. The caller must keep using the
    current CUDA stream or synchronise before handing the tensor to another stream.
    """
    import torch
    if isinstance(arr, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(arr))
    if not hasattr(arr, "__dlpack__"):
        raise TypeError(f"cupy_to_torch: expected a CuPy or numpy array, got {type(arr).__name__}")
    return torch.from_dlpack(arr)

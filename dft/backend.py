"""Which backend runs the DFT: PySCF on the CPU or GPU4PySCF on a CUDA GPU.

GPU modules (cupy, gpu4pyscf) are imported only here and inside the functions that need them, so the
stage imports and runs on machines without them.
"""
from __future__ import annotations

import functools
import logging

import numpy as np

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def gpu_usable() -> bool:
    """True when cupy sees a CUDA device and gpu4pyscf imports."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False
        import gpu4pyscf  # noqa: F401
    except Exception as e:  # ImportError, CUDA driver errors
        log.debug("GPU backend not usable: %s", e)
        return False
    return True


def resolve_backend(name: str) -> str:
    """``auto`` -> ``gpu`` when usable else ``cpu``; ``gpu`` without a usable GPU is an error."""
    from edg_core.config import ConfigError
    if name == "auto":
        return "gpu" if gpu_usable() else "cpu"
    if name == "gpu" and not gpu_usable():
        raise ConfigError("dft backend 'gpu' needs cupy, gpu4pyscf and a CUDA device; use --backend cpu")
    if name not in ("cpu", "gpu"):
        raise ConfigError(f"unknown dft backend {name!r}; use auto, cpu or gpu")
    return name


def array_module(a):
    """numpy or cupy, whichever owns ``a``."""
    if type(a).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def to_numpy(a) -> np.ndarray:
    """A host copy of a numpy or cupy array."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def is_out_of_memory(exc: BaseException) -> bool:
    """Host ``MemoryError`` or CuPy's device out-of-memory error."""
    if isinstance(exc, MemoryError):
        return True
    return type(exc).__name__ in ("OutOfMemoryError", "CUDARuntimeError") and "memory" in str(exc).lower()

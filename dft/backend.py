"""Which backend runs the DFT: PySCF on the CPU or GPU4PySCF on a CUDA GPU.

GPU modules (cupy, gpu4pyscf) are imported only here and inside the functions that need them, so the
stage imports and runs on machines without them.
"""
from __future__ import annotations

import functools
import logging
import sys

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
    from edg.edg_core.config import ConfigError
    if name == "auto":
        return "gpu" if gpu_usable() else "cpu"
    if name == "gpu" and not gpu_usable():
        raise ConfigError("dft backend 'gpu' needs cupy, gpu4pyscf and a CUDA device; use --backend cpu")
    if name not in ("cpu", "gpu"):
        raise ConfigError(f"unknown dft backend {name!r}; use auto, cpu or gpu")
    return name


def array_module(a):
    """numpy or cupy, whichever owns ``a``, by class hierarchy: subclasses of ``cupy.ndarray`` defined
    elsewhere (gpu4pyscf's ``CPArrayWithTag`` density matrices) are cupy arrays too. Without cupy imported
    no array can be a cupy array, so machines without it never import it here."""
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(a, cupy.ndarray):
        return cupy
    return np


def synchronize(backend: str) -> None:
    """Wait for the device's queued work (``backend`` 'gpu'); a no-op on the CPU. Call before reading a timer:
    CuPy kernels run asynchronously, so without it a timer measures only the kernel launches."""
    if backend == "gpu":
        import cupy
        cupy.cuda.Device().synchronize()


def release_memory_pool(backend: str) -> None:
    """Hand CuPy's cached (freed, unused) device and pinned host blocks back to the driver (``backend``
    'gpu'; a no-op on the CPU). Arrays still referenced are untouched. Between molecules this keeps one
    process from holding its peak footprint, which several actors sharing a GPU cannot afford."""
    if backend == "gpu":
        import cupy
        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()


def to_numpy(a) -> np.ndarray:
    """A host copy of a numpy or cupy array."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def is_out_of_memory(exc: BaseException) -> bool:
    """Host ``MemoryError`` or CuPy's device out-of-memory error."""
    if isinstance(exc, MemoryError):
        return True
    return type(exc).__name__ in ("OutOfMemoryError", "CUDARuntimeError") and "memory" in str(exc).lower()

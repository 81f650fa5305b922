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
    'gpu'; a no-op on the CPU). Arrays still referenced are untouched. The DFT worker does this after a failed
    molecule (an out-of-memory error leaves the pool at its peak) and when it is closed, not after every
    molecule: the pool's cap (``cap_memory_pool``) bounds what it keeps between molecules."""
    if backend == "gpu":
        import cupy
        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()


GPU4PYSCF_POOL_FRACTION = 0.9
"""GPU4PySCF caps CuPy's pool at 90 % of the card when it is imported (``gpu4pyscf.__config__``)."""


def actor_gpu_share() -> float | None:
    """The GPU share Ray assigned to this process's actor or task (0.25 for ``num_gpus=0.25``), or None outside
    Ray or without a GPU resource. Ray is never imported here: an actor's process has it loaded already (the
    pattern of ``array_module`` with cupy), so ``dft/`` still runs where Ray is not installed."""
    ray = sys.modules.get("ray")
    if ray is None:
        return None
    try:
        if not ray.is_initialized():
            return None
        share = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    except Exception as e:  # the driver, or a Ray without the call: no share to go by
        log.debug("no Ray GPU share: %s", e)
        return None
    return share if share > 0 else None


def pool_fraction(configured: float = 0.0) -> float:
    """The fraction of the GPU's memory one DFT process's CuPy pool may hold: ``configured`` when set (> 0),
    else GPU4PySCF's 0.9 times the Ray actor's GPU share (4 actors at 0.25 share: 0.225 each, 0.9 of the card
    together), else 0.9 (a process that has the GPU to itself)."""
    if configured > 0:
        return min(configured, 1.0)
    share = actor_gpu_share()
    return GPU4PYSCF_POOL_FRACTION * min(share, 1.0) if share else GPU4PYSCF_POOL_FRACTION


def cap_memory_pool(backend: str, fraction: float) -> int:
    """Cap CuPy's default pool at ``fraction`` of the current GPU's memory (``backend`` 'gpu'; 0 and nothing
    done on the CPU); returns the cap in bytes. Call after gpu4pyscf is imported (its import sets 0.9).

    What the cap bounds: every block the pool hands out, in use or cached for reuse. Past it CuPy frees the
    pool's cached blocks and retries, then raises its out-of-memory error (the molecule fails as "out of
    memory" and the run goes on). GPU4PySCF sends blocks over 100 MB straight to ``cudaMalloc``
    (``set_conditional_mempool_malloc``): those are outside the pool and its cap, and go back to the driver as
    soon as they are freed, so nothing over 100 MB outlives a molecule."""
    if backend != "gpu":
        return 0
    import cupy
    import gpu4pyscf  # noqa: F401  (its first import sets its own 0.9 cap: ours must come after)
    total = int(cupy.cuda.runtime.memGetInfo()[1])
    cap = int(fraction * total)
    cupy.get_default_memory_pool().set_limit(size=cap)
    return cap


def to_numpy(a) -> np.ndarray:
    """A host copy of a numpy or cupy array."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def is_out_of_memory(exc: BaseException) -> bool:
    """Host ``MemoryError`` or CuPy's device out-of-memory error."""
    if isinstance(exc, MemoryError):
        return True
    return type(exc).__name__ in ("OutOfMemoryError", "CUDARuntimeError") and "memory" in str(exc).lower()

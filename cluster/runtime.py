"""Connecting to Ray: a running cluster when there is one, a local single-node runtime otherwise.

``ray_session()`` is how EDG stages get a Ray runtime. It joins ``address`` (default ``auto``: ``$RAY_ADDRESS``
or a head started on this machine with ``ray start --head``) and otherwise starts a local runtime whose session
files live under ``temp_dir`` (tests pass their own short temporary folder). A runtime it started is shut down
when the ``with`` block ends; a cluster it joined is left running. ``address="local"`` always starts a fresh
local runtime.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_session(address: str | None = None, temp_dir: str | os.PathLike | None = None,
                num_cpus: int | None = None) -> Iterator[dict]:
    """Yield ``ray.cluster_resources()`` inside a connected Ray runtime (see the module docstring)."""
    import ray

    from .pool import init_ray
    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    how = init_ray(address or "auto", num_cpus=num_cpus, temp_dir=str(temp_dir) if temp_dir else None)
    log.info("%s", how)
    try:
        yield ray.cluster_resources()
    finally:
        if how.startswith("local"):
            ray.shutdown()

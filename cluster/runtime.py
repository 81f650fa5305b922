"""Connecting to Ray: a running cluster when there is one, a local single-node runtime otherwise.

``ray_session()`` is the one way EDG stages get a Ray runtime. It connects to ``address`` (or
``$RAY_ADDRESS``, or ``"auto"`` when a head is running on this machine) and otherwise starts a local
runtime whose session files live under ``temp_dir`` (tests pass their own temporary folder). A runtime it
started is shut down when the ``with`` block ends; a cluster it joined is left running.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def _head_running() -> bool:
    """True when a Ray head started with ``ray start --head`` is up on this machine."""
    try:
        from ray._private.services import find_gcs_addresses
    except ImportError:  # pragma: no cover - private API moved
        return False
    try:
        return bool(find_gcs_addresses())
    except Exception:
        return False


@contextlib.contextmanager
def ray_session(address: str | None = None, temp_dir: str | os.PathLike | None = None,
                num_cpus: int | None = None, num_gpus: int | None = None,
                dashboard: bool = False) -> Iterator[dict]:
    """Yield ``ray.cluster_resources()`` inside a connected Ray runtime (see module docstring)."""
    import ray
    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    address = address or os.environ.get("RAY_ADDRESS") or ("auto" if _head_running() else None)
    kwargs = dict(ignore_reinit_error=True, log_to_driver=True, configure_logging=False)
    started = address is None
    if started:
        if temp_dir is not None:
            Path(temp_dir).mkdir(parents=True, exist_ok=True)
            kwargs["_temp_dir"] = str(Path(temp_dir).resolve())
        kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard)
        log.info("starting a local Ray runtime (no cluster found)")
    else:
        kwargs["address"] = address
        log.info("joining the Ray cluster at %s", address)
    ray.init(**kwargs)
    try:
        yield ray.cluster_resources()
    finally:
        if started:
            ray.shutdown()

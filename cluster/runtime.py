"""Connecting to Ray: a running cluster when there is one, a local single-node runtime otherwise.

``ray_session()`` is how EDG stages get a Ray runtime. It joins ``address`` (default ``auto``: ``$RAY_ADDRESS``
or a head started on this machine with ``ray start --head``) and otherwise starts a local runtime bound to
127.0.0.1, without a dashboard, whose session files live under ``temp_dir`` (a fresh temporary folder by
default, removed when the session ends). A runtime it started is shut down when the ``with`` block ends; a
cluster it joined is left running. ``address="local"`` always starts a fresh local runtime.

``use_ray(setting)`` decides whether a command runs its stages on Ray: an explicit setting wins; otherwise Ray
is used when the process runs inside a Ray job (``ray job submit``) or ``$RAY_ADDRESS`` names a cluster.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)
LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class RaySession:
    started_here: bool   # a local runtime this process started (and will shut down)
    where: str           # "local runtime in <dir>" or the cluster address


def in_ray_cluster_context() -> bool:
    """True inside a Ray job's driver (``ray job submit``) or when ``$RAY_ADDRESS`` names a cluster."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or os.environ.get("RAY_ADDRESS"))


def use_ray(setting: bool | None) -> tuple[bool, str]:
    """(run on Ray?, why) for a config/flag ``setting``: True/False as given; None: the cluster context."""
    if setting is not None:
        return setting, ("ray enabled by the config/flags" if setting else "ray disabled by the config/flags")
    if in_ray_cluster_context():
        return True, "inside a Ray job or $RAY_ADDRESS is set"
    return False, "no Ray job and no $RAY_ADDRESS"


def _loopback_only() -> None:
    """Make a runtime started here listen on 127.0.0.1 only. Ray turns ``_node_ip_address="127.0.0.1"`` into the
    machine's routable address unless clusters are switched off (its switch for laptops,
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when ray is imported: set for the workers it spawns, and on
    the already imported constant)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants
    ray_constants.ENABLE_RAY_CLUSTER = False


def connect(address: str | None = "auto", num_cpus: int | None = None, temp_dir: str | None = None) -> RaySession:
    """Join the cluster at ``address`` or start a local runtime (see the module docstring)."""
    import ray
    if address not in (None, "local"):
        try:
            ray.init(address=address, log_to_driver=False)
            return RaySession(False, f"Ray cluster at {address}")
        except (ConnectionError, RuntimeError, ValueError) as e:
            log.info("no Ray cluster at %s (%s); starting a local runtime", address, e)
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="edgray")
    _loopback_only()
    ray.init(num_cpus=num_cpus, _temp_dir=temp_dir, include_dashboard=False, log_to_driver=False,
             _node_ip_address=LOCALHOST)
    return RaySession(True, f"local Ray runtime in {temp_dir}")


@contextlib.contextmanager
def ray_session(address: str | None = None, temp_dir: str | os.PathLike | None = None,
                num_cpus: int | None = None) -> Iterator[dict]:
    """Yield ``ray.cluster_resources()`` inside a connected Ray runtime (see the module docstring)."""
    import ray
    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    own_tmp = tempfile.mkdtemp(prefix="edgray") if temp_dir is None else None  # removed when the session ends
    session = connect(address or "auto", num_cpus=num_cpus, temp_dir=str(temp_dir or own_tmp))
    log.info("%s", session.where)
    try:
        yield ray.cluster_resources()
    finally:
        if session.started_here:
            ray.shutdown()
        if own_tmp is not None:
            shutil.rmtree(own_tmp, ignore_errors=True)

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

log = logging.getLogger(__name__)
LOCALHOST = "127.0.0.1"


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


LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Inside the block, a runtime started here listens on 127.0.0.1 only. Ray turns
    ``_node_ip_address="127.0.0.1"`` into the machine's routable address unless clusters are switched off (its
    switch for laptops, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when ray is imported: set for the workers
    it spawns, and on the already imported constant). Both are restored when the block ends."""
    from ray._private import ray_constants
    saved_env, saved_flag = os.environ.get(LOOPBACK_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOOPBACK_SWITCH, None)
        else:
            os.environ[LOOPBACK_SWITCH] = saved_env


def _join(address: str) -> bool:
    """Join the running cluster at ``address``; False when there is none."""
    import ray
    try:
        ray.init(address=address, log_to_driver=False)
        return True
    except (ConnectionError, RuntimeError, ValueError) as e:
        log.info("no Ray cluster at %s (%s); starting a local runtime", address, e)
        return False


@contextlib.contextmanager
def ray_session(address: str | None = None, temp_dir: str | os.PathLike | None = None,
                num_cpus: int | None = None) -> Iterator[dict]:
    """Yield ``ray.cluster_resources()`` inside a connected Ray runtime (see the module docstring)."""
    import ray
    address = address or "auto"
    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    if address != "local" and _join(address):
        log.info("Ray cluster at %s", address)
        yield ray.cluster_resources()  # a cluster it joined is left running
        return
    own_tmp = tempfile.mkdtemp(prefix="edgray") if temp_dir is None else None  # removed when the session ends
    with loopback_only():
        ray.init(num_cpus=num_cpus, _temp_dir=str(temp_dir or own_tmp), include_dashboard=False,
                 log_to_driver=False, _node_ip_address=LOCALHOST)
        log.info("local Ray runtime in %s", temp_dir or own_tmp)
        try:
            yield ray.cluster_resources()
        finally:
            ray.shutdown()
            if own_tmp is not None:
                shutil.rmtree(own_tmp, ignore_errors=True)

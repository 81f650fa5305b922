"""Connecting to Ray: which cluster, stated and safe.

``ray_session(address)`` is how EDG gets a Ray runtime. The cluster is chosen by ``choose_cluster``:

==============================================  ====================================================
inside a Ray job (``ray job submit``)           that job's cluster
``address`` given, or ``$RAY_ADDRESS`` set      that cluster; unreachable is a one-line ``RayClusterError``
``address="auto"``                              a head started on this machine (``ray start --head``);
                                                none is a one-line error
nothing (``None``) or ``address="local"``       a private local runtime, even when a head runs here
==============================================  ====================================================

EDG never joins a head it was not pointed at. The private runtime listens on 127.0.0.1 only
(``loopback_only``), has no dashboard unless asked (then on 127.0.0.1 too), keeps its session files under
``temp_dir`` (a fresh temporary folder by default, removed at the end) and uses token authentication with a
token of its own in that folder (``private_auth``): it never writes ``~/.ray`` and leaves Ray's settings for the
user's other programs as they were. A runtime it started is shut down when the ``with`` block ends; a cluster it
joined is left running. When a cluster's authentication does not match this process's, the error says in one line
what to set.

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

from edg.edg_core.errors import EDGError

log = logging.getLogger(__name__)
LOCALHOST = "127.0.0.1"
ADDRESS_HELP = ("Ray cluster to run on: host:port or ray://host:port, 'auto' for a head started on this machine, "
                "'local' for a private runtime (default: the Ray job's cluster, else $RAY_ADDRESS, else a private "
                "local runtime on 127.0.0.1; a head started by someone else is never joined unasked)")


class RayClusterError(EDGError):
    """The cluster EDG was pointed at cannot be used (unreachable, or its authentication does not match)."""


def in_ray_cluster_context() -> bool:
    """True inside a Ray job's driver (``ray job submit``) or when ``$RAY_ADDRESS`` names a cluster."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or os.environ.get("RAY_ADDRESS"))


def in_ray_job() -> bool:
    """True in the driver of a job started with ``ray job submit``."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def check_job_output(loc, what: str = "--out"):
    """Inside a Ray job, refuse a relative local output location: the job runs in a temporary copy of the
    submitted working directory (``.../runtime_resources/working_dir_files/_ray_pkg_...``), so its results
    would land there and vanish with the job instead of in the clone it was submitted from."""
    s = "" if loc is None else str(loc)
    if s and in_ray_job() and "://" not in s and not os.path.isabs(s):
        raise EDGError(f"{what} {s}: a relative path inside a Ray job lands in the job's temporary working "
                       f"directory, not where you submitted from; give an absolute path on storage every node "
                       f"sees (NFS, Lustre) or a URL (s3://, gs://, ...)")
    return loc


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


def choose_cluster(address: str | None) -> tuple[str | None, str]:
    """(address to join or None for a private local runtime, why) for a user's ``address`` setting."""
    if in_ray_job():
        return "auto", "inside a Ray job: its cluster"
    if address == "local":
        return None, "a private local runtime (--ray-address local)"
    if address:
        return address, f"the cluster at {address} (as asked)"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], f"the cluster at $RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
    return None, "a private local runtime (no --ray-address, no $RAY_ADDRESS)"


AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _auth_hint(address: str, error: Exception) -> str:
    """One line for a failed join: an authentication mismatch (named by Ray, or a head that listens but turns
    this process away) with what to set, else the address and Ray's first line."""
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    text = str(error).lower()
    if not ("token" in text or "authentic" in text or isinstance(error, ConnectionError)):
        return f"no Ray cluster reachable at {address}: {first}"
    return (f"Ray cluster at {address} refused this process ({first}); most likely its token authentication does "
            f"not match (here RAY_AUTH_MODE={os.environ.get('RAY_AUTH_MODE', 'unset')}): set RAY_AUTH_MODE=token "
            f"and RAY_AUTH_TOKEN_PATH=<the head's token file> (`ray get-auth-token` on the head prints it), or "
            f"RAY_AUTH_MODE=disabled if the head runs without")


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A TCP connect to ``host:port`` (or ``ray://host:port``) before ``ray.init``, which would retry an
    unreachable address for minutes; ``auto`` and other forms are left to Ray."""
    import socket
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise RayClusterError(f"no Ray cluster reachable at {address}: {e.strerror or e}") from None


def _join(address: str) -> None:
    """Join the running cluster at ``address``; a one-line ``RayClusterError`` when that cannot be done."""
    import ray
    from ray.exceptions import AuthenticationError
    _check_reachable(address)
    host = address.removeprefix("ray://").rpartition(":")[0].strip("[]")
    # a head bound to loopback: without the switch Ray rewrites 127.0.0.1 to this machine's address and waits
    # minutes for a GCS that does not listen there
    loopback = loopback_only() if host in ("127.0.0.1", "localhost", "::1") else contextlib.nullcontext()
    try:
        with loopback:
            ray.init(address=address, log_to_driver=False)
    except (AuthenticationError, ConnectionError, RuntimeError, ValueError) as e:
        raise RayClusterError(_auth_hint(address, e)) from None


@contextlib.contextmanager
def private_auth(folder: str | os.PathLike) -> Iterator[None]:
    """Inside the block, a runtime started here uses token authentication with a fresh token kept in ``folder``
    (``RAY_AUTH_TOKEN_PATH``), never ``~/.ray/auth_token``; workers it spawns inherit the setting. The
    environment is restored when the block ends."""
    import secrets
    saved = {k: os.environ.get(k) for k in AUTH_ENV}
    token = os.path.join(os.fspath(folder), "auth_token")
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)
    _refresh_ray_auth()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _refresh_ray_auth()


def _refresh_ray_auth() -> None:
    """Ray caches the authentication mode and token per process; make it read the environment again."""
    from ray._raylet import AuthenticationTokenLoader, Config
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def ray_session(address: str | None = None, temp_dir: str | os.PathLike | None = None,
                num_cpus: int | None = None, dashboard_port: int | None = None) -> Iterator[dict]:
    """Yield ``ray.cluster_resources()`` inside a connected Ray runtime (see the module docstring).
    ``dashboard_port``: a private runtime also runs the Ray dashboard there, on 127.0.0.1 (``edg serve``)."""
    import ray
    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    target, why = choose_cluster(address)
    if target is not None:
        _join(target)
        log.info("Ray: %s", why)
        yield ray.cluster_resources()  # a cluster it joined is left running
        return
    own_tmp = tempfile.mkdtemp(prefix="edgray") if temp_dir is None else None  # removed when the session ends
    folder = str(temp_dir or own_tmp)
    try:
        with loopback_only(), private_auth(folder):
            dashboard = {} if dashboard_port is None else {"dashboard_host": LOCALHOST,
                                                             "dashboard_port": dashboard_port}
            ray.init(num_cpus=num_cpus, _temp_dir=folder, include_dashboard=dashboard_port is not None,
                     log_to_driver=False, _node_ip_address=LOCALHOST, **dashboard)
            log.info("Ray: %s in %s", why, folder)
            try:
                yield ray.cluster_resources()
            finally:
                ray.shutdown()
    finally:
        if own_tmp is not None:
            shutil.rmtree(own_tmp, ignore_errors=True)

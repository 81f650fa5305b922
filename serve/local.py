"""``edg serve``'s runtime: Ray (``cluster.runtime.ray_session``), Serve on one address, the app, a clean stop.

Without ``ray_address`` the service runs on a private Ray runtime: 127.0.0.1 only, its own token, session files
in a temporary folder removed at the end, and (unless ``dashboard_port`` is None) the Ray dashboard on
127.0.0.1, where the Serve view shows the deployments, their request metrics and each replica's log (one line
per request). With ``ray_address`` it joins that cluster and deploys there; stopping deletes the application
and leaves the cluster (and Serve) running. Stopping is Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

from .config import APP_NAME, ServeConfig

log = logging.getLogger(__name__)


def wait_ready(url: str, deadline_s: float = 300.0, token: str | None = None) -> dict:
    """Poll ``GET {url}/v1/info`` until it answers 200 (or raise ``TimeoutError`` after ``deadline_s``)."""
    end = time.monotonic() + deadline_s
    last = "no answer yet"
    while time.monotonic() < end:
        req = urllib.request.Request(f"{url}/v1/info", headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except (OSError, ValueError) as e:
            last = str(e)
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {deadline_s:.0f} s ({last})")


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the service like Ctrl-C (a ``KeyboardInterrupt`` in the main thread)."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, ray_address: str | None = None,
        dashboard_port: int | None = 8265, num_cpus: int | None = None, token: str | None = None,
        say: Callable[[str], None] = print) -> None:
    """Serve ``cfg`` on ``http://host:port`` until Ctrl-C / SIGTERM, then stop what was started."""
    from edg.cluster.runtime import choose_cluster, ray_session
    from ray import serve

    from .app import build_app
    app = build_app(cfg.to_args())  # the args are checked before Ray starts
    private = choose_cluster(ray_address)[0] is None
    with _stop_on_sigterm(), ray_session(ray_address, num_cpus=num_cpus,
                                         dashboard_port=dashboard_port if private else None) as res:
        say(f"edg serve: Ray with {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs; starting Serve "
            "(about a minute on a small machine)")
        try:
            serve.start(http_options={"host": host, "port": port})
            serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
            shown = f"[{host}]" if ":" in host else host
            url = f"http://{shown if shown not in ('0.0.0.0', '[::]') else '127.0.0.1'}:{port}"
            info = wait_ready(url, token=token)
            model = info.get("model") or {}
            say(f"edg serve: ready at http://{shown}:{port}/ (model: {_model_line(model)}; "
                f"teacher: {'yes' if info.get('teacher') else 'no'}; cache: {_cache(cfg)})")
            import ray
            metrics = next((n.get("MetricsExportPort") for n in ray.nodes() if n.get("Alive")), None)
            if metrics and private:
                say(f"edg serve: Ray metrics (Prometheus text) at http://127.0.0.1:{metrics}/metrics")
            if dashboard_port is not None and private:
                say(f"edg serve: Ray dashboard at http://127.0.0.1:{dashboard_port}/ (Serve view: requests, "
                    f"metrics, replica logs); its token: {os.environ.get('RAY_AUTH_TOKEN_PATH', '-')}")
            say("edg serve: Ctrl-C stops it")
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            say("edg serve: stopping")
        finally:
            with contextlib.suppress(Exception):
                if private:
                    serve.shutdown()
                else:
                    serve.delete(APP_NAME)
    say("edg serve: stopped")


def _model_line(model: dict) -> str:
    if not model:
        return "none (/v1/predict answers 503)"
    return f"{model['name']} ({model.get('student') or 'student'}, trained on {model.get('trained_on') or '?'})"


def _cache(cfg: ServeConfig) -> str:
    from .jobs import ResultCache
    return str(ResultCache(cfg.cache).root)

"""``edg serve``'s predict latency and throughput on loopback, with and without dynamic batching.

A private Ray runtime on 127.0.0.1 runs the Serve application (``edg.serve.app.build_app``) with a model file;
``--concurrency`` clients (threads, one HTTP connection each) send ``--requests`` POST /v1/predict requests of
one embedded rMD17 ethanol frame each (JSON XYZ, the frames in turn). It runs twice: ``max_batch_size`` 32
(``@serve.batch`` gathers the frames of concurrent requests into one forward pass) and 1 (every frame alone).
Each run starts after ``--warmup`` requests. Prints p50/p99 latency and requests/s per run.

    python -m bench serve                                 # trains and exports a small SchNet first (~1-3 min)
    python -m bench serve --model=ethanol.pt2 --requests=300 --concurrency=8
"""
from __future__ import annotations

import http.client
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SMALL = {"hidden_channels": 32, "num_filters": 32, "num_interactions": 2, "num_gaussians": 25, "cutoff": 5.0}


def _parse(argv):
    opts = {"model": None, "requests": 300, "concurrency": 8, "warmup": 16, "batch": 32}
    for a in argv:
        if "=" in a:
            k, v = a.lstrip("-").split("=", 1)
            if k in opts:
                opts[k] = v if k == "model" else int(v)
        elif a == "--quick":
            opts["requests"] = 200
    return opts


def _model(folder: Path) -> Path:
    """A SchNet trained for 3 epochs on the embedded ethanol frames, exported (the cost of a request does not
    depend on how well it was trained)."""
    from edg.cluster.cli import main
    from edg.train.configs import FitConfig
    from edg.train.loops.distill import DistillConfig, run_distill
    cfg = DistillConfig(dataset="rmd17:ethanol?root=embedded", out=str(folder / "distill"), student_args=SMALL,
                        fit=FitConfig(epochs=3, lr=3e-3, batch_size=4, seed=1))
    run_distill(cfg)
    model = folder / "ethanol.pt2"
    if main(["export", str(folder / "distill" / cfg.run_name()), "--out", str(model)]) != 0:
        raise RuntimeError("edg export failed")
    return model


def _bodies() -> list[bytes]:
    from edg.edg_core.readers import open_source
    out = []
    for m in open_source("rmd17:ethanol?root=embedded").molecules():
        text = "\n".join([str(m.n_atoms), f"id={m.id}"] +
                         [f"{s} {x:.8f} {y:.8f} {w:.8f}" for s, (x, y, w) in zip(m.symbols, m.pos)]) + "\n"
        out.append(json.dumps({"xyz": text}).encode())
    return out


def _load(port: int, bodies: list[bytes], n: int, concurrency: int) -> tuple[list[float], float, int]:
    """(latencies in s, wall time in s, failures) of ``n`` requests from ``concurrency`` clients."""
    local = threading.local()
    counter = iter(range(n))
    lock = threading.Lock()

    def one(_):
        with lock:
            i = next(counter)
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        t = time.perf_counter()
        conn.request("POST", "/v1/predict", bodies[i % len(bodies)], {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        dt = time.perf_counter() - t
        ok = r.status == 200 and json.loads(data)["structures"][0]["energy"] is not None
        return dt, ok

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    return [dt for dt, _ in results], wall, sum(not ok for _, ok in results)


def run(opts) -> int:
    from edg.cluster.runtime import ray_session
    from edg.serve.app import build_app
    from edg.serve.config import ServeConfig
    from ray import serve
    with tempfile.TemporaryDirectory(prefix="edg-bench-serve-") as tmp:
        model = Path(opts["model"]) if opts["model"] else _model(Path(tmp))
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        bodies = _bodies()
        rc = 0
        with ray_session("local"):
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            try:
                for batch in (opts["batch"], 1):
                    cfg = ServeConfig(model=str(model.resolve()), cache=str(Path(tmp) / "cache"),
                                      max_batch_size=batch, render_cpus=0.0)
                    serve.run(build_app(cfg.to_args()), name="edg", route_prefix="/")
                    _load(port, bodies, opts["warmup"], opts["concurrency"])
                    lat, wall, failed = _load(port, bodies, opts["requests"], opts["concurrency"])
                    ms = np.array(lat) * 1000
                    label = f"max_batch_size {batch}" + (" (no batching)" if batch == 1 else " (batching)")
                    print(f"serve predict, {label}: {opts['requests']} requests of 1 ethanol frame, concurrency "
                          f"{opts['concurrency']}: p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} "
                          f"ms, {opts['requests'] / wall:.1f} requests/s ({wall:.1f} s)"
                          + (f", {failed} FAILED" if failed else ""), flush=True)
                    rc = max(rc, 1 if failed else 0)
            finally:
                serve.shutdown()
    return rc


def main(argv: list[str]) -> int:
    return run(_parse(argv))

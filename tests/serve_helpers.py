"""What the ``edg serve`` tests share: a trained and exported student, and the real ``edg serve`` command started
in a subprocess (a private Ray runtime on 127.0.0.1) that each test module starts once and stops at its end."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"hidden_channels": 32, "num_filters": 32, "num_interactions": 2, "num_gaussians": 25, "cutoff": 5.0}
ETHANOL_TEST = "rmd17:ethanol?split=test&root=embedded"
WATER_XYZ = "3\nwater\nO 0.000000 0.000000 0.117300\nH 0.000000 0.757200 -0.469200\nH 0.000000 -0.757200 -0.469200\n"
START_DEADLINE_S = 900  # Serve's start-up on a loaded 2-core machine: usually under a minute
JOB_DEADLINE_S = 900


def exported_model(tmp_path_factory) -> tuple[Path, Path]:
    """A SchNet trained briefly on the embedded rMD17 ethanol frames and exported by ``edg export RUN --out MODEL``:
    (model file, run folder).
    Made once per test session (both serve test modules use it; about 2 minutes on the loaded 2-core box)."""
    from edg.cluster.cli import main
    from edg.train.configs import FitConfig
    from edg.train.loops.distill import DistillConfig, run_distill
    folder = tmp_path_factory.getbasetemp() / "serve-model"
    cfg = DistillConfig(dataset="rmd17:ethanol?root=embedded", out=str(folder / "distill"), student_args=SMALL,
                        fit=FitConfig(epochs=40, lr=3e-3, batch_size=4, seed=1))
    run, model = folder / "distill" / cfg.run_name(), folder / "ethanol.pt2"
    if not model.is_file():
        run_distill(cfg)
        assert main(["export", str(run), "--out", str(model)]) == 0
    return model, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``edg serve`` in a subprocess: ``url``, ``call(method, path, body)``, ``output()`` and ``stop()``."""

    def __init__(self, args: list[str], log: Path, token: str | None = None):
        self.port, self.token, self.log = free_port(), token, log
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "EDG_PROGRESS": "0"}
        env.pop("RAY_ADDRESS", None)
        self._out = open(log, "w")
        cmd = [sys.executable, "-m", "edg.cluster.cli", "serve", "--port", str(self.port), "--no-dashboard", *args]
        if token:
            cmd += ["--token", token]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, deadline_s: float = START_DEADLINE_S) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"edg serve exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            if "edg serve: ready at" in self.output():
                return
            time.sleep(0.5)
        raise TimeoutError(f"edg serve not ready after {deadline_s} s:\n{self.output()[-4000:]}")

    def call(self, method: str, path: str, body=None, token: str | None = "default", content_type=None,
             timeout: float = 300) -> tuple[int, dict]:
        """(status, JSON answer) of one request; ``body``: a dict (JSON), str or bytes (sent as is)."""
        token = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if isinstance(body, dict) or isinstance(body, list):
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif body is not None:
            data = body.encode() if isinstance(body, str) else body
            headers["Content-Type"] = content_type or "text/plain"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_job(self, job_id: str, deadline_s: float = JOB_DEADLINE_S) -> tuple[dict, list[dict]]:
        """The finished job's answer and the states seen on the way (polled every 0.5 s)."""
        seen, end = [], time.monotonic() + deadline_s
        while time.monotonic() < end:
            status, state = self.call("GET", f"/v1/jobs/{job_id}")
            assert status == 200, state
            if state["status"] in ("done", "failed"):
                return state, seen
            seen.append(state)
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} not finished after {deadline_s} s; last state {seen[-1:]}")

    def ray_folder(self) -> Path:
        """The private Ray runtime's session folder (named in the command's log)."""
        found = re.search(r"private local runtime .* in (\S+)", self.output())
        assert found, self.output()[-2000:]
        return Path(found.group(1))

    def stop(self, deadline_s: float = 300) -> int:
        """Ctrl-C (SIGINT) and wait for the command to stop by itself; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(deadline_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(60)
        self._out.close()
        return self.proc.returncode

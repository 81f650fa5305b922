"""`ray job submit --working-dir . -- edg ...` against a head started here with `ray start --head`, with
`ray job status` and `ray job logs`: the way EDG runs on a cluster (docs/cluster.md)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _head(extra_args: list[str], env: dict, ready: Callable[[], bool], what: str):
    """A `ray start --head --block` on 127.0.0.1 (the loopback switch EDG's own runtime uses,
    cluster.runtime.loopback_only), its session under a fresh short temp folder, ``ready()`` polled until the
    head answers; stopped by signalling its process group, which takes down only this head's processes."""
    if not Path(RAY).exists():
        pytest.skip(f"ray CLI not found at {RAY}")
    tmp = tempfile.mkdtemp(prefix="edgj")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **env}
    head = subprocess.Popen([RAY, "start", "--head", "--block", "--num-cpus=2", "--node-ip-address=127.0.0.1",
                             f"--temp-dir={tmp}/t", "--disable-usage-stats", *extra_args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 600  # a loaded machine starts a head in minutes; one that died fails at once
        while not ready():
            if head.poll() is not None:
                pytest.fail("ray start --head exited early")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not come up within 600 s")
            time.sleep(1)
        yield tmp
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def _answers(probe: Callable[[], object]) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            probe()
            return True
        except OSError:
            return False
    return ready


@pytest.fixture
def ray_head():
    """A Ray head with its dashboard (the job server) on 127.0.0.1, without token authentication (Ray turns it
    on by itself when ~/.ray/auth_token exists; clients below say the same), so the test does not depend on the
    machine's home folder. Yields the dashboard URL."""
    port, dash = _free_port(), _free_port()
    url = f"http://127.0.0.1:{dash}"
    with _head([f"--port={port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}"], {"RAY_AUTH_MODE": "disabled"},
               _answers(lambda: urllib.request.urlopen(f"{url}/api/version", timeout=2)), "the Ray dashboard"):
        yield url


def test_ray_job_submit_runs_edg_and_reports_status_and_logs(ray_head, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ray_head, "RAY_AUTH_MODE": "disabled"}
    out = tmp_path / "shards"
    submit = subprocess.run(
        [RAY, "job", "submit", "--working-dir", str(ROOT), "--submission-id", "edg-test-convert", "--",
         sys.executable, "-m", "edg.cluster.cli", "data", "convert", "--input", "embedded:qm9?limit=5",
         "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300)
    assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-2000:]
    # the job's own output, streamed back by `ray job submit`: inside a Ray job the stage runs on the cluster's
    # actors without being told (the job sets RAY_ADDRESS), and says so
    assert "Ray actors" in submit.stdout and "convert: done 5, skipped 0, failed 0" in submit.stdout
    status = subprocess.run([RAY, "job", "status", "edg-test-convert"], capture_output=True, text=True, env=env)
    assert "succeeded" in (status.stdout + status.stderr).lower() and status.returncode == 0
    logs = subprocess.run([RAY, "job", "logs", "edg-test-convert"], capture_output=True, text=True, env=env)
    assert "convert: done 5" in logs.stdout
    assert len(list(out.glob("*.tar"))) == 1
    assert f"edg data: results in {out}" in submit.stdout  # where the results are, absolute


def _job_output(sid: str, streamed: str, env: dict, want: str) -> str:
    """A finished job's output: what `ray job submit` streamed, plus `ray job logs` until ``want`` is in it. On a
    loaded machine the stream can close before the job's last lines reach it, and the log file can lag behind
    the job's end; there is no event to wait on, so the logs are polled (600 s, only to stop a hang)."""
    text, deadline = streamed, time.monotonic() + 600
    while want not in text and time.monotonic() < deadline:
        logs = subprocess.run([RAY, "job", "logs", sid], capture_output=True, text=True, env=env, timeout=600)
        text = streamed + "\n" + logs.stdout
        if want not in text:
            time.sleep(1)
    return text


def test_edg_dft_in_a_ray_job_refuses_a_relative_out_and_names_where_an_absolute_one_landed(ray_head, tmp_path):
    """Inside a job, `--out runs/x` would land in Ray's temporary copy of the working directory: refused in one
    line; with an absolute --out the results are there and the job's output says so."""
    env = {**os.environ, "RAY_ADDRESS": ray_head, "RAY_AUTH_MODE": "disabled"}
    dft = [sys.executable, "-m", "edg.cluster.cli", "dft", "--input", "embedded:qm9?limit=2", "--basis", "sto-3g",
           "--grid-level", "1", "--no-fields"]

    def submit(sid, out):
        return subprocess.run([RAY, "job", "submit", "--working-dir", str(ROOT), "--submission-id", sid, "--",
                               *dft, "--out", out], capture_output=True, text=True, env=env, timeout=900)
    refused = submit("edg-test-relative", "runs/relative")
    assert refused.returncode != 0
    text = _job_output("edg-test-relative", refused.stdout, env, "edg dft: error:")
    errors = sorted({line for line in text.splitlines() if "error:" in line})
    assert errors == ["edg dft: error: --out runs/relative: a relative path inside a Ray job lands in the job's "
                      "temporary working directory, not where you submitted from; give an absolute path on storage "
                      "every node sees (NFS, Lustre) or a URL (s3://, gs://, ...)"], text[-3000:] + refused.stderr[-99:]
    out = tmp_path / "dft"
    done = submit("edg-test-absolute", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = _job_output("edg-test-absolute", done.stdout, env, "edg dft: results in")
    assert "dft: done 2, skipped 0, failed 0" in text and f"edg dft: results in {out}" in text, text[-3000:]
    assert len(list(out.glob("fields/*/*.npz"))) == 2


def test_a_head_started_outside_edg_is_not_joined_without_an_address(ray_head, tmp_path):
    """Someone's `ray start --head` on this machine: `edg dft --actors 1` with no --ray-address and no
    $RAY_ADDRESS runs on a private loopback runtime and says so; it joins the head only when asked."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    env.update(HOME=str(tmp_path), EDG_PROGRESS="0")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "edg.cluster.cli", "dft", "--input", "embedded:qm9?limit=2",
                        "--out", str(out), "--actors", "1", "--basis", "sto-3g", "--grid-level", "1", "--no-fields"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Ray: a private local runtime (no --ray-address, no $RAY_ADDRESS)" in r.stderr
    assert "dft: done 2, skipped 0, failed 0" in r.stdout
    assert not (tmp_path / ".ray").exists()


@pytest.fixture
def token_head(tmp_path):
    """A head with token authentication on 127.0.0.1, its token in a file of the test's: yields (GCS address,
    token file)."""
    token = tmp_path / "head-token"
    token.write_text("0123456789abcdef" * 4)
    port = _free_port()
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "HOME": str(tmp_path)}
    with _head([f"--port={port}", "--include-dashboard=false"], env,
               _answers(lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close()), "the GCS"):
        yield f"127.0.0.1:{port}", token


def test_a_token_mismatch_is_one_line_saying_what_to_set(token_head, tmp_path):
    """Joining a head with token authentication: without the token, one EDG line naming what to set (after Ray's
    own warnings); with RAY_AUTH_TOKEN_PATH, the stage runs there. A loopback head is joined on loopback."""
    address, token = token_head
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    cmd = [sys.executable, "-m", "edg.cluster.cli", "data", "convert", "--input", "embedded:qm9?limit=1",
           "--actors", "1", "--ray-address", address]
    r = subprocess.run([*cmd, "--out", str(tmp_path / "a")], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env={**base, "HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled"})
    assert r.returncode == 2
    edg_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("edg ")]
    assert len(edg_lines) == 1 and "token authentication does not match" in edg_lines[0]
    assert "RAY_AUTH_TOKEN_PATH" in edg_lines[0]
    r = subprocess.run([*cmd, "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env={**base, "HOME": str(tmp_path), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "convert: done 1, skipped 0, failed 0" in r.stdout

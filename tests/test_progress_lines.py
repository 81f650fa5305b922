"""Progress everywhere: a stage run whose output is not a terminal (a pipe, a log, a Ray job's log) prints
done/failed/total, rate and ETA lines, the last one reaching the total."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from edg.cluster.metrics import StageProgress

ROOT = Path(__file__).resolve().parent.parent


def test_a_progress_line_counts_done_failed_and_skipped_against_the_total():
    p = StageProgress("dft", total=4, lines=False)
    p.update(done=2)
    p.update(failed=1)
    line = p.line()
    assert line.startswith("[dft] 3/4 molecules (75%): done 2, failed 1, skipped 0, ")
    assert re.search(r"molecules/s, ETA \d+ s$", line)
    p.update(skipped=1)
    assert p.line().startswith("[dft] 4/4 molecules (100%)")


def test_edg_dft_piped_prints_progress_lines_reaching_the_total(tmp_path):
    env = {**os.environ, "EDG_PROGRESS_EVERY_S": "0", "OMP_NUM_THREADS": "1"}
    env.pop("EDG_PROGRESS", None)
    r = subprocess.run([sys.executable, "-m", "edg.cluster.cli", "dft", "--input", "embedded:qm9?limit=3",
                        "--out", str(tmp_path / "run"), "--actors", "0", "--basis", "sto-3g", "--grid-level", "1",
                        "--no-fields"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("[dft] ")]  # stdout keeps the results
    assert len(lines) >= 2 and lines[-1].startswith("[dft] 3/3 molecules (100%): done 3, failed 0")
    counts = [int(re.match(r"\[dft\] (\d+)/3", ln).group(1)) for ln in lines]
    assert counts == sorted(counts)  # never goes back


@pytest.mark.ray
def test_the_stage_metrics_reach_the_nodes_metrics_endpoint(tmp_path):
    """What the Ray dashboard's Metrics view (Prometheus) scrapes: after `edg data convert --actors 1` the node's
    metrics endpoint reports edg_molecules_done for the stage, with the count the stage finished."""
    import tempfile

    session = tempfile.mkdtemp(prefix="edgm")  # Ray's socket paths must stay short
    try:
        _convert_and_scrape(session, tmp_path)
    finally:
        shutil.rmtree(session, ignore_errors=True)


def _convert_and_scrape(session, tmp_path):
    import time
    import urllib.request

    import ray
    from edg.cluster.cli import main
    from edg.cluster.runtime import ray_session
    with ray_session("local", temp_dir=session, num_cpus=2):
        assert main(["data", "convert", "--input", "embedded:qm9?limit=3", "--out", str(tmp_path / "shards"),
                     "--actors", "1"]) == 0
        port = ray.nodes()[0]["MetricsExportPort"]
        pattern = re.compile(r'^ray_edg_molecules_done_total\{[^}]*stage="convert"[^}]*\} (\S+)$', re.M)
        deadline, found = time.monotonic() + 300, None  # the agent exports every few seconds; generous on load
        while found is None and time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
            except OSError:  # the agent not listening yet, or slow to answer on a loaded machine: ask again
                text = ""
            found = pattern.search(text)
            if found is None:
                time.sleep(1)
        assert found is not None, "edg_molecules_done never reached the metrics endpoint"
        assert float(found.group(1)) == 3.0


def test_on_a_terminal_the_bar_advances_as_items_finish(tmp_path):
    """EDG_PROGRESS=1 forces the terminal's bar: it counts finished items against the total, failures shown."""
    env = {**os.environ, "EDG_PROGRESS": "1"}
    r = subprocess.run([sys.executable, "-m", "edg.cluster.cli", "data", "convert", "--input", "embedded:qm9?limit=3",
                        "--out", str(tmp_path / "shards")], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stderr.replace("\r", "\n").strip().splitlines()
    bar = [ln for ln in last if ln.startswith("convert:")][-1]
    assert "3/3" in bar and "failed=0" in bar and "done=3" in bar
    assert not any(ln.startswith("[convert]") for ln in last)  # a bar, not lines

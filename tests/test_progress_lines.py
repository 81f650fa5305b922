"""Progress everywhere: a stage run whose output is not a terminal (a pipe, a log, a Ray job's log) prints
done/failed/total, rate and ETA lines, the last one reaching the total."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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

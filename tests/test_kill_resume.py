"""Kill ``edg dft`` many times (at random moments and right when a result file is being written), rerun until it
finishes, and compare with an uninterrupted run: every result exactly once and bit-identical, no temporary file
left, one failure-manifest entry per failed record (issue 12)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

EDG = [sys.executable, "-c", "import sys; from cluster.cli import main; sys.exit(main(sys.argv[1:]))"]
DFT = ["dft", "--local", "--basis", "sto-3g", "--grid-level", "0", "--conv-tol", "1e-7"]
VOLATILE = ("wall_s", "timings")  # seconds measured by the run, the only fields allowed to differ


def _input(path: Path, n_h2: int = 20) -> None:
    frames = [f"2\nid=h2-{i:02d}\nH 0 0 0\nH 0 0 {0.64 + 0.01 * i:.2f}\n" for i in range(n_h2)]
    frames.insert(5, "2\nid=collapsed\nH 0 0 0\nH 0 0 0.01\n")  # fails in DFT (bad geometry)
    frames.insert(9, "2\nid=unreadable\nH 0 0 0\nH 0 0 0.7\nH 0 0 1.4\n")  # fails in the reader
    frames.append("3\nid=water\nO 0.0 0.0 0.117\nH 0.0 0.757 -0.467\nH 0.0 -0.757 -0.467\n")
    path.write_text("".join(frames))


def _start(inp: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDG_PROGRESS": "0", "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([*EDG, *DFT, "--input", str(inp), "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _temps(out: Path) -> list[Path]:
    return [Path(d) / f for d, _, fs in os.walk(out) for f in fs if f.endswith(".tmp")]


def _result(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "meta"}
        meta = json.loads(str(f["meta"]))
    return {"arrays": arrays, "meta": {k: v for k, v in meta.items() if k not in VOLATILE}}


def _results(out: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for p in (out / "fields").rglob("*.npz"):
        found.setdefault(p.stem, []).append(p)
    return found


@pytest.mark.slow
def test_kill_and_resume_loop(tmp_path):
    inp = tmp_path / "mols.xyz"
    _input(inp)
    ref = tmp_path / "ref"
    p = _start(inp, ref)
    t0 = time.monotonic()
    assert p.wait(timeout=600) == 0, p.stderr.read()
    full_s = time.monotonic() - t0

    out = tmp_path / "killed"
    rng = random.Random(12)
    kills = kills_in_write = runs = 0
    while True:
        runs += 1
        assert runs < 80, "the run never finished"
        p = _start(inp, out)
        in_write = rng.random() < 0.5
        deadline = time.monotonic() + (600 if in_write else rng.uniform(0.2, full_s))
        killed = False
        while p.poll() is None and time.monotonic() < deadline:
            if in_write and _temps(out):  # a result (or manifest) file is being written right now
                break
            time.sleep(0.0005 if in_write else 0.01)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            killed = True
            kills += 1
            kills_in_write += bool(_temps(out))
        else:
            assert p.returncode == 0, p.stderr.read()
        if not killed:
            break

    got, want = _results(out), _results(ref)
    duplicates = sum(len(v) - 1 for v in got.values())
    temps = _temps(out)
    manifest = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines() if x.strip()]
    keys = [e["key"] for e in manifest]
    print(f"\nkill-and-resume: {runs} runs, {kills} kills ({kills_in_write} with a temp file on disk), "
          f"{len(got)} results (reference {len(want)}), {duplicates} duplicate results, {len(temps)} temp files "
          f"left, {len(keys) - len(set(keys))} duplicate manifest entries; uninterrupted run {full_s:.1f} s")
    assert kills >= 10 and kills_in_write >= 3
    assert sorted(got) == sorted(want) and len(got) == 21 and duplicates == 0
    for key, (path,) in got.items():
        a, b = _result(path), _result(want[key][0])
        assert a["meta"] == b["meta"], key
        assert a["arrays"].keys() == b["arrays"].keys() and \
            all(np.array_equal(a["arrays"][k], b["arrays"][k]) and a["arrays"][k].dtype == b["arrays"][k].dtype
                for k in a["arrays"]), key
    assert temps == []
    assert sorted(keys) == ["collapsed", "unreadable"]

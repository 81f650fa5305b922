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

EDG = [sys.executable, "-c", "import sys; from edg.cluster.cli import main; sys.exit(main(sys.argv[1:]))"]
DFT = ["dft", "--local", "--basis", "sto-3g", "--grid-level", "0", "--conv-tol", "1e-7"]
VOLATILE = ("wall_s", "timings")  # seconds measured by the run, the only fields allowed to differ


def _input(path: Path, n_h2: int = 24) -> None:
    frames = [f"2\nid=h2-{i:02d}\nH 0 0 0\nH 0 0 {0.64 + 0.01 * i:.2f}\n" for i in range(n_h2)]
    frames.insert(5, "2\nid=collapsed\nH 0 0 0\nH 0 0 0.01\n")  # refused by the reader (coincident atoms)
    frames.insert(12, "2\nid=unreadable\nH 0 0 0\nH 0 0 0.7\nH 0 0 1.4\n")  # fails in the reader
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
    assert p.wait(timeout=3600) == 0, p.stderr.read()
    full_s = time.monotonic() - t0

    out = tmp_path / "killed"
    rng = random.Random(12)
    kills = kills_in_write = runs = 0
    while True:
        runs += 1
        assert runs < 150, "the run never finished"
        left = set(_temps(out))  # what the previous kill left (this run removes it at start)
        p = _start(inp, out)
        # how this run ends: killed as soon as a result file is being written, after 1-2 new results (plus a few
        # ms), or at a random moment (start-up and reading included)
        mode = ("write", "results", "write", "random")[runs % 4]
        before = len(list((out / "fields").rglob("*.npz"))) if out.exists() else 0
        quota = before + rng.randint(1, 2)
        deadline = time.monotonic() + (rng.uniform(0.2, 0.7 * full_s) if mode == "random" else 600)
        while p.poll() is None and time.monotonic() < deadline:
            if mode == "write" and set(_temps(out / "fields")) - left:  # a result file is being written now
                break
            if mode == "results" and out.exists() and len(list((out / "fields").rglob("*.npz"))) >= quota:
                time.sleep(rng.uniform(0, 0.05))
                break
            time.sleep(0.0005 if mode == "write" else 0.005)
        killed = False
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            killed = True
            kills += 1
            kills_in_write += bool(set(_temps(out / "fields")) - left)
        else:
            assert p.returncode == 0, p.stderr.read()
        if not killed:
            break

    got, want = _results(out), _results(ref)
    duplicates = sum(len(v) - 1 for v in got.values())
    temps = _temps(out)
    manifest = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines() if x.strip()]
    keys = [e["key"] for e in manifest]
    print(f"\nkill-and-resume: {runs} runs, {kills} kills ({kills_in_write} while a result file was being written), "
          f"{len(got)} results (reference {len(want)}), {duplicates} duplicate results, {len(temps)} temp files "
          f"left, {len(keys) - len(set(keys))} duplicate manifest entries; uninterrupted run {full_s:.1f} s")
    assert kills >= 10 and kills_in_write >= 5
    assert sorted(got) == sorted(want) and len(got) == 25 and duplicates == 0
    for key, (path,) in got.items():
        a, b = _result(path), _result(want[key][0])
        assert a["meta"] == b["meta"], key
        assert a["arrays"].keys() == b["arrays"].keys() and \
            all(np.array_equal(a["arrays"][k], b["arrays"][k]) and a["arrays"][k].dtype == b["arrays"][k].dtype
                for k in a["arrays"]), key
    assert temps == []
    assert sorted(keys) == ["collapsed", "unreadable"]


@pytest.mark.slow
def test_kill_and_resume_loop_convert(tmp_path):
    """The same for ``edg data convert`` (2000 records) into shards of 100 samples: killed while shards are
    written, every sample ends up in exactly one finished shard."""
    import tarfile
    frames = [f"2\nid=m{i:05d}\nH 0 0 0\nH 0 0 {0.5 + i * 1e-4:.5f}\n" for i in range(2000)]
    frames.insert(100, "2\nid=bad1\nH 0 0 0\n")
    frames.insert(1000, "1\nid=bad2\nXx 0 0 0\n")
    inp = tmp_path / "big.xyz"
    inp.write_text("".join(frames))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDG_PROGRESS": "0", "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("RAY_ADDRESS", None)

    def start(out):
        return subprocess.Popen([*EDG, "data", "convert", "--input", str(inp), "--out", str(out), "--maxcount",
                                 "100"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    assert start(tmp_path / "ref").wait(timeout=3600) == 0
    full_s = time.monotonic() - t0
    out, rng, kills, runs = tmp_path / "killed", random.Random(3), 0, 0
    while True:
        runs += 1
        assert runs < 150
        shards = len(list(out.glob("*.tar"))) if out.exists() else 0
        p = start(out)
        # killed after 1-2 more finished shards (the next one is being written then), or at a random moment
        mode = ("shards", "random", "shards")[runs % 3]
        quota = shards + rng.randint(1, 2)
        deadline = time.monotonic() + (rng.uniform(0.3, 0.7 * full_s) if mode == "random" else 600)
        while p.poll() is None and time.monotonic() < deadline:
            if mode == "shards" and len(list(out.glob("*.tar"))) >= quota:
                break
            time.sleep(0.002)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            continue
        assert p.returncode == 0, p.stderr.read()
        break

    def keys(folder):
        per_shard = []
        for shard in sorted(folder.glob("*.tar")):
            with tarfile.open(shard) as t:
                per_shard.append({m.name.partition(".")[0] for m in t.getmembers()})
        return per_shard
    got, want = keys(out), keys(tmp_path / "ref")
    all_got = [k for s in got for k in s]
    manifest = [json.loads(x)["key"] for x in (out / "failures.jsonl").read_text().splitlines() if x.strip()]
    print(f"\nconvert kill-and-resume: {runs} runs, {kills} kills, {len(set(all_got))} samples in {len(got)} shards, "
          f"{len(all_got) - len(set(all_got))} duplicates, {len(_temps(out))} temp files left, "
          f"{len(manifest) - len(set(manifest))} duplicate manifest entries")
    assert kills >= 8
    assert len(all_got) == len(set(all_got)) == 2000 and set(all_got) == set().union(*want)
    assert _temps(out) == [] and sorted(manifest) == ["bad1", "bad2"]
    # every finished shard has its key index, which holds the shard's keys; no index outlives its shard
    from edg.edg_core.shards import indexed_keys
    shards = sorted(out.glob("*.tar"))
    assert sorted(p.name for p in out.glob("*.keys")) == [f"{p.name}.keys" for p in shards]
    assert [indexed_keys(str(p)) for p in shards] == got

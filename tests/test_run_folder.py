"""The run folder (edg_core.run_folder): clobber refusals before any work, the marker, older runs recognised by
their content, the single-writer lease (refusal naming the holder, takeover of an expired or dead holder, on a
local folder and on fsspec URLs), two real ``edg render`` processes on one --out, and no import circle in
edg_core."""
from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from edg.edg_core.lease import LEASE_NAME, LeaseHeld, LeaseHolder
from edg.edg_core.run_folder import MARKER, LeaseSettings, RunFolder, RunFolderRefused

ROOT = Path(__file__).resolve().parent.parent
EDG = [sys.executable, "-m", "edg.cluster.cli"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A stand-in home folder (Path.home() reads $HOME): the tests never touch the user's."""
    h = tmp_path / "home" / "me"
    h.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(h))
    return h


def stale_lease(host: str = "node-that-died", pid: int = 4242, age_s: float = 3600.0, expiry_s: float = 90.0):
    t = time.time() - age_s
    return LeaseHolder(host, pid, t - 10, t, "deadbeef", expiry_s).to_bytes()


# ---------------------------------------------------------------- refusals
def test_root_and_home_are_refused_before_anything_is_written(home, tmp_path):
    for where, what in (("/", "file-system root"), (str(home), "home folder"), (str(home.parent), "above it")):
        with pytest.raises(RunFolderRefused, match=what) as e:
            RunFolder.open(where, overwrite=True)  # --overwrite never allows these
        assert str(e.value).startswith(f"{where}: ") and "\n" not in str(e.value)
    assert sorted(os.listdir(home)) == []


def test_a_non_empty_folder_that_is_not_a_run_is_refused_unless_overwrite(tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    with pytest.raises(RunFolderRefused, match="not empty and not an EDG run.*chapter1.tex.*--overwrite"):
        RunFolder.open(mine)
    assert sorted(os.listdir(mine)) == ["chapter1.tex"]  # no marker, no lease: nothing written
    with RunFolder.open(mine, overwrite=True) as run:
        assert (mine / LEASE_NAME).exists()
    assert sorted(os.listdir(mine)) == ["chapter1.tex", MARKER]  # marked a run now; the lease is gone
    assert json.loads((mine / MARKER).read_text())["edg_run"] == 1
    RunFolder.open(mine).close()  # a marked run reopens without --overwrite
    assert run.lease is None


@pytest.mark.parametrize("content", ["stages", "fields", "shards", "failures.jsonl", "progress.json",
                                     "config.yaml", "render-000003.tar"])
def test_run_folders_of_older_edg_without_a_marker_still_open(tmp_path, content):
    old = tmp_path / "old-run"
    old.mkdir()
    (old / content).mkdir() if "." not in content else (old / content).write_text("")
    (old / "notes.txt").write_text("")
    RunFolder.open(old).close()
    assert (old / MARKER).exists()


def test_the_cli_refuses_root_and_a_parent_full_of_other_files_in_one_line(tmp_path, monkeypatch, capsys):
    from edg.cluster.cli import main
    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    (tmp_path / "project" / "paper.pdf").write_text("")
    monkeypatch.chdir(work)
    for out, expect in (("/", "/: refusing to write a run into the file-system root"),
                        ("..", "..: not empty and not an EDG run (holds paper.pdf, work)")):
        rc = main(["render", "--input", "embedded:qm9?limit=1", "--out", out, "--image-size", "16"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and expect in err, err
    assert sorted(os.listdir(tmp_path / "project")) == ["paper.pdf", "work"] and not os.listdir(work)


# ---------------------------------------------------------------- the lease
def test_a_second_writer_is_refused_naming_the_holder_and_may_follow_once_released(tmp_path):
    run = RunFolder.open(tmp_path / "out")
    holder = LeaseHolder.from_bytes((tmp_path / "out" / LEASE_NAME).read_bytes())
    assert (holder.host, holder.pid) == (socket.gethostname(), os.getpid())
    with pytest.raises(LeaseHeld) as e:
        RunFolder.open(tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and f"host {socket.gethostname()}, pid {os.getpid()}, started " in msg
    run.close()
    assert not (tmp_path / "out" / LEASE_NAME).exists()
    RunFolder.open(tmp_path / "out").close()


def test_the_lease_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with RunFolder.open(tmp_path / "out"):
            raise ZeroDivisionError
    assert not (tmp_path / "out" / LEASE_NAME).exists()


def test_an_expired_heartbeat_is_taken_over_and_the_run_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / LEASE_NAME).write_bytes(stale_lease(age_s=100, expiry_s=90))
    with RunFolder.open(out) as run:
        assert "took over the lease of host node-that-died, pid 4242" in run.lease.took_over
        assert "last heartbeat was 100 s ago (expiry 90 s)" in run.lease.took_over
        assert LeaseHolder.from_bytes((out / LEASE_NAME).read_bytes()).pid == os.getpid()
    assert "[lease]" in capsys.readouterr().out
    # a heartbeat younger than the expiry is a live holder on another node: refused
    (out / LEASE_NAME).write_bytes(stale_lease(age_s=10, expiry_s=90))
    with pytest.raises(LeaseHeld, match="host node-that-died, pid 4242"):
        RunFolder.open(out)


def test_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / LEASE_NAME).write_bytes(stale_lease(host=socket.gethostname(), pid=gone.pid, age_s=0))
    with RunFolder.open(out) as run:
        assert "its process no longer runs on this host" in run.lease.took_over


def test_the_heartbeat_refreshes_and_notices_a_takeover(tmp_path):
    run = RunFolder.open(tmp_path / "out", lease=LeaseSettings(heartbeat_s=3600))
    lease_file = tmp_path / "out" / LEASE_NAME
    before = LeaseHolder.from_bytes(lease_file.read_bytes())
    run.lease.beat()
    after = LeaseHolder.from_bytes(lease_file.read_bytes())
    assert after.heartbeat > before.heartbeat and after.token == before.token and after.started == before.started
    lease_file.write_bytes(stale_lease(host="other-node", age_s=0))  # someone took it over meanwhile
    run.lease.beat()
    assert "taken over by host other-node" in run.lease.lost
    run.close()
    assert lease_file.exists()  # the other run's lease is left alone


@pytest.mark.parametrize("scheme", ["memory", "local"])
def test_the_lease_on_an_fsspec_url_refuses_a_live_holder_and_takes_over_an_expired_one(tmp_path, scheme):
    import fsspec
    url = f"memory://edg-test-lease/{tmp_path.name}" if scheme == "memory" else f"local://{tmp_path}/bucket"
    fs, root = fsspec.core.url_to_fs(url)
    with RunFolder.open(url) as run:
        assert fs.exists(f"{root}/{LEASE_NAME}") and fs.exists(f"{root}/{MARKER}")
        with pytest.raises(LeaseHeld, match=f"{url}: another EDG run is writing here"):
            RunFolder.open(url)
        assert run.remote
        run.pull()  # the working copy gets the marker, never the lease (a stale copy pushed back would clobber it)
        assert (run.local / MARKER).exists() and not (run.local / LEASE_NAME).exists()
    assert not fs.exists(f"{root}/{LEASE_NAME}")
    fs.pipe_file(f"{root}/{LEASE_NAME}", stale_lease(age_s=1000))
    with RunFolder.open(url) as run:
        assert "took over the lease of host node-that-died" in run.lease.took_over
    if scheme == "memory":
        fs.rm(root, recursive=True)


def test_a_file_url_is_the_local_folder(tmp_path):
    with RunFolder.open(f"file://{tmp_path}/out") as run:
        assert not run.remote and (tmp_path / "out" / LEASE_NAME).exists()
        with pytest.raises(LeaseHeld):
            RunFolder.open(tmp_path / "out")


# ---------------------------------------------------------------- two real edg render processes
def test_two_edg_render_runs_on_one_out_the_second_is_refused_and_the_first_finishes_whole(tmp_path):
    out = tmp_path / "render"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDG_PROGRESS": "0"}
    n = 24
    args = ["render", "--input", f"embedded:qm9?limit={n}", "--out", str(out), "--image-size", "16", "--local"]
    first = subprocess.Popen(EDG + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lease = out / LEASE_NAME
    deadline = time.monotonic() + 300
    while not lease.exists():  # the event: the first run holds the lease
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first run never took the lease"
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)  # hold it there while the second starts: no race with its finish
    try:
        assert lease.exists(), "the first run finished before it could be held"
        second = subprocess.run(EDG + args, env=env, capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, second.stderr
    err = second.stderr.strip()
    assert err.count("\n") == 0, err
    assert f"another EDG run is writing here (host {socket.gethostname()}, pid {first.pid}, started" in err
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    from edg.edg_core.shards import read_samples
    ids = [d["meta"]["id"] for d in read_samples(out, torch_tensors=False)]
    assert len(ids) == len(set(ids)) == n
    assert not lease.exists()


# ---------------------------------------------------------------- no import circle in edg_core
def _imports(path: Path, package: str) -> set[str]:
    """The edg_core modules ``path`` imports anywhere (top level or inside functions)."""
    tree = ast.parse(path.read_text())
    here = package.split(".")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [f"{mod}.{a.name}" for a in node.names] + [mod]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for n in names:
            n = n.removeprefix("edg.")
            if n.startswith("edg_core."):
                found.add(n)
    return found


def test_no_import_circle_in_edg_core():
    core = ROOT / "edg_core"
    modules = {}
    for p in core.rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        pkg = name if rel.name == "__init__" else ".".join(rel.parts[:-1])
        modules[name] = _imports(p, pkg)
    graph = {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}
    graph = {m: {d for d in ds if not m.startswith(d + ".")} for m, ds in graph.items()}  # a package's own init

    def cycles_from(start):
        """The module sets of the import circles through ``start`` that a depth-first walk finds."""
        found, stack, seen = set(), [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for d in graph[node]:
                if d == start:
                    found.add(frozenset(path))
                elif d not in seen:
                    seen.add(d)
                    stack.append((d, path + [d]))
        return found
    cycles = sorted({c for m in graph for c in cycles_from(m)}, key=sorted)
    assert not cycles, f"import circles in edg_core: {[sorted(c) for c in cycles[:3]]}"
    assert "edg_core.storage" not in graph["edg_core.io"] and "edg_core.io" in graph["edg_core.storage"]


def test_training_commands_hold_their_run_folder(tmp_path, capsys):
    """edg distill and edg pretrain open their --out as a run folder too: a folder of someone else's files is
    refused before any training, and a student run folder carries the marker and no lease once done."""
    from edg.cluster.cli import main
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("\\documentclass{article}")
    from edg.train.data.shards import write_synthetic_shards
    shards = tmp_path / "shards"
    write_synthetic_shards(shards, size=32, maxcount=8, limit=8)
    assert main(["pretrain", "imageed", "--shards", str(shards), "--out", str(foreign),
                 "--preset", "tiny", "--epochs", "1", "--num-workers", "0"]) == 2
    assert "not empty and not an EDG run" in capsys.readouterr().err
    out = tmp_path / "runs"
    assert main(["distill", "--dataset", "rmd17:ethanol?root=embedded", "--epochs", "1", "--batch-size", "8",
                 "--out", str(out)]) == 0
    run = out / "schnet__rmd17-ethanol__lam0__seed42"
    assert (run / "edg-run.json").is_file() and not (run / "edg-lease.json").exists()
    assert (run / "result.json").is_file()


def test_a_distill_run_as_a_ray_task_holds_its_run_folder_too(tmp_path):
    """``edg benchmark --ray`` runs ``distill_task`` on the workers: it takes the run's lease like a local run, so a
    second benchmark over the same grid is refused instead of training into the same run folder."""
    from edg.cluster.distill_runs import distill_task
    from edg.train.loops.distill import DistillConfig
    cfg = DistillConfig(dataset="rmd17:ethanol?root=embedded", out=str(tmp_path / "runs"))
    with RunFolder.open(tmp_path / "runs" / cfg.run_name()):  # another benchmark is training this run
        with pytest.raises(LeaseHeld, match="another EDG run is writing here"):
            distill_task(cfg)
    assert not (tmp_path / "runs" / cfg.run_name() / "result.json").exists()

"""Hostile or damaged storage: keys that escape the working copy, URLs that cannot work, file modes, a full
disk, and the temporary files killed writers leave behind (issue 12)."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import pytest
from edg.edg_core.errors import DiskFullError, StorageError
from edg.edg_core.io import atomic_path, remove_stale_temps, temp_name, write_bytes_atomic
from edg.edg_core.storage import Mirror, check_location, exists, join, local_path_for, read_bytes, url_to_fs
from fsspec.implementations.memory import MemoryFile


@pytest.fixture
def mem_url():
    root = f"/edg-safety-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    yield fs, root
    for k in [k for k in fs.store if k.startswith(root)]:
        del fs.store[k]


@pytest.mark.parametrize("key", ["../evil.txt", "a/../../evil.txt", "/etc/evil.txt", "..", "a/.."])
def test_local_path_for_refuses_keys_outside_the_working_copy(tmp_path, key):
    with pytest.raises(StorageError, match="outside the working copy"):
        local_path_for(tmp_path / "wc", key)
    assert local_path_for(tmp_path / "wc", "a/./b.txt") == tmp_path / "wc" / "a" / "b.txt"


def test_mirror_pull_refuses_a_traversing_key_and_writes_nothing_outside(tmp_path, mem_url):
    fs, root = mem_url
    fs.pipe(f"{root}/run/ok.txt", b"ok")
    fs.store[f"{root}/run/../../escaped-{uuid.uuid4().hex[:6]}.txt"] = MemoryFile(fs, "x", b"evil")
    wc = tmp_path / "deep" / "wc"
    m = Mirror(f"memory://{root}/run", local=wc)
    with pytest.raises(StorageError, match=r"\.\./\.\./escaped"):
        m.pull()
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert not any("escaped" in p for p in written), written


def test_mirror_pull_refuses_a_key_through_a_symlink_out_of_the_working_copy(tmp_path):
    """local:// behaves like a bucket; the working copy holds a symlink ``cache -> /outside`` (planted by
    someone else): a remote key ``cache/x`` must not be written through it."""
    remote = tmp_path / "bucket" / "run"
    (remote / "cache").mkdir(parents=True)
    (remote / "cache" / "x.txt").write_text("payload")
    (remote / "fine.txt").write_text("fine")
    outside = tmp_path / "outside"
    outside.mkdir()
    wc = tmp_path / "wc"
    wc.mkdir()
    (wc / "cache").symlink_to(outside)
    m = Mirror(f"local://{remote}", local=wc)
    with pytest.raises(StorageError, match="outside the working copy"):
        m.pull()
    assert list(outside.iterdir()) == []


def test_mirror_push_skips_symlinks_leading_out_of_the_working_copy(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not upload")
    wc = tmp_path / "wc"
    wc.mkdir()
    (wc / "link.txt").symlink_to(secret)
    (wc / "real.txt").write_text("upload me")
    remote = tmp_path / "bucket"
    m = Mirror(f"local://{remote}", local=wc)
    assert m.push() == 1
    assert sorted(p.name for p in remote.iterdir()) == ["real.txt"]


def test_unknown_protocol_is_a_clear_error():
    with pytest.raises(StorageError, match=r"unknown storage protocol 'nosuchfs'"):
        check_location("nosuchfs://bucket/run")
    with pytest.raises(StorageError, match="unknown storage protocol"):
        exists("nosuchfs://bucket/run/x")


def test_file_urls_are_local_paths(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    url = f"file://{tmp_path}"
    assert check_location(url) == str(tmp_path)
    assert exists(f"{url}/a.txt") and read_bytes(f"{url}/a.txt") == b"hello"
    assert join(url, "a.txt") == tmp_path / "a.txt"
    m = Mirror(url)
    assert m.remote is None and m.local == tmp_path


def test_memory_output_is_refused_where_it_must_outlive_the_process(monkeypatch):
    monkeypatch.delenv("EDG_ALLOW_MEMORY_OUT", raising=False)
    assert check_location("memory://scratch/x") == "memory://scratch/x"  # in-process use is fine
    with pytest.raises(StorageError, match="lives only as long as this process"):
        check_location("memory://scratch/x", persistent=True)
    monkeypatch.setenv("EDG_ALLOW_MEMORY_OUT", "1")
    assert check_location("memory://scratch/x", persistent=True) == "memory://scratch/x"


def test_cli_refuses_memory_out_and_unknown_protocols(tmp_path, monkeypatch, capsys):
    from edg.cluster.cli import main
    monkeypatch.delenv("EDG_ALLOW_MEMORY_OUT", raising=False)
    assert main(["data", "convert", "--input", "embedded:qm9?limit=2", "--out", "memory://x/shards"]) == 2
    assert "lives only as long as this process" in capsys.readouterr().err
    assert main(["data", "convert", "--input", "embedded:qm9?limit=2", "--out", "nosuchfs://x/shards"]) == 2
    assert "unknown storage protocol 'nosuchfs'" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["data", "convert", "--input", "embedded:qm9?limit=2", "--out", f"file://{tmp_path}/s"]) == 0
    assert len(list((tmp_path / "s").glob("*.tar"))) == 1 and not (tmp_path / "file:").exists()


def test_result_files_get_the_users_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "a.bin", b"x")
        assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
        os.umask(0o007)
        with atomic_path(tmp_path / "b.npz") as tmp:
            tmp.write_bytes(b"y")
        assert (tmp_path / "b.npz").stat().st_mode & 0o777 == 0o660
    finally:
        os.umask(old)


def test_a_full_disk_names_the_file(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse a write past 1 kB (EFBIG), as a full disk (ENOSPC) would."""
    code = f"""
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
from edg.edg_core.io import write_bytes_atomic
from edg.edg_core.errors import DiskFullError
try:
    write_bytes_atomic({str(tmp_path / 'fields' / 'mol-1.npz')!r}, b'x' * 100000)
except DiskFullError as e:
    print('DISKFULL', e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert "DISKFULL" in out.stdout and "fields/mol-1.npz" in out.stdout, out.stdout + out.stderr
    assert not list((tmp_path / "fields").iterdir())  # the partial temporary file is gone too
    assert issubclass(DiskFullError, OSError)


def test_stale_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = tmp_path / "f" / temp_name("live.npz")
    (tmp_path / "f").mkdir()
    mine.write_bytes(b"being written")
    left = tmp_path / "f" / temp_name("dead.npz").replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    left.write_bytes(b"half")
    other = tmp_path / "f" / "notes.tmp"  # not ours: kept
    other.write_text("x")
    assert remove_stale_temps(tmp_path) == [left]
    assert mine.exists() and other.exists() and not left.exists()


def test_url_to_fs_names_a_missing_package():
    try:
        import s3fs  # noqa: F401
        pytest.skip("s3fs is installed")
    except ImportError:
        pass
    with pytest.raises(StorageError, match="needs a package"):
        url_to_fs("s3://bucket/x")


def _fake_result(mol_id="water"):
    import numpy as np
    from edg.dft.result import DFTResult
    return DFTResult(id=mol_id, energies={"E6": -75.0}, homo=-0.3, lumo=0.1, dipole=np.zeros(3), converged=True,
                     wall_s=1.0, z=np.array([8, 1, 1]), pos=np.array([[0, 0, 0], [0, 0, 0.96], [0.93, 0, -0.24]]))


def test_a_truncated_result_file_is_not_done_and_temp_files_go(tmp_path, caplog):
    import logging

    from edg.dft.result import save_result
    from edg.dft.worker import done_keys, remove_interrupted_writes, result_path
    for key in ("a", "b", "c"):
        save_result(result_path(tmp_path, key), _fake_result(key))
    cut = result_path(tmp_path, "b")
    cut.write_bytes(cut.read_bytes()[:-40])  # a copy cut short
    result_path(tmp_path, "c").write_bytes(b"")  # an empty file
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = result_path(tmp_path, "d").parent / temp_name("d.npz").replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"half a result")
    with caplog.at_level(logging.WARNING, logger="edg.dft.worker"):
        assert done_keys(tmp_path) == {"a"}
    assert "b.npz is truncated or unreadable" in caplog.text and "c.npz is truncated" in caplog.text
    assert orphan.exists()  # listing what is done deletes nothing
    remove_interrupted_writes(tmp_path)  # what the DFT stage runs first (cluster.stages.run_dft)
    assert not orphan.exists()


def test_molecules_over_the_dft_budget_are_refused_up_front_with_their_size():
    from edg.dft.config import DFTConfig
    from edg.dft.worker import DFTWorker
    from edg.edg_core.molecule import Molecule
    water = Molecule(z=[8, 1, 1], pos=[[0, 0, 0], [0, 0, 0.96], [0.93, 0, -0.24]], id="water")
    st = DFTWorker(DFTConfig(backend="cpu", max_atoms=2)).process(water)
    assert st["status"] == "failed" and "3 atoms > max_atoms 2" in st["reason"]
    long = Molecule(z=[1, 1], pos=[[0, 0, 0], [0, 0, 30.0]], id="stretched", multiplicity=3)
    st = DFTWorker(DFTConfig(backend="cpu", max_grid_points=20_000)).process(long)
    assert st["status"] == "failed" and "points > max_grid_points 20000" in st["reason"] and "30.0 A" in st["reason"]


def test_molecules_over_the_render_budget_fail_alone():
    from edg.edg_core.readers import open_source
    from edg.render.config import RenderConfig
    from edg.render.worker import RenderWorker
    mols = list(open_source("embedded:qm9?limit=4").molecules())  # 5, 4, 3, 4 atoms
    res = RenderWorker(RenderConfig(image_size=16, max_atoms=4), device="cpu", ed=False).render(mols)
    assert [s["__key__"] for s in res.samples] == ["qm9:2", "qm9:3", "qm9:4"]
    assert [(f.record, f.reason) for f in res.failures] == [
        ("qm9:1", "too large for the render budget: 5 atoms > max_atoms 4")]


def test_molecules_whose_ed_grid_is_over_the_render_budget_fail_alone():
    """``max_grid_points`` counts the points of a molecule's ED grid: that molecule alone is refused, naming the
    grid, while a molecule on a small grid and one without fields (structure images only) render. An
    implementation that ignored the limit would render all three; one that refused the batch, or counted a
    molecule without fields, would lose the good ones; with ``ed=False`` the ED grids are not rendered, so no
    molecule is refused for them."""
    import torch
    from edg.edg_core.grid import CubeGrid
    from edg.edg_core.readers import open_source
    from edg.render.config import RenderConfig
    from edg.render.worker import Fields, RenderWorker
    mols = list(open_source("embedded:qm9?limit=3").molecules())
    small, big = (Fields(CubeGrid((-3.0,) * 3, (6.0 / (n - 1),) * 3, (n,) * 3), torch.rand(n, n, n) * 0.1,
                         torch.zeros(n, n, n)) for n in (9, 11))  # 729 and 1331 points
    cfg = RenderConfig(image_size=16, max_grid_points=1000)
    res = RenderWorker(cfg, device="cpu").render(mols, [big, small, None])
    assert [s["__key__"] for s in res.samples] == [mols[1].id, mols[2].id]
    assert [(f.record, f.stage, f.reason) for f in res.failures] == [
        (mols[0].id, "render", "too large for the render budget: ED grid (11, 11, 11) = 1331 points > "
                               "max_grid_points 1000")]
    res = RenderWorker(cfg, device="cpu", ed=False).render(mols, [big, small, None])
    assert len(res.samples) == 3 and not res.failures


def test_staging_folders_and_temp_files_of_killed_processes_are_cleaned(tmp_path):
    import tempfile

    from edg.edg_core.io import _HOST
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = Path(tempfile.gettempdir()) / f"edg-mirror-{_HOST}-{dead.pid}-abc123"
    left.mkdir()
    (left / "fields.npz").write_bytes(b"staged")
    wc = tmp_path / "wc"
    wc.mkdir()
    half = wc / temp_name("metrics.jsonl").replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    half.write_text("half")
    m = Mirror(f"local://{tmp_path / 'bucket'}", local=wc)  # a reused working copy
    assert not half.exists()
    t = Mirror(f"local://{tmp_path / 'bucket'}", temporary=True)  # a new temporary copy clears dead ones
    assert not left.exists() and t.local.name.startswith(f"edg-mirror-{_HOST}-{os.getpid()}-")
    t.close()
    assert m.local == wc


def test_a_damaged_result_file_is_an_invalid_record_naming_it(tmp_path):
    from edg.dft.result import load_result, save_result
    from edg.edg_core.errors import InvalidRecord
    p = tmp_path / "r.npz"
    save_result(p, _fake_result())
    whole = p.read_bytes()
    p.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InvalidRecord, match=r"r\.npz: not a readable DFT result file \(BadZipFile"):
        load_result(p)
    damaged = bytearray(whole)
    damaged[120:160] = b"x" * 40  # inside the first member: its CRC no longer matches
    p.write_bytes(bytes(damaged))
    with pytest.raises(InvalidRecord, match="not a readable DFT result file"):
        load_result(p)


def test_a_shard_writer_clears_what_killed_writers_left_in_its_folder(tmp_path):
    from edg.edg_core.shards import ShardWriter
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "shard-000000.tar.tmp").write_bytes(b"half a shard")
    half = tmp_path / temp_name("progress.json").replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    half.write_text("{")
    live = tmp_path / temp_name("failures.jsonl")  # this process: still writing it
    live.write_text("")
    with ShardWriter(tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]

"""edg_core.storage: path-or-URL helpers and the Mirror working copy, on fsspec's in-memory file system (the
code path of s3:// or gs://) and on a plain folder (where a mirror is the folder itself)."""
from __future__ import annotations

import os
import time
import uuid

import fsspec
import pytest
from edg.edg_core.storage import Mirror, exists, is_remote, join, list_files, read_bytes, upload


@pytest.fixture
def mem_url():
    root = f"/edg-test-{uuid.uuid4().hex[:8]}"
    yield f"memory://{root}"
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_helpers_take_paths_and_urls_alike(tmp_path, mem_url):
    assert is_remote(mem_url) and is_remote("s3://b/k") and not is_remote(tmp_path) and not is_remote("file:///x")
    assert join(mem_url, "a", "b.txt") == f"{mem_url}/a/b.txt" and join(tmp_path, "a") == tmp_path / "a"
    for base in (str(tmp_path / "folder"), mem_url):
        assert list_files(base, "*.npz") == [] and not exists(join(base, "x.npz"))
        src = tmp_path / "payload"
        src.write_bytes(b"\x00edg")
        if is_remote(base):
            upload(src, join(base, "x.npz"))
        else:
            os.makedirs(base)
            (tmp_path / "folder" / "x.npz").write_bytes(b"\x00edg")
        assert list_files(base, "*.npz") == [str(join(base, "x.npz"))]
        assert read_bytes(list_files(base, "*.npz")[0]) == b"\x00edg"


def test_mirror_pushes_changes_pulls_others_and_skips_excluded_and_tmp(tmp_path, mem_url):
    a = Mirror(mem_url, local=tmp_path / "a", exclude=("big/*",))
    (a.local / "stages").mkdir()
    (a.local / "stages" / "dft.json").write_text("{}")
    (a.local / "big").mkdir()
    (a.local / "big" / "f.npz").write_bytes(b"bulky")
    (a.local / "half.json.tmp").write_text("partial")
    assert a.push() == 1  # only the marker: excluded and temporary files never travel
    assert a.push() == 0  # nothing changed since
    fs, root = fsspec.core.url_to_fs(mem_url)
    assert sorted(p[len(root) + 1:] for p in fs.find(root)) == ["stages/dft.json"]

    b = Mirror(mem_url, local=tmp_path / "b", exclude=("big/*",))
    assert b.pull() == 1 and (b.local / "stages" / "dft.json").read_text() == "{}"
    assert b.pull() == 0
    time.sleep(0.01)
    (a.local / "stages" / "dft.json").write_text('{"done": 4}')  # same writer, new content
    assert a.push() == 1 and b.pull() == 1
    assert (b.local / "stages" / "dft.json").read_text() == '{"done": 4}'
    # commit uploads one file now; keep=False leaves no staged copy behind
    (b.local / "big" / "g.npz").parent.mkdir(parents=True, exist_ok=True)
    (b.local / "big" / "g.npz").write_bytes(b"result")
    b.commit("big/g.npz", keep=False)
    assert not (b.local / "big" / "g.npz").exists() and read_bytes(f"{mem_url}/big/g.npz") == b"result"


def test_mirror_of_a_local_folder_is_the_folder(tmp_path):
    m = Mirror(tmp_path / "run")
    assert m.remote is None and m.local == tmp_path / "run" and m.local.is_dir()
    (m.local / "x").write_text("1")
    assert m.push() == 0 and m.pull() == 0 and m.where("x") == tmp_path / "run" / "x"


def test_autosync_pushes_in_the_background_and_at_the_end(tmp_path, mem_url):
    m = Mirror(mem_url, local=tmp_path / "w")
    with m.autosync(every_s=0.05):
        (m.local / "early.json").write_text("1")
        deadline = time.monotonic() + 300  # the background push is the event; the deadline only stops a hang
        while not exists(f"{mem_url}/early.json") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert exists(f"{mem_url}/early.json")  # pushed while the block still runs
        (m.local / "late.json").write_text("2")
    assert read_bytes(f"{mem_url}/late.json") == b"2"


def test_pull_keeps_local_changes_and_a_reused_copy_sees_same_size_updates(tmp_path, mem_url):
    a = Mirror(mem_url, local=tmp_path / "a")
    log = a.local / "metrics.jsonl"
    log.write_text("epoch 0\n")
    a.push()
    time.sleep(0.01)
    log.write_text("epoch 0\nepoch 1\n")  # written after the push, not pushed yet
    assert a.pull() == 0 and log.read_text() == "epoch 0\nepoch 1\n"  # our own upload does not overwrite it
    assert a.push() == 1 and read_bytes(f"{mem_url}/metrics.jsonl") == b"epoch 0\nepoch 1\n"

    # a working copy left on disk, then the file changes at the URL (same size: a new checkpoint)
    b = Mirror(mem_url, local=tmp_path / "b")
    b.pull()
    time.sleep(0.01)
    upload_src = tmp_path / "new"
    upload_src.write_text("epoch 0\nepoch 2\n")
    from edg.edg_core.storage import upload
    upload(upload_src, f"{mem_url}/metrics.jsonl")
    again = Mirror(mem_url, local=tmp_path / "b")  # a later process reusing the copy
    assert again.pull() == 1 and (again.local / "metrics.jsonl").read_text() == "epoch 0\nepoch 2\n"


def test_a_temporary_mirror_is_removed_on_close(mem_url):
    m = Mirror(mem_url, temporary=True)
    (m.local / "x").write_text("1")
    m.commit("x")
    m.close()
    assert not m.local.exists() and read_bytes(f"{mem_url}/x") == b"1"


TREE = ["stages/dft.json", "progress.json", "fields/ab/k1.npz", "fields/cd/k2.npz", "fields/flat.npz",
        "cubes/ab/k1.cube", "shards/ed/s-000000.tar", "shards/ed/s-000000.tar.keys", "shards/ed/failures.jsonl",
        "deep/fields/kept.npz", "fieldsextra/kept.txt", "run/a/cache/x/y.bin", "run/a/keep.txt",
        "logs/a.txt", "logs/ab.txt", "logs/half.txt.tmp", "tmpdir/x", "tmpdir.txt"]
EXCLUDE = ("fields/*", "cubes/*", "shards/*/*.tar", "shards/*/*.tar.keys", "*/cache/*", "logs/?.txt", "tmpdir*")


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_pull_fetches_what_it_did_before_and_never_lists_inside_an_excluded_folder(tmp_path, mem_url, kind,
                                                                                   monkeypatch):
    """The result files of a stage (``fields/**``) can be millions: pull lists the remote tree folder by folder
    and skips the folders that the exclude patterns exclude whole; every other file is filtered exactly as
    before (fnmatch of its relative path)."""
    import fnmatch
    url = f"local://{tmp_path / 'bucket'}" if kind == "local" else mem_url
    fs, root = fsspec.core.url_to_fs(url)
    for i, rel in enumerate(TREE):
        fs.makedirs(f"{root}/{rel}".rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(f"{root}/{rel}", f"payload {i}".encode())
    listed, real_ls = [], fs.ls

    def ls(path, *args, **kw):
        listed.append(path[len(root):].strip("/"))
        return real_ls(path, *args, **kw)
    monkeypatch.setattr(fs, "ls", ls)
    for name in ("find", "walk", "glob", "du"):  # nothing lists the whole tree any more
        monkeypatch.setattr(fs, name, lambda *a, _n=name, **k: pytest.fail(f"pull called fs.{_n}"))
    m = Mirror(url, local=tmp_path / "wc", exclude=EXCLUDE)
    want = sorted(r for r in TREE if not r.endswith(".tmp") and not any(fnmatch.fnmatch(r, p) for p in EXCLUDE))
    assert want == ["deep/fields/kept.npz", "fieldsextra/kept.txt", "logs/ab.txt", "progress.json",
                    "run/a/keep.txt", "shards/ed/failures.jsonl", "stages/dft.json"]
    assert m.pull() == len(want)
    got = sorted(p.relative_to(m.local).as_posix() for p in m.local.rglob("*") if p.is_file())
    assert got == sorted([*want, ".edg-mirror.json"])
    assert all((m.local / r).read_bytes() == f"payload {TREE.index(r)}".encode() for r in want)
    assert sorted(listed) == ["", "deep", "deep/fields", "fieldsextra", "logs", "run", "run/a", "shards",
                              "shards/ed", "stages"]  # not fields/, cubes/, run/a/cache/, tmpdir/ or below
    # a later pull sees what changed since (no stale listing), still without listing the excluded folders
    listed.clear()
    fs.pipe_file(f"{root}/stages/render.json", b"new")
    fs.makedirs(f"{root}/fields/ef", exist_ok=True)
    fs.pipe_file(f"{root}/fields/ef/k3.npz", b"new result")
    assert m.pull() == 1 and (m.local / "stages" / "render.json").read_bytes() == b"new"
    assert not any(p == "fields" or p.startswith("fields/") for p in listed)


@pytest.mark.parametrize("pattern, folder, whole", [
    ("fields/*", "fields", True), ("fields/*", "fields/ab", True), ("fields/*", "deep/fields", False),
    ("fields/*", "fieldsextra", False), ("dft/fields/*", "dft/fields", True), ("dft/fields/*", "dft", False),
    ("fields/**", "fields", True), ("*/cache/*", "run/cache", True), ("*/cache/*", "cache", False),
    ("*", "anything", True), ("[f]ields/*", "fields", True), ("fields/*.npz", "fields", False),
    ("*.tar", "shards", False), ("fields", "fields", False), ("shards/*/*.tar", "shards/ed", False),
])
def test_a_folder_is_excluded_whole_only_when_every_path_below_it_matches(tmp_path, pattern, folder, whole):
    import fnmatch
    m = Mirror(tmp_path, exclude=(pattern,))
    assert m._excluded_folder(folder) is whole
    # pruned: no file below can escape the pattern, so not listing the folder changes nothing; not pruned:
    # some file below is kept
    below = [f"{folder}/{x}" for x in ("a", "a.npz", "x/y.tar", "cache/z", ".hidden", "fields/q")]
    assert all(fnmatch.fnmatch(p, pattern) for p in below) is whole


def test_file_urls_are_plain_paths_everywhere(tmp_path, monkeypatch):
    """``storage.plain_path`` is the one place ``file://`` is stripped: check_location and open_source give
    the same plain path it does (a source spec ``file:///abs/a.xyz?limit=1`` reads the file)."""
    from edg.edg_core import storage
    from edg.edg_core.readers import open_source
    from edg.edg_core.storage import check_location, plain_path
    assert plain_path(f"file://{tmp_path}/a") == f"{tmp_path}/a" and plain_path(tmp_path) is tmp_path
    assert plain_path("s3://b/k") == "s3://b/k"
    assert check_location(f"file://{tmp_path}/out") == f"{tmp_path}/out" and check_location(tmp_path) is tmp_path
    (tmp_path / "a.xyz").write_text("2\nid=a\nH 0 0 0\nH 0 0 0.74\n2\nid=b\nH 0 0 0\nH 0 0 0.8\n")
    assert [m.id for m in open_source(f"file://{tmp_path}/a.xyz?limit=1")] == ["a"]
    calls = []
    real = storage.plain_path
    monkeypatch.setattr(storage, "plain_path", lambda p: calls.append(str(p)) or real(p))
    check_location(f"file://{tmp_path}/out")
    assert calls == [f"file://{tmp_path}/out"]  # check_location strips through plain_path
    open_source(f"file://{tmp_path}/a.xyz")
    assert calls[-1] == f"file://{tmp_path}/a.xyz"  # and so does open_source (through edg_core.spec)

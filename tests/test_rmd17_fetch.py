"""rMD17 from download to task: ``edg fetch rmd17`` against a local HTTP server (never the internet), safe
extraction, the same frame ids from both layouts, and one-line errors for unknown names before any run folder."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import re
import tarfile
import threading

import numpy as np
import pytest
from edg.cluster.cli import main
from edg.edg_core.download import ChecksumError, UnsafeArchiveError, extract_tar
from edg.edg_core.errors import DataSourceError
from edg.edg_core.readers import open_source
from edg.edg_core.readers.rmd17 import fetch_rmd17, load_rmd17


def _archive_from_presplit(rmd17_root, out, molecule="ethanol", seed=0):
    """An official-layout archive (rmd17/npz_data + rmd17/splits) holding the train_01 + test_01 frames of
    ``molecule`` in shuffled order, like the real archive whose split files index its own frame order."""
    tr = np.load(rmd17_root / f"rmd17_{molecule}_train_01.npz")
    te = np.load(rmd17_root / f"rmd17_{molecule}_test_01.npz")
    n_tr, n_te = len(tr["energies"]), len(te["energies"])
    order = np.random.default_rng(seed).permutation(n_tr + n_te)  # archive position -> stacked frame
    stacked = {k: np.concatenate([tr[k], te[k]]) for k in ("coords", "energies", "forces", "old_indices")}
    arrays = {k: v[order] for k, v in stacked.items()}
    where = np.argsort(order)  # stacked frame -> archive position
    members = {}
    buf = io.BytesIO()
    np.savez(buf, nuclear_charges=tr["nuclear_charges"], **arrays)
    members[f"rmd17/npz_data/rmd17_{molecule}.npz"] = buf.getvalue()
    members["rmd17/splits/index_train_01.csv"] = "\n".join(str(i) for i in where[:n_tr]).encode()
    members["rmd17/splits/index_test_01.csv"] = "\n".join(str(i) for i in where[n_tr:]).encode()
    path = out / "rmd17.tar.bz2"
    with tarfile.open(path, "w:bz2") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve(tmp_path):
    """Serve a folder on 127.0.0.1 (a thread, stopped after the test); yields a function folder -> base URL."""
    servers = []

    def start(folder):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_fetch_verifies_unpacks_and_ids_match_presplit(tmp_path, rmd17_root, serve, capsys):
    srv_dir = tmp_path / "srv"
    srv_dir.mkdir()
    archive = _archive_from_presplit(rmd17_root, srv_dir)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    url = serve(srv_dir) + "/rmd17.tar.bz2"

    out = tmp_path / "data"
    rc = main(["fetch", "rmd17", "--url", url, "--out", str(out), "--sha256", sha, "--molecules", "ethanol"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert sha in printed and "verified" in printed and f"EDG_RMD17_ROOT={out / 'rmd17'}" in printed
    assert not (out / "rmd17.tar.bz2").exists()  # removed after unpacking unless --keep-archive

    a, b = load_rmd17(out, "ethanol"), load_rmd17(rmd17_root, "ethanol")
    for split in ("train", "valid", "test"):
        assert np.array_equal(a[split].index, b[split].index)  # MD17 old_indices from both layouts
        assert np.array_equal(a[split].pos, b[split].pos) and np.array_equal(a[split].energy, b[split].energy)
    assert int(a["train"].index.max()) > 100_000  # MD17 trajectory indices, not archive positions
    ids_archive = [m.id for m in open_source(f"rmd17:ethanol?split=valid&root={out}").molecules()]
    ids_presplit = [m.id for m in open_source(f"rmd17:ethanol?split=valid&root={rmd17_root}").molecules()]
    assert ids_archive == ids_presplit and len(ids_archive) == 50
    # the embedded frames are the first train_01 frames and carry the same ids
    emb = [m.id for m in open_source("rmd17:ethanol?split=train&root=embedded").molecules()]
    assert emb == [m.id for m in open_source(f"rmd17:ethanol?split=train&root={out}&limit={len(emb)}").molecules()]

    # a rerun on a finished folder does not download again (the server is gone)
    archive.unlink()
    assert fetch_rmd17(out, url=url, molecules=["ethanol"])[0] == out / "rmd17"


def test_fetch_checksum_mismatch_removes_the_file(tmp_path, rmd17_root, serve):
    srv_dir = tmp_path / "srv"
    srv_dir.mkdir()
    _archive_from_presplit(rmd17_root, srv_dir)
    url = serve(srv_dir) + "/rmd17.tar.bz2"
    with pytest.raises(ChecksumError, match="md5 is .* expected 0123"):
        fetch_rmd17(tmp_path / "data", url=url, md5="0123456789abcdef0123456789abcdef", molecules=["ethanol"])
    assert not (tmp_path / "data" / "rmd17.tar.bz2").exists()
    assert not list((tmp_path / "data").glob("*.part"))
    assert not list((tmp_path / "data").glob(".*.tmp"))  # nor atomic_path's temporary file
    with pytest.raises(DataSourceError, match="cannot download"):
        fetch_rmd17(tmp_path / "data", url=url.replace("rmd17.tar.bz2", "missing.tar.bz2"))


def test_fetch_refuses_an_archive_without_the_molecules(tmp_path, rmd17_root, serve):
    srv_dir = tmp_path / "srv"
    srv_dir.mkdir()
    _archive_from_presplit(rmd17_root, srv_dir)
    with pytest.raises(DataSourceError, match="no npz_data/rmd17_aspirin.npz"):
        fetch_rmd17(tmp_path / "data", url=serve(srv_dir) + "/rmd17.tar.bz2")


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "a/../../evil.txt"])
def test_extract_refuses_path_traversal(tmp_path, name):
    arc = _tar(tmp_path / "a.tar.gz", [_file("ok/good.txt"), _file(name)])
    with pytest.raises(UnsafeArchiveError, match="outside the output folder"):
        extract_tar(arc, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_extract_refuses_links_and_oversize(tmp_path):
    link = tarfile.TarInfo("ok/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(UnsafeArchiveError, match="link or special file"):
        extract_tar(_tar(tmp_path / "l.tar.gz", [(link, None)]), tmp_path / "out")
    assert not (tmp_path / "out" / "ok" / "link").exists()
    big = _tar(tmp_path / "b.tar.gz", [_file("a.bin", b"0" * 600), _file("b.bin", b"0" * 600)])
    with pytest.raises(UnsafeArchiveError, match="more than 1000 bytes"):
        extract_tar(big, tmp_path / "out2", max_bytes=1000)
    files = extract_tar(big, tmp_path / "out3", max_bytes=2000)
    assert sorted(f.name for f in files) == ["a.bin", "b.bin"] and (tmp_path / "out3" / "a.bin").stat().st_size == 600


@pytest.mark.parametrize("args, message", [
    (["--student", "foo"], "unknown student 'foo'"),
    (["--student", "schnt"], "did you mean 'schnet'"),
    (["--dataset", "rmd17:asprin"], "unknown rMD17 molecule 'asprin' (did you mean 'aspirin'?)"),
    (["--dataset", "qm9:foo"], "unknown QM9 target 'foo'"),
    (["--dataset", "md17:aspirin"], "unknown dataset 'md17' (did you mean 'rmd17'?)"),
    (["--dataset", "rmd17:aspirin?root=/nonexistent/rmd17"], "add ?root=DIR"),
    (["--dataset", "rmd17:aspirin", "--task", "root=/nonexistent/rmd17"], "rMD17 data not found"),
    (["--dataset", "rmd17:uracil?root=embedded"], "only ethanol and aspirin"),
    (["--dataset", "rmd17:ethanol?root=embedded&bogus=1"], "unknown key(s) ['bogus']"),
])
def test_distill_unknown_names_are_one_line_errors_without_run_folder(tmp_path, capsys, args, message):
    for cmd in (["distill", *args], ["benchmark", *(["--students", args[1]] if args[0] == "--student"
                                                   else ["--datasets", *args[1:2]] + args[2:])]):
        assert main([*cmd, "--out", str(tmp_path / "runs"), "--epochs", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and err[0].startswith(f"edg {cmd[0]}: error:")
        assert not (tmp_path / "runs").exists()


def test_dataset_options_in_the_spec_become_task_options():
    from edg.train.loops.distill import DistillConfig, replace
    cfg = DistillConfig(dataset="rmd17:ethanol?root=embedded&train_size=8", task={"train_size": 4})
    assert cfg.dataset == "rmd17:ethanol" and cfg.task == {"root": "embedded", "train_size": 4}
    assert "?" not in cfg.run_name() and "root" not in cfg.run_name()
    assert replace(cfg, student="painn").task == cfg.task
    cfg.validate()


def test_extract_refuses_members_through_a_symlink_in_out(tmp_path):
    """A symlink already inside ``out`` that leads outside it is no way out: members through it (files and
    folders) are refused and nothing is written where it points; a symlink staying inside ``out`` is fine."""
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    out.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    for member in (_file("sub/x.txt"), _file("sub/deeper/x.txt")):
        with pytest.raises(UnsafeArchiveError, match="outside the output folder"):
            extract_tar(_tar(tmp_path / "s.tar.gz", [member]), out)
    folder = tarfile.TarInfo("sub/made")
    folder.type = tarfile.DIRTYPE
    with pytest.raises(UnsafeArchiveError, match="outside the output folder"):
        extract_tar(_tar(tmp_path / "d.tar.gz", [(folder, None)]), out)
    (out / "x.txt").symlink_to(elsewhere / "target.txt")  # a file symlink leading out is not overwritten through
    with pytest.raises(UnsafeArchiveError, match="outside the output folder"):
        extract_tar(_tar(tmp_path / "f.tar.gz", [_file("x.txt")]), out)
    assert list(elsewhere.iterdir()) == []
    (out / "real").mkdir()
    (out / "inner").symlink_to(out / "real", target_is_directory=True)
    files = extract_tar(_tar(tmp_path / "i.tar.gz", [_file("inner/y.txt", b"y")]), out)
    assert (out / "real" / "y.txt").read_bytes() == b"y" and len(files) == 1


class _FakeResponse:
    """A response whose body comes in blocks; ``then`` runs before each block after the first (to look at the
    folder mid-download) and may raise."""

    def __init__(self, blocks, then=None):
        self.blocks, self.then, self.calls = list(blocks), then, 0

    def read(self, n):
        self.calls += 1
        if self.calls > 1 and self.then is not None:
            self.then()
        return self.blocks.pop(0) if self.blocks else b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_streams_into_an_atomic_temp_file(tmp_path, monkeypatch):
    """The body goes to ``io.atomic_path``'s pid-tagged temporary file (which ``remove_stale_temps`` knows), is
    verified there, and only a whole verified file appears at ``dest``; a failure mid-stream or a full disk
    leaves nothing behind, and the disk error names ``dest``."""
    import errno
    import urllib.request

    from edg.edg_core.download import download
    from edg.edg_core.errors import DiskFullError
    from edg.edg_core.io import TEMP_RE
    dest = tmp_path / "d" / "x.bin"
    body = [b"a" * 10, b"b" * 10]
    seen = []

    def look():
        seen.append(sorted(p.name for p in dest.parent.iterdir()))
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _FakeResponse(body, look))
    want = hashlib.sha256(b"a" * 10 + b"b" * 10).hexdigest()
    assert download("http://x/x.bin", dest, sha256=want).size == 20 and dest.read_bytes() == b"a" * 10 + b"b" * 10
    assert seen and all(len(names) == 1 and TEMP_RE.match(names[0]) for names in seen)  # never dest itself
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x.bin"]

    dest.unlink()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _FakeResponse([b"a" * 10, b"c" * 10]))
    with pytest.raises(ChecksumError, match=r"x\.bin: sha256 is"):
        download("http://x/x.bin", dest, sha256=want)
    assert list(dest.parent.iterdir()) == []

    def full():
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _FakeResponse([b"a", b"b"], full))
    with pytest.raises(DiskFullError, match="x.bin"):
        download("http://x/x.bin", dest)
    assert list(dest.parent.iterdir()) == []

    def cut():
        raise ConnectionResetError("reset by peer")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _FakeResponse([b"a", b"b"], cut))
    with pytest.raises(DataSourceError, match="cannot download .*reset by peer"):
        download("http://x/x.bin", dest)
    assert list(dest.parent.iterdir()) == []


def test_extract_writes_through_atomic_temp_files(tmp_path, monkeypatch):
    """Each extracted file is written under ``io.atomic_path``'s temporary name and renamed."""
    import edg.edg_core.download as dl
    from edg.edg_core.io import TEMP_RE
    names = []
    real = dl.atomic_path

    def spy(path):
        cm = real(path)
        tmp = cm.__enter__()
        names.append(tmp.name)

        class _Wrap:
            def __enter__(self):
                return tmp

            def __exit__(self, *exc):
                return cm.__exit__(*exc)
        return _Wrap()
    monkeypatch.setattr(dl, "atomic_path", spy)
    files = extract_tar(_tar(tmp_path / "a.tar.gz", [_file("a/x.txt", b"x"), _file("y.txt", b"y")]), tmp_path / "o")
    assert [f.read_bytes() for f in files] == [b"x", b"y"] and len(names) == 2
    assert all(TEMP_RE.match(n) for n in names)
    assert sorted(p.name for p in (tmp_path / "o").rglob("*")) == ["a", "x.txt", "y.txt"]


# ---------------------------------------------------------------- issue 23: archives and markers that lie
def _cli(argv, capsys) -> tuple[int, list[str], str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, [ln for ln in cap.err.splitlines() if ln.strip()], cap.out


def _files(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


def test_an_archive_cannot_write_the_completion_marker(tmp_path, capsys):
    from edg.edg_core.download import FETCH_MARKER, fetch_archive
    forged = b'{"url": "x", "digests": {"sha256": "' + b"0" * 64 + b'", "md5": "' + b"0" * 32 + b'", "size": 1}}'
    arc = _tar(tmp_path / "evil.tar.gz", [_file("rmd17/a.txt"), _file(FETCH_MARKER, forged)])
    out = tmp_path / "data"
    rc, err, printed = _cli(["fetch", "rmd17", "--url", arc.as_uri(), "--out", str(out), "--sha256", "0" * 64], capsys)
    assert rc == 2 and len(err) == 1, err  # the forged digests do not pass for the archive's
    rc, err, printed = _cli(["fetch", "rmd17", "--url", arc.as_uri(), "--out", str(out)], capsys)
    assert rc == 2 and err == [f"edg fetch: error: {out / 'rmd17.tar.bz2'}: member '{FETCH_MARKER}' uses the "
                               f"reserved name '{FETCH_MARKER}' (EDG's completion marker); refusing"]
    assert _files(out) == []  # no marker, no rmd17/a.txt, no archive: nothing to mistake for a finished fetch
    assert "verified" not in printed
    # a folder under the marker name is refused too, and so is a member overwriting the archive being read
    for member in (_file(f"{FETCH_MARKER}/x"), _file("rmd17.tar.bz2")):
        with pytest.raises(UnsafeArchiveError, match="reserved name"):
            fetch_archive(_tar(tmp_path / "e2.tar.gz", [member]).as_uri(), out, "rmd17.tar.bz2")
        assert _files(out) == []


def test_a_rerun_compares_the_checksums_given_with_the_markers(tmp_path, capsys):
    from edg.edg_core.download import ChecksumError, fetch_archive, file_digests
    arc = _tar(tmp_path / "a.tar.gz", [_file("rmd17/a.txt", b"abc")])
    out = tmp_path / "data"
    info = fetch_archive(arc.as_uri(), out, "rmd17.tar.bz2")
    real = file_digests(arc)
    assert info["digests"] == {"sha256": real.sha256, "md5": real.md5, "size": real.size}
    assert fetch_archive("file:///gone", out, "x", sha256=real.sha256, md5=real.md5) == info  # no download
    with pytest.raises(ChecksumError, match=rf"fetched before, per \.edg-fetched\.json\): sha256 is {real.sha256}, "
                                            r"expected 1111"):
        fetch_archive("file:///gone", out, "x", sha256="1" * 64)
    rc, err, printed = _cli(["fetch", "rmd17", "--url", "file:///gone", "--out", str(out), "--md5", "2" * 32], capsys)
    assert rc == 2 and len(err) == 1 and f"md5 is {real.md5}, expected {'2' * 32}" in err[0]
    assert "verified" not in printed


@pytest.mark.parametrize("content, problem", [
    (b"{not json", "Expecting property name"),
    (b"[1, 2]", "a JSON list, not an object"),
    (b'{"url": "u", "digests": {"sha256": 5, "md5": "x", "size": 1}}', "digests.sha256 is not a hex digest"),
    (b'{"url": "u"}', "no 'url' string or 'digests' object"),
    (b"[" * 100_000, "maximum recursion depth"),
])
def test_a_malformed_marker_is_one_line(tmp_path, capsys, content, problem):
    from edg.edg_core.download import FETCH_MARKER
    out = tmp_path / "data"
    out.mkdir()
    (out / FETCH_MARKER).write_bytes(content)
    rc, err, _ = _cli(["fetch", "rmd17", "--url", "file:///gone", "--out", str(out)], capsys)
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"edg fetch: error: {out / FETCH_MARKER}: not a completion marker EDG wrote (")
    assert problem in err[0] and err[0].endswith(f"delete {out / FETCH_MARKER} to fetch again")


def _multi_block_bz2(path, n_files=4, size=400_000):
    """A tar.bz2 of ``n_files`` incompressible files, spanning several 900 kB bz2 blocks."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:bz2") as tf:
        for i in range(n_files):
            data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            info = tarfile.TarInfo(f"rmd17/f{i}.bin")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_a_truncated_archive_is_one_line_and_leaves_nothing(tmp_path, capsys):
    from edg.edg_core.download import fetch_archive
    whole = _multi_block_bz2(tmp_path / "whole.tar.bz2")
    cut = tmp_path / "cut.tar.bz2"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.8)])  # the first files are whole in it
    out = tmp_path / "out"
    (out / "rmd17").mkdir(parents=True)
    (out / "rmd17" / "mine.txt").write_text("the user's")  # what was there before stays
    with pytest.raises(DataSourceError, match=r"cut\.tar\.bz2: truncated or corrupt archive \(EOFError: Compressed "
                                              r"file ended before the end-of-stream marker was reached\); nothing "
                                              r"was extracted$"):
        extract_tar(cut, out)
    assert _files(out) == ["rmd17", "rmd17/mine.txt"]
    rc, err, _ = _cli(["fetch", "rmd17", "--url", cut.as_uri(), "--out", str(tmp_path / "data")], capsys)
    assert rc == 2 and len(err) == 1 and "truncated or corrupt archive (EOFError" in err[0], err
    assert _files(tmp_path / "data") == []  # nor the archive
    assert fetch_archive(whole.as_uri(), tmp_path / "data", "rmd17.tar.bz2")["url"] == whole.as_uri()
    assert _files(tmp_path / "data") == [".edg-fetched.json", "rmd17"] + [f"rmd17/f{i}.bin" for i in range(4)]


def test_a_garbage_archive_is_one_line(tmp_path):
    (tmp_path / "g.tar.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 100)
    with pytest.raises(DataSourceError, match=r"g\.tar\.gz: (not a readable tar archive|truncated or corrupt)"):
        extract_tar(tmp_path / "g.tar.gz", tmp_path / "out")
    assert _files(tmp_path / "out") == []


def _folder(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info, None


@pytest.mark.parametrize("members, message", [
    ([_file("rmd17/a"), _file("rmd17/a/b")], "member 'rmd17/a/b' needs 'rmd17/a' to be a folder, but it is a file"),
    ([_file("rmd17/a"), _folder("rmd17/a")], "member 'rmd17/a' needs 'rmd17/a' to be a folder, but it is a file"),
    ([_folder("rmd17/a"), _file("rmd17/a")], "member 'rmd17/a' is a file where the archive or the output folder has"),
])
def test_a_path_that_is_a_file_and_a_folder_is_one_line(tmp_path, members, message):
    with pytest.raises(UnsafeArchiveError, match=re.escape(message)):
        extract_tar(_tar(tmp_path / "a.tar.gz", [_file("rmd17/first.txt"), *members]), tmp_path / "out")
    assert _files(tmp_path / "out") == []

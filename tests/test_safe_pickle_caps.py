"""The restricted unpickler caps what its allowed constructors may allocate (issue 23): sizes are checked from the
arguments before allocating, against ``EDG_PICKLE_MAX_BYTES`` (1 GiB by default), and every refusal is one line
naming the global. The hostile pickles are written by hand (opcodes), as an attacker would."""
from __future__ import annotations

import datetime
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from edg.edg_core.safe_pickle import UnsafePickleError, safe_load, safe_load_npz

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _int(n: int) -> bytes:
    return b"\x8a" + bytes([len(n.to_bytes(9, "little", signed=True).rstrip(b"\0") or b"\0")]) \
        + (n.to_bytes(9, "little", signed=True).rstrip(b"\0") or b"\0")


BYTEARRAY_4GIB = b"\x80\x02" + _global("builtins", "bytearray") + _int(4 * GIB) + b"\x85R."
NDARRAY_HUGE = b"\x80\x02" + _global("numpy", "ndarray") + _int(200_000) + _int(100_000) + b"\x86\x85R."
RECONSTRUCT_HUGE = (b"\x80\x02" + _global("numpy._core.multiarray", "_reconstruct") + _global("numpy", "ndarray")
                    + _int(200_000) + _int(100_000) + b"\x86" + b"C\x01b" + b"\x87R.")
# _reconstruct(ndarray, (0,), 'b') then BUILD (1, (20000, 10000), dtype('O'), False, []): numpy 2.4 allocates
# 1.6 GB of object pointers for an empty list and crashes (segmentation fault)
OBJECT_BUILD_LIE = (b"\x80\x02" + _global("numpy._core.multiarray", "_reconstruct") + _global("numpy", "ndarray")
                    + b"K\x00\x85C\x01b\x87R" + b"(K\x01" + _int(20_000) + _int(10_000) + b"\x86"
                    + _global("numpy", "dtype") + b"X\x02\x00\x00\x00O8\x89\x88\x87R"
                    + b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb"
                    + b"\x89]tb.")


def _load_in_child(blob: bytes, tmp_path, env: dict | None = None) -> tuple[int, str, float]:
    """Exit code, output and how far (MiB) the peak RSS of a fresh process grew while it safe_loaded ``blob``
    (the imports before it are not counted)."""
    (tmp_path / "x.pkl").write_bytes(blob)
    code = ("import resource, sys\n"
            "from edg.edg_core.safe_pickle import safe_load, UnsafePickleError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    safe_load(sys.argv[1]); print('LOADED')\n"
            "except UnsafePickleError as e:\n    print('REFUSED', e)\n"
            "print('RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.pkl")], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=300)
    out = p.stdout + p.stderr
    rss = [int(ln.split()[1]) / 1024 for ln in out.splitlines() if ln.startswith("RSS_KIB")]
    return p.returncode, out, (rss[0] if rss else float("nan"))


def test_a_59_byte_pickle_asking_bytearray_4gib_is_refused_before_allocating(tmp_path):
    assert len(BYTEARRAY_4GIB) < 60
    with pytest.raises(UnsafePickleError) as e:
        safe_load(BYTEARRAY_4GIB, "evil.pkl")
    assert str(e.value) == ("evil.pkl: the pickle asks builtins.bytearray for 4294967296 bytes (a zero-filled "
                            "buffer), over the limit of 1073741824 bytes (raise it with EDG_PICKLE_MAX_BYTES); "
                            "refused before allocating")
    rc, out, rss = _load_in_child(BYTEARRAY_4GIB, tmp_path)
    assert rc == 0 and "REFUSED" in out and "builtins.bytearray" in out, out
    assert rss < 50, f"peak RSS grew {rss:.0f} MiB: the 4 GiB buffer was allocated"


@pytest.mark.parametrize("blob, name", [(NDARRAY_HUGE, "numpy.ndarray"),
                                        (RECONSTRUCT_HUGE, "numpy._core.multiarray._reconstruct"),
                                        (OBJECT_BUILD_LIE, "numpy.ndarray.__setstate__")])
def test_huge_arrays_are_refused_in_one_line_naming_the_global(blob, name, tmp_path):
    with pytest.raises(UnsafePickleError, match=rf"^x\.pkl: the pickle (asks|calls) {name} ") as e:
        safe_load(blob, "x.pkl")
    assert "\n" not in str(e.value)
    rc, out, rss = _load_in_child(blob, tmp_path)  # in a child: a wrong implementation may crash numpy
    assert rc == 0 and "REFUSED" in out and name in out, out
    assert rss < 50, f"peak RSS grew {rss:.0f} MiB"


def test_the_limit_is_stated_and_can_be_raised(tmp_path, monkeypatch):
    small = b"\x80\x02" + _global("builtins", "bytearray") + _int(2000) + b"\x85R."
    monkeypatch.setenv("EDG_PICKLE_MAX_BYTES", "1000")
    with pytest.raises(UnsafePickleError, match="2000 bytes .* over the limit of 1000 bytes"):
        safe_load(small)
    assert safe_load(small, max_alloc=2000) == bytearray(2000)
    monkeypatch.setenv("EDG_PICKLE_MAX_BYTES", "2000")
    assert safe_load(small) == bytearray(2000)
    monkeypatch.delenv("EDG_PICKLE_MAX_BYTES")
    assert safe_load(small) == bytearray(2000)


def test_newobj_on_ndarray_and_other_codecs_are_refused():
    newobj = b"\x80\x02" + _global("numpy", "ndarray") + _int(200_000) + b"\x85\x81."  # ndarray.__new__(...)
    with pytest.raises(UnsafePickleError, match=r"^pickle: not a readable pickle of plain data \(UnpicklingError: "
                                                r"NEWOBJ class argument must be a type"):
        safe_load(newobj)
    rot = b"\x80\x02" + _global("_codecs", "encode") + b"X\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(UnsafePickleError, match=r"calls _codecs\.encode with encoding 'rot13'"):
        safe_load(rot)
    with pytest.raises(UnsafePickleError, match=r"refers to os\.system"):
        safe_load(b"\x80\x02" + _global("os", "system") + b"X\x04\x00\x00\x00true\x85R.")


def test_plain_data_still_round_trips_as_plain_arrays():
    obj = np.empty(3, dtype=object)
    obj[:] = [np.arange(4.0), "s", {"k": np.float32(2)}]
    data = {"f": np.asfortranarray(np.arange(12.0).reshape(3, 4)), "i": np.arange(5, dtype=np.int16),
            "t": np.array(["2020-01-01"], dtype="datetime64[D]"), "o": obj, "b": bytearray(b"xy"),
            "s": {1, 2}, "od": OrderedDict(a=1), "c": 1 + 2j, "nest": [(np.zeros(2),)]}
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        back = safe_load(pickle.dumps(data, protocol=protocol))
        for k in ("f", "i", "t"):
            assert type(back[k]) is np.ndarray and (back[k] == data[k]).all()
        assert back["f"].flags.f_contiguous and back["f"].flags.writeable
        assert type(back["o"]) is np.ndarray and type(back["o"][0]) is np.ndarray
        assert (back["o"][0] == np.arange(4.0)).all() and back["o"][2]["k"] == 2
        assert type(back["nest"][0][0]) is np.ndarray
        assert back["b"] == bytearray(b"xy") and back["s"] == {1, 2} and back["od"] == OrderedDict(a=1)


def _npz_with_member(path: Path, name: str, header_shape: tuple, payload: bytes, deflate: bool) -> None:
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": header_shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
        z.writestr(name + ".npy", head.getvalue() + payload)


def test_an_npz_member_announcing_more_than_it_holds_is_refused_before_allocating(tmp_path):
    _npz_with_member(tmp_path / "lie.npz", "feats", (200_000, 100_000), b"\0" * 64, deflate=False)
    with pytest.raises(Exception, match=r"lie\.npz:feats: the \.npy header announces 160000000000 bytes of data "
                                        r"but the zip entry holds 64"):
        safe_load_npz(tmp_path / "lie.npz")
    _npz_with_member(tmp_path / "bomb.npz", "feats", (2048, 1024), b"\0" * (16 << 20), deflate=True)
    with pytest.raises(UnsafePickleError, match=r"bomb\.npz:feats: \d+ compressed bytes would inflate to an array "
                                                r"of 16777216 bytes, over the limit of 1000000 bytes"):
        safe_load_npz(tmp_path / "bomb.npz", max_alloc=1_000_000)
    assert safe_load_npz(tmp_path / "bomb.npz")["feats"].shape == (2048, 1024)  # under the default limit


def test_npz_arrays_load_as_numpy_writes_them(tmp_path):
    arrays = {"a": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "t": np.array(["2020-01-01"], "datetime64[D]"),
              "s": np.array([b"ab", b"c"]), "e": np.zeros((0, 3), np.int8), "ids": np.array(["x", 1], dtype=object)}
    np.savez_compressed(tmp_path / "a.npz", **arrays)
    back = safe_load_npz(tmp_path / "a.npz")
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and (back[k] == v).all()
    assert back["a"].flags.writeable


def test_import_teacher_of_a_refused_pth_prints_one_line_naming_the_global(tmp_path):
    import torch
    torch.save({"ED_teacher": {"w": torch.zeros(2)}, "when": datetime.date(2020, 1, 1)}, tmp_path / "t.pth")
    cli = "import sys; from edg.cluster.cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", cli, "import", "teacher", "--src", str(tmp_path / "t.pth"),
                        "--out", str(tmp_path / "teacher.pt")], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    assert p.returncode == 2, p.stderr
    assert lines == [f"edg import: error: {tmp_path / 't.pth'}: the file refers to datetime.date, which is not "
                     "plain data (tensors, containers, numbers); refused without running it"]
    assert "\x1b" not in p.stderr and not (tmp_path / "teacher.pt").exists()


def test_the_hand_written_pickles_are_what_they_claim():
    assert struct.unpack("<Q", BYTEARRAY_4GIB[BYTEARRAY_4GIB.index(b"\x8a") + 2:][:5] + b"\0\0\0")[0] == 4 * GIB


def _checkpoint_with_pickle(path: Path, pickle_bytes: bytes) -> Path:
    """A zip-format torch checkpoint (torch.save's records) whose data.pkl is replaced by ``pickle_bytes``."""
    import torch
    torch.save({"w": torch.zeros(2)}, path)
    with zipfile.ZipFile(path) as z:
        records = {i.filename: z.read(i) for i in z.infolist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in records.items():
            z.writestr(name, pickle_bytes if name.endswith("/data.pkl") else data)
    return path


@pytest.mark.parametrize("call, name", [
    (_global("builtins", "bytearray") + _int(3 * GIB // 2) + b"\x85R", "builtins.bytearray"),  # 1.5 GiB if run
    (_global("__builtin__", "bytearray") + _int(3 * GIB // 2) + b"\x85R", "__builtin__.bytearray"),
    (_global("torch", "FloatTensor") + _int(20_000) + _int(10_000) + b"\x86R", "torch.FloatTensor"),
])
def test_import_of_a_checkpoint_calling_an_allocating_constructor_is_refused_before_torch_runs_it(
        tmp_path, call, name):
    pth = _checkpoint_with_pickle(tmp_path / "t.pth", b"\x80\x02}X\x01\x00\x00\x00w" + call + b"s.")
    code = ("import resource, sys\n"
            "from edg.cluster.cli import main\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "rc = main(sys.argv[1:])\n"
            "print('RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
            "sys.exit(rc)\n")
    p = subprocess.run([sys.executable, "-c", code, "import", "teacher", "--src", str(pth), "--out",
                        str(tmp_path / "teacher.pt")], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert [ln for ln in p.stderr.splitlines() if ln.strip()] == [
        f"edg import: error: {pth}: the checkpoint calls {name}, which allocates what its arguments ask and which "
        "a checkpoint of tensors never needs; refused without running it"]
    grew = int(next(ln for ln in p.stdout.splitlines() if ln.startswith("RSS_KIB")).split()[1]) / 1024
    assert grew < 200, f"peak RSS grew {grew:.0f} MiB"


def test_ordinary_checkpoints_still_load(tmp_path):
    import argparse

    import torch
    from edg.edg_core.safe_pickle import safe_torch_load
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "args": argparse.Namespace(lr=0.1), "epoch": 3,
             "names": ["a", "b"], "ba": None}
    torch.save(state, tmp_path / "c.pth")
    back = safe_torch_load(tmp_path / "c.pth", [argparse.Namespace])
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["args"].lr == 0.1 and back["epoch"] == 3


def test_the_checkpoint_loader_prescans_too(tmp_path):
    """Resumes, edg predict and the model loaders read checkpoints through train.io.checkpoint.load_checkpoint:
    a checkpoint calling bytearray(1.5 GiB) is refused there too, in one line, without torch running it."""
    from edg.train.io.checkpoint import CheckpointError, load_checkpoint
    call = _global("builtins", "bytearray") + _int(3 * GIB // 2) + b"\x85R"
    pth = _checkpoint_with_pickle(tmp_path / "best.pt", b"\x80\x02}X\x01\x00\x00\x00w" + call + b"s.")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(pth)
    assert "calls builtins.bytearray" in str(e.value) and "refused without running it" in str(e.value)
    assert "\n" not in str(e.value)

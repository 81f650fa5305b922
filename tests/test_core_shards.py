import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from edg.edg_core import Molecule, ShardError
from edg.edg_core.grid import grid_for_positions
from edg.edg_core.readers import open_source
from edg.edg_core.shards import (
    ShardWriter,
    decode_images_u8,
    encode_images,
    encode_sample,
    iter_shard,
    read_samples,
    sample_key,
    sample_molecule,
    shard_keys,
    webdataset_pipeline,
)


def _full_sample(rng, mol):
    grid = grid_for_positions(mol.pos)
    ed = rng.random(grid.shape).astype(np.float16)
    esp = (rng.standard_normal(grid.shape) * 0.05).astype(np.float16)
    edimg = rng.integers(0, 256, (6, 4, 32, 32), dtype=np.uint8)
    stimg = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    fu, fs, edp = rng.standard_normal(768), rng.standard_normal(512), rng.standard_normal(768)
    return dict(grid=grid, ed=ed, esp=esp, edimg=edimg, stimg=stimg, fu=fu.astype(np.float32),
                fs=fs.astype(np.float32), edp=edp.astype(np.float32))


@pytest.mark.parametrize("encoding", ["u8z", "png"])
def test_round_trip_bit_exact(tmp_path, encoding):
    rng = np.random.default_rng(0)
    mols = list(open_source("embedded:rmd17?limit=3").molecules())
    parts = [_full_sample(rng, m) for m in mols]
    with ShardWriter(tmp_path, maxcount=2) as w:
        for m, p in zip(mols, parts):
            w.write(encode_sample(m, image_encoding=encoding, **p))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["shard-000000.tar", "shard-000000.tar.keys",
                                                          "shard-000001.tar", "shard-000001.tar.keys"]
    out = list(read_samples(tmp_path, torch_tensors=False))
    assert [d["meta"]["id"] for d in out] == [m.id for m in mols]
    for d, m, p in zip(out, mols, parts):
        back = sample_molecule(d)
        assert np.array_equal(back.pos, m.pos) and back.pos.dtype == np.float64
        assert np.array_equal(back.z, m.z)
        assert np.array_equal(back.labels["forces"], m.labels["forces"])
        assert back.labels["energy"] == m.labels["energy"]
        assert d["grid"] == p["grid"]
        assert np.array_equal(d["ed"], p["ed"].astype(np.float32))
        assert np.array_equal(d["esp"], p["esp"].astype(np.float32))
        assert np.array_equal(np.rint(d["edimg"] * 255).astype(np.uint8), p["edimg"])
        assert np.array_equal(np.rint(d["stimg"] * 255).astype(np.uint8), p["stimg"])
        for k in ("fu", "fs", "edp"):
            assert np.array_equal(d[k], p[k])


def test_torch_decoding_and_float_images():
    import torch
    rng = np.random.default_rng(1)
    img = torch.tensor(rng.random((6, 4, 16, 16)), dtype=torch.float32)
    for enc in ("u8z", "png"):
        back = decode_images_u8(encode_images(img, enc), enc)
        assert np.abs(back / 255.0 - img.numpy()).max() <= 0.5 / 255 + 1e-7


def test_writer_abort_leaves_no_partial_shard(tmp_path):
    mols = list(open_source("embedded:qm9?limit=3").molecules())
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, maxcount=10) as w:
            w.write(encode_sample(mols[0]))
            raise RuntimeError("crash mid-shard")
    assert list(tmp_path.iterdir()) == []
    with ShardWriter(tmp_path, maxcount=10) as w:
        w.write(encode_sample(mols[0]))
    with ShardWriter(tmp_path, maxcount=10) as w:  # resume continues numbering
        w.write(encode_sample(mols[1]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar", "shard-000000.tar.keys",
                                                          "shard-000001.tar", "shard-000001.tar.keys"]
    assert shard_keys(tmp_path) == {sample_key(mols[0].id), sample_key(mols[1].id)}


def test_truncated_and_corrupt_shards_are_named(tmp_path):
    mols = list(open_source("embedded:qm9?limit=4").molecules())
    with ShardWriter(tmp_path / "ok", maxcount=10) as w:
        for m in mols:
            w.write(encode_sample(m))
    good = (tmp_path / "ok" / "shard-000000.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good[: len(good) // 2 + 100])
    with pytest.raises(ShardError, match="cut.tar"):
        list(read_samples(cut))
    # a member whose bytes are garbage: the error names the shard, the key and the member
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as t:
        import io
        for name, data in (("qm9:1.meta.json", json.dumps({"schema": 1, "id": "qm9:1", "charge": 0,
                                                            "multiplicity": 1, "labels": {}}).encode()),
                           ("qm9:1.pos.npy", b"not an npy file")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    with pytest.raises(ShardError, match=r"bad.tar:qm9:1: member 'pos.npy'"):
        list(read_samples(bad))
    wrong = tmp_path / "old.tar"
    with tarfile.open(wrong, "w") as t:
        import io
        data = json.dumps({"schema": 99, "id": "x"}).encode()
        info = tarfile.TarInfo("x.meta.json")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with pytest.raises(ShardError, match="schema version 99"):
        list(read_samples(wrong))
    with pytest.raises(ShardError, match="does not exist"):
        list(read_samples(tmp_path / "missing.tar"))


def test_webdataset_pipeline_splits_by_worker(tmp_path):
    import torch
    mols = list(open_source("embedded").molecules())
    with ShardWriter(tmp_path, maxcount=10) as w:
        for m in mols:
            w.write(encode_sample(m))
    ds = webdataset_pipeline(tmp_path)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    ids = [d["meta"]["id"] for d in loader]
    assert sorted(ids) == sorted(m.id for m in mols)  # each sample exactly once across workers
    assert isinstance(next(iter(ds))["pos"], torch.Tensor)
    cut = tmp_path / "shard-000003.tar"
    cut.write_bytes(cut.read_bytes()[:700])
    with pytest.raises(ShardError):
        list(webdataset_pipeline(tmp_path))


def _edg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edg.cluster.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_convert_resume_and_failures(tmp_path):
    xyz = tmp_path / "in.xyz"
    xyz.write_text("1\nid=a\nH 0 0 0\n1\nid=b\nZz 0 0 0\n2\nid=c\nH 0 0 0\nH 0 0 nan\n2\nid=d\nH 0 0 0\nH 0 0 0.7\n")
    r = _edg("data", "convert", "--input", str(xyz), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "done 2, skipped 0, failed 2" in r.stdout
    fails = [json.loads(x) for x in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert {f["record"] for f in fails} == {"b", "c"}
    assert any("Zz" in f["reason"] for f in fails) and any("non-finite" in f["reason"] for f in fails)
    r = _edg("data", "convert", "--input", str(xyz), "--out", str(tmp_path / "out"))
    assert "done 0, skipped 2, failed 0" in r.stdout
    assert len((tmp_path / "out" / "failures.jsonl").read_text().splitlines()) == 2  # one entry per bad record
    assert [d["meta"]["id"] for d in read_samples(tmp_path / "out")] == ["a", "d"]


def test_cli_split_qm9_and_rmd17(tmp_path, rmd17_root):
    r = _edg("data", "split", "qm9", "--out", str(tmp_path / "qm9.npz"))
    assert r.returncode == 0, r.stderr
    d = np.load(tmp_path / "qm9.npz")
    assert (len(d["train"]), len(d["valid"]), len(d["test"])) == (110_000, 10_000, 10_831)
    assert d["train"][:3].tolist() == [114631, 102124, 57491] and d["train"].min() >= 1
    r = _edg("data", "split", f"rmd17:ethanol?root={rmd17_root}", "--out", str(tmp_path / "e.npz"))
    assert r.returncode == 0, r.stderr
    e = np.load(tmp_path / "e.npz")
    assert (len(e["train"]), len(e["valid"]), len(e["test"])) == (950, 50, 1000)
    r = _edg("data", "split", "rmd17:ethanol?root=/nonexistent", "--out", str(tmp_path / "x.npz"))
    assert r.returncode == 2 and "rMD17 data not found" in r.stderr and not (tmp_path / "x.npz").exists()


def test_cli_help_and_info():
    r = _edg("--help")
    assert r.returncode == 0 and "data" in r.stdout
    r = _edg("data", "info", "embedded", "--json")
    assert json.loads(r.stdout)["molecules"] == 80


def test_molecule_survives_shard_with_charge_and_smiles(tmp_path):
    m = Molecule(z=[8, 1], pos=[[0, 0, 0], [0, 0, 0.97]], id="OH-radical.x/1", charge=0, smiles="[OH]")
    with ShardWriter(tmp_path) as w:
        w.write(encode_sample(m))
    (d,) = list(iter_shard(tmp_path / "shard-000000.tar"))
    assert d["__key__"].startswith("OH-radical_x_1~")  # sanitised + a hash of the id: see sample_key
    back = sample_molecule(next(read_samples(tmp_path)))
    assert back.id == m.id and back.multiplicity == 2 and back.smiles == "[OH]"


def test_shards_on_an_fsspec_filesystem(monkeypatch):
    """Shard folders may be fsspec URLs: write, resume numbering, list, read, key scan (from the key indexes
    uploaded beside the shards) and stream, through fsspec's in-memory file system (the same code path as
    s3:// or gs://)."""
    import fsspec
    import torch
    from edg.edg_core.shards import indexed_keys, shard_paths
    url = "memory://edg-test/shards"
    fs = fsspec.filesystem("memory")
    if fs.exists("/edg-test"):
        fs.rm("/edg-test", recursive=True)
    mols = list(open_source("embedded:qm9?limit=5").molecules())
    with ShardWriter(url, maxcount=2) as w:
        for m in mols[:4]:
            w.write(encode_sample(m))
    fs.pipe("/edg-test/shards/shard-000007.tar.keys", b"{}")  # left by a writer killed before its upload
    with ShardWriter(url, maxcount=2) as w:  # a second run continues the numbering
        w.write(encode_sample(mols[4]))
    assert [p.rsplit("/", 1)[-1] for p in sorted(fs.glob("/edg-test/shards/*.tar"))] == \
        ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [p.rsplit("/", 1)[-1] for p in sorted(fs.glob("/edg-test/shards/*.keys"))] == \
        ["shard-000000.tar.keys", "shard-000001.tar.keys", "shard-000002.tar.keys"]
    assert shard_paths(url) == [f"memory:///edg-test/shards/shard-00000{i}.tar" for i in range(3)]
    assert indexed_keys(f"{url}/shard-000002.tar") == {sample_key(mols[4].id)}
    assert [d["meta"]["id"] for d in read_samples(url)] == [m.id for m in mols]
    opened = _opened(monkeypatch)
    assert shard_keys(url) == {sample_key(m.id) for m in mols}
    assert opened and all(p.endswith(".tar.keys") for p in opened)  # one small read per shard, no tar header
    loader = torch.utils.data.DataLoader(webdataset_pipeline(url), batch_size=None, num_workers=0)
    assert sorted(d["meta"]["id"] for d in loader) == sorted(m.id for m in mols)
    with fs.open("/edg-test/shards/shard-000001.tar", "rb") as f:
        data = f.read()
    with fs.open("/edg-test/shards/shard-000001.tar", "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ShardError, match="edg-test/shards/shard-000001.tar: truncated"):
        list(read_samples(url))
    with pytest.raises(ShardError, match="edg-test/shards/shard-000001.tar: truncated"):
        shard_keys(url)  # its index records the whole shard's size: not trusted, the scan finds the damage
    with pytest.raises(ShardError, match="no .tar shards"):
        list(read_samples("memory://edg-test/empty"))
    with pytest.raises(RuntimeError):
        with ShardWriter("memory://edg-test/aborted") as w:
            w.write(encode_sample(mols[0]))
            raise RuntimeError("crash mid-shard")
    assert not fs.exists("/edg-test/aborted") or not fs.glob("/edg-test/aborted/*.tar*")
    fs.rm("/edg-test", recursive=True)


# ---------------------------------------------------------------- the key index beside each shard
def _opened(monkeypatch):
    """Record every file ``edg_core.shards`` opens (shards, key indexes), through the real ``open_read``."""
    import edg.edg_core.shards as shards
    seen, real = [], shards.open_read

    def spy(path):
        seen.append(str(path))
        return real(path)
    monkeypatch.setattr(shards, "open_read", spy)
    return seen


def _five_in_three_shards(out):
    mols = list(open_source("embedded:qm9?limit=5").molecules())
    with ShardWriter(out, maxcount=2) as w:
        for m in mols:
            w.write(encode_sample(m))
    return mols


def test_shard_keys_reads_each_shards_key_index_and_not_the_tar(tmp_path, monkeypatch):
    from edg.edg_core.shards import indexed_keys, shard_paths
    mols = _five_in_three_shards(tmp_path)
    assert shard_paths(tmp_path) == [str(tmp_path / f"shard-00000{i}.tar") for i in range(3)]  # no index listed
    index = json.loads((tmp_path / "shard-000002.tar.keys").read_text())
    assert index == {"format": "edg-shard-keys", "version": 1, "shard": "shard-000002.tar",
                     "bytes": (tmp_path / "shard-000002.tar").stat().st_size, "samples": 1,
                     "keys": [sample_key(mols[4].id)]}
    for i in range(3):  # what the index holds is what a scan of the tar headers finds
        with tarfile.open(tmp_path / f"shard-00000{i}.tar") as t:
            assert indexed_keys(str(tmp_path / f"shard-00000{i}.tar")) == {m.name.partition(".")[0] for m in t}
    opened = _opened(monkeypatch)
    assert shard_keys(tmp_path) == {sample_key(m.id) for m in mols}
    assert sorted(opened) == [str(tmp_path / f"shard-00000{i}.tar.keys") for i in range(3)]  # no tar read


def _index_variants(good: bytes) -> dict[str, bytes]:
    d = json.loads(good)

    def edit(**kw):
        return json.dumps({**d, **kw}).encode()
    return {
        "garbage": b"\x00\xff not json at all",
        "cut short": good[: len(good) // 2],
        "not UTF-8": good.replace(b"edg-shard-keys", b"edg-shard-k\xffys"),
        "nested too deep": b"[" * 200_000 + b"]" * 200_000,
        "a list": json.dumps(d["keys"]).encode(),
        "another shard's": edit(shard="shard-000000.tar"),
        "another format": edit(format="something-else"),
        "another version": edit(version=2),
        "version true": edit(version=True),
        "size of another shard": edit(bytes=d["bytes"] + 512),
        "size as a string": edit(bytes=str(d["bytes"])),
        "count off by one": edit(samples=d["samples"] + 1),
        "a key that is no key": edit(keys=["../../etc/passwd", *d["keys"][1:]]),
        "a key too long": edit(keys=["k" * 65, *d["keys"][1:]]),
        "a number for a key": edit(keys=[7, *d["keys"][1:]]),
        "an extra field": edit(extra=1),
        "a field twice": good[:-1] + b',"samples":' + str(d["samples"]).encode() + b"}",
        "over the size cap": good + b" " * 64,
    }


@pytest.mark.parametrize("damage", list(_index_variants(b'{"format":"","keys":[],"bytes":0,"samples":0,'
                                                         b'"shard":"","version":1}')))
def test_a_stale_damaged_or_oversized_key_index_falls_back_to_the_tar(tmp_path, monkeypatch, damage):
    import edg.edg_core.shards as shards
    mols = _five_in_three_shards(tmp_path)
    index = tmp_path / "shard-000001.tar.keys"
    good = index.read_bytes()
    index.write_bytes(_index_variants(good)[damage])
    if damage == "over the size cap":
        monkeypatch.setattr(shards, "MAX_KEY_INDEX_BYTES", len(good) + 32)
    opened = _opened(monkeypatch)
    assert shard_keys(tmp_path) == {sample_key(m.id) for m in mols}  # the real keys, from the tar
    assert str(tmp_path / "shard-000001.tar") in opened
    assert str(tmp_path / "shard-000000.tar") not in opened  # the other shards still use their index


def test_a_shard_replaced_after_its_index_or_of_an_older_run_is_scanned(tmp_path, monkeypatch):
    from edg.edg_core.shards import indexed_keys
    mols = _five_in_three_shards(tmp_path / "run")
    others = list(open_source("embedded:qm9?limit=12").molecules())[8:12]
    with ShardWriter(tmp_path / "other", maxcount=4) as w:
        for m in others:
            w.write(encode_sample(m))
    shard = tmp_path / "run" / "shard-000001.tar"
    replacement = (tmp_path / "other" / "shard-000000.tar").read_bytes()
    assert len(replacement) != shard.stat().st_size
    shard.write_bytes(replacement)  # e.g. copied over by hand: the old index no longer describes it
    assert indexed_keys(str(shard)) is None
    want = {sample_key(m.id) for m in [*mols[:2], *others, mols[4]]}
    assert shard_keys(tmp_path / "run") == want
    (tmp_path / "run" / "shard-000002.tar.keys").unlink()  # a shard of a run before key indexes
    opened = _opened(monkeypatch)
    assert shard_keys(tmp_path / "run") == want
    assert {p for p in opened if p.endswith(".tar")} == {str(tmp_path / "run" / "shard-000001.tar"),
                                                         str(tmp_path / "run" / "shard-000002.tar")}
    shard.write_bytes(replacement[:1536])  # cut: the scan still says so
    with pytest.raises(ShardError, match="truncated"):
        shard_keys(tmp_path / "run")


def test_key_indexes_across_an_interrupted_writer_and_a_resume(tmp_path, monkeypatch):
    """A writer killed mid-shard leaves no index; one killed between writing the index and renaming the shard
    leaves an index without a shard, which the next writer removes; the resumed shards get their own index."""
    from pathlib import Path

    from edg.edg_core.shards import indexed_keys
    mols = list(open_source("embedded:qm9?limit=6").molecules())
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, maxcount=2) as w:
            for m in mols[:3]:
                w.write(encode_sample(m))
            raise RuntimeError("killed mid-shard")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar", "shard-000000.tar.keys"]
    real_rename = Path.rename

    def fail_rename(self, target):
        if self.name.endswith(".tar.tmp"):
            raise OSError("killed between the index and the rename")
        return real_rename(self, target)
    monkeypatch.setattr(Path, "rename", fail_rename)
    with pytest.raises(OSError, match="killed between"):
        with ShardWriter(tmp_path, maxcount=2) as w:
            for m in mols[2:4]:
                w.write(encode_sample(m))
    monkeypatch.setattr(Path, "rename", real_rename)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar", "shard-000000.tar.keys"]
    (tmp_path / "shard-000001.tar.keys").write_bytes((tmp_path / "shard-000000.tar.keys").read_bytes())  # SIGKILL
    (tmp_path / "shard-000001.tar.tmp").write_bytes(b"half")
    done = shard_keys(tmp_path)
    assert done == {sample_key(m.id) for m in mols[:2]}
    with ShardWriter(tmp_path, maxcount=2) as w:  # the resume: removes both leftovers, numbering goes on
        assert not any((tmp_path / f"shard-000001.tar{s}").exists() for s in (".keys", ".tmp"))
        for m in mols[2:]:
            if sample_key(m.id) not in done:
                w.write(encode_sample(m))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"shard-00000{i}.tar{s}" for i in range(3) for s in ("", ".keys")]
    assert [indexed_keys(str(tmp_path / f"shard-00000{i}.tar")) for i in range(3)] == \
        [{sample_key(m.id) for m in mols[i:i + 2]} for i in (0, 2, 4)]
    opened = _opened(monkeypatch)
    assert shard_keys(tmp_path) == {sample_key(m.id) for m in mols}
    assert not any(p.endswith(".tar") for p in opened)

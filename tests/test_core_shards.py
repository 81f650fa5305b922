import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from edg_core import Molecule, ShardError
from edg_core.grid import grid_for_positions
from edg_core.readers import open_source
from edg_core.shards import (
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
    assert sorted(x.name for x in tmp_path.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
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
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, cwd=cwd)


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


def test_shards_on_an_fsspec_filesystem():
    """Shard folders may be fsspec URLs: write, resume numbering, list, read, key scan and stream, through
    fsspec's in-memory file system (the same code path as s3:// or gs://)."""
    import fsspec
    import torch
    url = "memory://edg-test/shards"
    fs = fsspec.filesystem("memory")
    if fs.exists("/edg-test"):
        fs.rm("/edg-test", recursive=True)
    mols = list(open_source("embedded:qm9?limit=5").molecules())
    with ShardWriter(url, maxcount=2) as w:
        for m in mols[:4]:
            w.write(encode_sample(m))
    with ShardWriter(url, maxcount=2) as w:  # a second run continues the numbering
        w.write(encode_sample(mols[4]))
    assert [p.rsplit("/", 1)[-1] for p in sorted(fs.glob("/edg-test/shards/*.tar"))] == \
        ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [d["meta"]["id"] for d in read_samples(url)] == [m.id for m in mols]
    assert shard_keys(url) == {sample_key(m.id) for m in mols}
    loader = torch.utils.data.DataLoader(webdataset_pipeline(url), batch_size=None, num_workers=0)
    assert sorted(d["meta"]["id"] for d in loader) == sorted(m.id for m in mols)
    with fs.open("/edg-test/shards/shard-000001.tar", "rb") as f:
        data = f.read()
    with fs.open("/edg-test/shards/shard-000001.tar", "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ShardError, match="edg-test/shards/shard-000001.tar: truncated"):
        list(read_samples(url))
    with pytest.raises(ShardError, match="no .tar shards"):
        list(read_samples("memory://edg-test/empty"))
    with pytest.raises(RuntimeError):
        with ShardWriter("memory://edg-test/aborted") as w:
            w.write(encode_sample(mols[0]))
            raise RuntimeError("crash mid-shard")
    assert not fs.exists("/edg-test/aborted") or not fs.glob("/edg-test/aborted/*.tar")
    fs.rm("/edg-test", recursive=True)

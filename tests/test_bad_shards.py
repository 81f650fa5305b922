"""Damaged or hostile shards (issues 12 and 23): decompression bombs, oversized members, a corrupt header in the
middle of a tar, bad samples in a training pass, member names that escape, keys used twice, headers that lie about
sizes, JSON that is not an object or nests too deep, arrays that disagree. Each costs only the samples it touches,
and is named, in every reader."""
from __future__ import annotations

import io
import logging
import re
import struct
import tarfile
import zlib

import numpy as np
import pytest
from edg.edg_core.errors import ShardError
from edg.edg_core.readers import open_source
from edg.edg_core.shards import (
    ShardWriter,
    decode_images_u8,
    encode_sample,
    iter_shard,
    npy_bytes,
    read_samples,
    shard_keys,
)


def _convert(out, n=5, **images):
    mols = list(open_source(f"embedded:qm9?limit={n}").molecules())
    with ShardWriter(out, maxcount=100) as w:
        for m in mols:
            w.write(encode_sample(m, **images))
    return [m.id for m in mols], out / "shard-000000.tar"


def test_u8z_bomb_is_refused_before_inflating():
    huge = struct.pack("<4I", 6, 4, 60000, 60000)  # 86 GB announced
    with pytest.raises(ValueError, match=r"would decode to 86400000000 bytes, over the cap"):
        decode_images_u8(huge + zlib.compress(b"\0" * 10), "u8z")
    lying = struct.pack("<4I", 1, 1, 2, 2) + zlib.compress(b"\0" * (1 << 24))  # 4 bytes announced, 16 MB inside
    with pytest.raises(ValueError, match="does not inflate to the 4 bytes"):
        decode_images_u8(lying, "u8z")
    ok = np.arange(24, dtype=np.uint8).reshape(1, 2, 3, 4)
    good = struct.pack("<4I", *ok.shape) + zlib.compress(ok.tobytes())
    assert (decode_images_u8(good, "u8z") == ok).all()


def test_a_bomb_member_in_a_shard_names_the_shard_and_key(tmp_path):
    ids, shard = _convert(tmp_path, 3)
    bomb = struct.pack("<4I", 1, 1, 2, 2) + zlib.compress(b"\0" * (1 << 24))
    with tarfile.open(tmp_path / "evil.tar", "w", format=tarfile.USTAR_FORMAT) as out, tarfile.open(shard) as src:
        for m in src:
            out.addfile(m, src.extractfile(m))
            if m.name == "qm9:2.meta.json":
                info = tarfile.TarInfo("qm9:2.edimg.u8z")
                info.size = len(bomb)
                out.addfile(info, io.BytesIO(bomb))
    with pytest.raises(ShardError, match=r"evil\.tar:qm9:2: member 'edimg\.u8z' cannot be decoded .*does not inflate"):
        list(read_samples(tmp_path / "evil.tar"))


def test_an_oversized_member_is_not_read_and_fails_only_its_sample(tmp_path):
    ids, shard = _convert(tmp_path, 3, fu=np.zeros(5000, np.float32))  # fu.npy is ~20 kB
    raw = list(iter_shard(shard, max_member_bytes=10_000))
    assert [r["__key__"] for r in raw] == ids
    assert all("fu.npy" not in r and "over the cap of 10000" in r["__error__"] for r in raw)
    assert all("__error__" not in r for r in iter_shard(shard))


def _corrupt_header(path, member: str) -> int:
    with tarfile.open(path) as t:
        off = next(m.offset for m in t.getmembers() if m.name == member)
    data = bytearray(path.read_bytes())
    data[off:off + 20] = b"\xff" * 20  # the name field: the header checksum no longer matches
    path.write_bytes(bytes(data))
    return off


def test_a_corrupt_header_mid_tar_is_reported_and_the_samples_after_it_are_kept(tmp_path, caplog):
    ids, shard = _convert(tmp_path, 6)
    off = _corrupt_header(shard, f"{ids[2]}.meta.json")
    with tarfile.open(shard) as t:  # what Python's tarfile does alone: stops there, silently
        assert len({m.name.partition(".")[0] for m in t.getmembers()}) == 2
    with caplog.at_level(logging.WARNING, logger="edg.edg_core.shards"):
        raw = list(iter_shard(shard))
    assert [r["__key__"] for r in raw] == ids
    assert [r["__key__"] for r in raw if "__error__" in r] == [ids[2]]
    assert f"corrupt tar header at byte {off}" in raw[2]["__error__"]
    assert f"corrupt tar header at byte {off}" in caplog.text and "3 samples after it were read" in caplog.text
    assert shard_keys(tmp_path) == set(ids)  # resume sees every sample the shard holds
    got = []
    with pytest.raises(ShardError, match=rf"shard-000000\.tar:{ids[2]}: next to a corrupt tar header"):
        for s in read_samples(tmp_path, torch_tensors=False):
            got.append(s["meta"]["id"])
    assert got == ids[:2]


def test_training_reader_skips_bad_samples_up_to_a_threshold(tmp_path, monkeypatch):
    from edg.train.data.shards import ShardImages, synthetic_images
    mols = list(open_source("embedded:qm9?limit=6").molecules())
    with ShardWriter(tmp_path, maxcount=100) as w:
        for i, m in enumerate(mols):
            ed, st = synthetic_images(m.z, m.pos, 16 if i == 1 else 32)  # sample 1 rendered at the wrong size
            s = encode_sample(m, edimg=ed, stimg=st)
            if i == 4:
                del s["pos.npy"]  # a sample missing a member
            w.write(s)
    monkeypatch.delenv("EDG_MAX_BAD_SAMPLES", raising=False)
    ds = ShardImages(tmp_path, "imageed", img_size=32, n_views=6, split="all")
    keys = [s["key"] for s in ds]
    assert keys == [m.id for i, m in enumerate(mols) if i not in (1, 4)]
    assert len(ds.bad) == 2
    assert "edimg has shape (6, 4, 16, 16)" in ds.bad[0] and "lacks member(s) ['pos.npy']" in ds.bad[1]
    monkeypatch.setenv("EDG_MAX_BAD_SAMPLES", "1")
    with pytest.raises(ShardError, match=r"2 bad samples in one pass, over max_bad_samples=1"):
        list(ShardImages(tmp_path, "imageed", img_size=32, n_views=6, split="all"))


def test_two_samples_with_one_key_are_not_merged_silently(tmp_path):
    mols = list(open_source("embedded:qm9?limit=2").molecules())
    with ShardWriter(tmp_path, maxcount=100) as w:
        w.write(encode_sample(mols[0]))
        twin = encode_sample(mols[1])
        twin["__key__"] = mols[0].id  # written by something that did not go through sample_key
        w.write(twin)
    (raw,) = list(iter_shard(tmp_path / "shard-000000.tar"))
    assert "appears twice: two samples share the key 'qm9:1'" in raw["__error__"]


# ---------------------------------------------------------------- issue 23: shards that lie
def _members(n=5) -> list[tuple[str, bytes]]:
    """(name, bytes) of ``n`` good samples, in the order ShardWriter writes them."""
    out = []
    for m in open_source(f"embedded:qm9?limit={n}").molecules():
        s = encode_sample(m)
        out += [(f"{s['__key__']}.{k}", s[k]) for k in sorted(k for k in s if not k.startswith("__"))]
    return out


def _tar(path, members, claimed: dict | None = None) -> None:
    """A tar file of ``members`` assembled block by block, so that a header may claim a size (``claimed``:
    name -> bytes) other than the data that follows it, as a hostile writer would."""
    blocks = []
    for name, data in members:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = (claimed or {}).get(name, len(data)), 0o444, 0
        blocks += [info.tobuf(tarfile.GNU_FORMAT), data, b"\0" * (-len(data) % 512)]
    path.write_bytes(b"".join(blocks) + b"\0" * 1024)


def _bad(path) -> dict[str, str]:
    return {r["__key__"]: r["__error__"] for r in iter_shard(path) if "__error__" in r}


def test_absolute_and_dotdot_member_names_are_bad_samples_that_are_not_read(tmp_path):
    members = _members(3)
    evil = [("/etc/qm9:9.meta.json", b"{}"), ("../../qm9:8.z.npy", b"x"), ("qm9:7/../../x.pos.npy", b"y")]
    _tar(tmp_path / "s.tar", members[:3] + evil + members[3:])
    raw = list(iter_shard(tmp_path / "s.tar"))
    assert [r["__key__"] for r in raw if "__error__" not in r] == ["qm9:1", "qm9:2", "qm9:3"]
    bad = _bad(tmp_path / "s.tar")
    assert bad == {"/etc/qm9:9": "member name '/etc/qm9:9.meta.json' is an absolute path",
                   "../../qm9:8": "member name '../../qm9:8.z.npy' has a '..' component",
                   "qm9:7/../../x": "member name 'qm9:7/../../x.pos.npy' has a '..' component"}
    assert all(len(r) == 3 for r in raw if "__error__" in r)  # key, url, error: no member bytes were kept


def test_a_key_used_twice_anywhere_in_a_shard_is_a_bad_sample(tmp_path):
    members = _members(3)
    again = [(n, d) for n, d in members if n.startswith("qm9:1.")]
    _tar(tmp_path / "s.tar", members + again)  # qm9:1, qm9:2, qm9:3, qm9:1 again (not adjacent)
    raw = list(iter_shard(tmp_path / "s.tar"))
    assert [r["__key__"] for r in raw] == ["qm9:1", "qm9:2", "qm9:3", "qm9:1"]
    assert "__error__" not in raw[0] and "__error__" not in raw[2]
    assert raw[3]["__error__"].startswith("the key 'qm9:1' is used again by another sample of this shard")


def test_a_member_claiming_10_gb_costs_only_its_sample(tmp_path):
    members = _members(4)
    liar = next(n for n, _ in members if n.startswith("qm9:2.") and n.endswith("meta.json"))
    _tar(tmp_path / "s.tar", members, claimed={liar: 10 * 10**9})
    raw = list(iter_shard(tmp_path / "s.tar"))
    assert [r["__key__"] for r in raw] == ["qm9:1", "qm9:2", "qm9:3", "qm9:4"]
    assert list(_bad(tmp_path / "s.tar")) == ["qm9:2"]
    assert "member qm9:2.meta.json claims 10000000000 bytes but the shard ends" in raw[1]["__error__"]
    good = [s["meta"]["id"] for s in _decodable(tmp_path / "s.tar")]
    assert good == ["qm9:1", "qm9:3", "qm9:4"]


def _decodable(path) -> list[dict]:
    from edg.edg_core.shards import decode_sample
    out = []
    for r in iter_shard(path):
        try:
            out.append(decode_sample(r, torch_tensors=False))
        except ShardError:
            pass
    return out


def _with(members, key: str, member: str, data: bytes):
    return [(n, data if n == f"{key}.{member}" else d) for n, d in members]


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("member, data, reason", [
    ("meta.json", b"[1, 2]", "meta.json holds a JSON list, not an object"),
    ("meta.json", b"{not json", "meta.json is not JSON (JSONDecodeError"),
    ("meta.json", DEEP, "meta.json is nested too deep to parse"),
    ("meta.json", b'{"schema": 1, "id": 7, "charge": 0, "multiplicity": 1}',
     "meta.json: 'id' is '7', not a JSON string"),
    ("pos.npy", None, "pos has shape (2, 3) but z has 4 atoms: expected (4, 3)"),
    ("z.npy", b"\x93NUMPY garbage", "member 'z.npy' cannot be decoded"),
])
def test_every_decoding_error_is_a_named_bad_sample_in_every_reader(member, data, reason, tmp_path, capsys,
                                                                     monkeypatch):
    from edg.cluster.cli import main
    from edg.train.data.shards import raw_samples
    if data is None:  # z/pos length mismatch
        data = npy_bytes(np.zeros((2, 3)))
    (tmp_path / "s").mkdir()
    _tar(tmp_path / "s" / "s-000000.tar", _with(_members(4), "qm9:2", member, data))
    # the raw reader extraction uses
    errors = {r["__key__"]: r.get("__error__") for r in raw_samples(tmp_path / "s")}
    assert [k for k, e in errors.items() if e] == ["qm9:2"] and reason in errors["qm9:2"]
    # edg data info: counted as invalid, named, the scan goes on
    assert main(["data", "info", str(tmp_path / "s"), "--json"]) == 0
    import json
    info = json.loads(capsys.readouterr().out)
    assert (info["molecules"], info["invalid"]) == (3, 1) and reason in info["first_invalid"][0]
    # training's reader (webdataset pipeline): one bad sample within --max-bad-samples, over it a clear stop
    from edg.edg_core.shards import webdataset_pipeline
    out = list(webdataset_pipeline(tmp_path / "s", torch_tensors=False, bad_samples="yield"))
    assert [s["__key__"] for s in out if "__error__" in s] == ["qm9:2"] and reason in out[1]["__error__"]
    with pytest.raises(ShardError, match=rf"s-000000\.tar:qm9:2: {re.escape(reason)}"):
        list(read_samples(tmp_path / "s", torch_tensors=False))


def test_json_bad_samples_count_toward_max_bad_samples_in_training(tmp_path, monkeypatch):
    from edg.train.data.shards import ShardImages, synthetic_images
    mols = list(open_source("embedded:qm9?limit=5").molecules())
    with ShardWriter(tmp_path, maxcount=100) as w:
        for i, m in enumerate(mols):
            ed, st = synthetic_images(m.z, m.pos, 32)
            s = encode_sample(m, edimg=ed, stimg=st)
            if i == 1:
                s["meta.json"] = DEEP
            if i == 3:
                s["pos.npy"] = npy_bytes(np.zeros((1, 3)))
            w.write(s)
    monkeypatch.delenv("EDG_MAX_BAD_SAMPLES", raising=False)
    ds = ShardImages(tmp_path, "imageed", img_size=32, n_views=6, split="all", max_bad_samples=2)
    assert [s["key"] for s in ds] == [m.id for i, m in enumerate(mols) if i not in (1, 3)]
    assert "nested too deep" in ds.bad[0] and "pos has shape (1, 3)" in ds.bad[1]
    with pytest.raises(ShardError, match=r"2 bad samples in one pass, over max_bad_samples=1"):
        list(ShardImages(tmp_path, "imageed", img_size=32, n_views=6, split="all", max_bad_samples=1))


def test_resume_key_scan_reads_past_a_lying_header(tmp_path):
    members = _members(4)
    liar = next(n for n, _ in members if n.startswith("qm9:2.") and n.endswith("z.npy"))
    _tar(tmp_path / "s.tar", members, claimed={liar: 10 * 10**9})
    assert shard_keys(tmp_path / "s.tar") == {"qm9:1", "qm9:2", "qm9:3", "qm9:4"}  # no index: a header scan

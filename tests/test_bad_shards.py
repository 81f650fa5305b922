"""Damaged or hostile shards (issue 12): decompression bombs, oversized members, a corrupt header in the middle
of a tar, bad samples in a training pass. Each costs only the samples it touches, and is named."""
from __future__ import annotations

import io
import logging
import struct
import tarfile
import zlib

import numpy as np
import pytest

from edg.edg_core.errors import ShardError
from edg.edg_core.readers import open_source
from edg.edg_core.shards import ShardWriter, decode_images_u8, encode_sample, iter_shard, read_samples, shard_keys


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

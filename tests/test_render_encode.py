"""Render output off the render loop (issue 24, item 2): ``u8zst`` samples made per batch by
``render.encode`` and ``RenderWorker.encode_batch``: shards of the earlier encodings still read, the images are
the earlier path's within one grey level, one host copy per batch, and a hostile zstd member costs only its
sample."""
from __future__ import annotations

import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
import zstandard
from edg.edg_core.readers import open_source
from edg.edg_core.shards import (
    ShardWriter,
    decode_images_u8,
    decode_sample,
    encode_images,
    encode_sample,
    read_samples,
)
from edg.render import RenderConfig
from edg.render.synthetic import promolecule_fields
from edg.render.worker import Fields, RenderWorker
from edg.train.data.shards import ShardImages

SIZE = 24  # px: small renders keep the test fast; the codec path is the same as at 224


@pytest.fixture(scope="module")
def molecules():
    """Five embedded QM9 molecules with promolecule fields; the third has none (structure images only)."""
    mols = list(open_source("embedded:qm9?limit=5").molecules())
    fields = [Fields(grid, ed, esp) for ed, esp, grid in map(promolecule_fields, mols)]
    fields[2] = None
    return mols, fields


def _worker(batch_size: int = 2) -> RenderWorker:
    return RenderWorker(RenderConfig(image_size=SIZE, batch_size=batch_size), device="cpu")


def _old_u8z(images: np.ndarray) -> bytes:
    """A ``u8z`` member as EDG wrote it before issue 24, from its format alone: the (V, C, H, W) uint32 header,
    then the raw uint8 deflated by the standard library's zlib at level 1."""
    return struct.pack("<4I", *images.shape) + zlib.compress(images.tobytes(), 1)


def test_shards_of_the_earlier_encodings_still_read(tmp_path, molecules):
    mols, _ = molecules
    rng = np.random.default_rng(0)
    ed = [rng.integers(0, 256, (6, 4, SIZE, SIZE), dtype=np.uint8) for _ in mols[:3]]
    st = [rng.integers(0, 256, (4, 3, SIZE, SIZE), dtype=np.uint8) for _ in mols[:3]]
    with ShardWriter(tmp_path, "render", maxcount=2) as w:  # old shard, then one mixing old and new samples
        for i, (m, e, s) in enumerate(zip(mols, ed, st)):
            sample = encode_sample(m)
            if i == 0:
                sample.update({"edimg.u8z": _old_u8z(e), "stimg.u8z": _old_u8z(s)})
            elif i == 1:
                sample.update({"edimg.png": encode_images(e, "png"), "stimg.png": encode_images(s, "png")})
            else:
                sample = encode_sample(m, edimg=e, stimg=s)  # today's default
                assert {"edimg.u8zst", "stimg.u8zst"} <= set(sample)
            w.write(sample)
    got = {d["__key__"]: d for d in read_samples(tmp_path, torch_tensors=False)}
    for m, e, s in zip(mols, ed, st):
        assert np.array_equal(np.rint(got[m.id]["edimg"] * 255).astype(np.uint8), e)
        assert np.array_equal(np.rint(got[m.id]["stimg"] * 255).astype(np.uint8), s)
    loaded = {x["key"]: x["edimg"] for x in ShardImages(tmp_path, "imageed", img_size=SIZE, n_views=6, split="all")}
    assert sorted(loaded) == sorted(m.id for m in mols[:3])
    for m, e in zip(mols, ed):
        assert loaded[m.id].dtype == torch.uint8 and np.array_equal(loaded[m.id].numpy(), e)


def test_images_are_the_earlier_paths_within_one_grey_level(molecules):
    mols, fields = molecules
    worker = _worker()
    new = {s["__key__"]: s for s in worker.render(mols, fields).samples}
    assert sorted(new) == sorted(m.id for m in mols)
    with torch.no_grad():
        batch = worker.render_batch(mols, fields)
    worker.close()
    for name, rows in batch.rows.items():
        for row, i in enumerate(rows):
            old = decode_sample(encode_sample(mols[i], image_encoding="u8z", **{name: batch.images[name][row]}),
                                uint8_images=True)[name]
            sample = new[mols[i].id]
            assert f"{name}.u8zst" in sample
            now = decode_sample(sample, uint8_images=True)[name]
            assert now.shape == old.shape
            assert int((now.int() - old.int()).abs().max()) <= 1, (mols[i].id, name)
            assert old.float().std() > 0  # the images are not blank
    assert "edimg.u8zst" not in new[mols[2].id] and "stimg.u8zst" in new[mols[2].id]
    meta = decode_sample(new[mols[0].id])["meta"]["render"]
    assert meta["ed_framing"] == batch.meta[0]["render"]["ed_framing"]


def test_one_host_copy_per_batch(molecules, monkeypatch):
    """Image data leaves the renderer's tensors once per batch of ``batch_size`` molecules: a per-molecule
    (or per-view) ``.cpu()`` / ``.to("cpu")`` / ``.numpy()`` / ``.tolist()`` of images would count more.
    Counted: calls on image tensors (..., 3 or 4, SIZE, SIZE) and on uint8 tensors of at least one image plane
    (the fields' own moves to the renderer's device are not images)."""
    mols, fields = molecules
    moves: list[tuple[str, tuple]] = []
    plane = SIZE * SIZE

    def images(t: torch.Tensor) -> bool:
        return (t.dim() >= 3 and tuple(t.shape[-3:]) in ((3, SIZE, SIZE), (4, SIZE, SIZE))
                or t.dtype == torch.uint8 and t.numel() >= plane)

    def counted(name, original, to_host=lambda *a, **k: True):
        def method(self, *args, **kwargs):
            if images(self) and to_host(*args, **kwargs):
                moves.append((name, tuple(self.shape)))
            return original(self, *args, **kwargs)
        return method

    def to_cpu(*args, **kwargs):
        target = kwargs.get("device", args[0] if args else None)
        return target is not None and not isinstance(target, torch.dtype) and torch.device(target).type == "cpu"

    for name in ("cpu", "numpy", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch.Tensor, "to", counted("to", torch.Tensor.to, to_cpu))
    worker = _worker(batch_size=2)
    res = worker.render(mols, fields)
    worker.close()
    assert len(res.samples) == 5 and not res.failures
    assert len(moves) == 3, moves  # batches of 2, 2 and 1 molecules
    sizes = [int(np.prod(shape)) for _, shape in moves]
    assert sizes[0] == 2 * (6 * 4 + 4 * 3) * plane  # ED and structure images of both molecules at once
    assert sizes[1] == (6 * 4 + 4 * 3 * 2) * plane  # the second batch has a molecule without fields


def _frame(size: int, declare: bool) -> bytes:
    """A valid zstd frame of ``size`` zero bytes, declaring its size in the header or not (made in 1 MiB
    pieces: a few KiB of output, no large buffer)."""
    c = zstandard.ZstdCompressor(level=1)
    obj = c.compressobj(size=size) if declare else c.compressobj()
    piece = bytes(1 << 20)
    return b"".join([obj.compress(piece) for _ in range(size >> 20)] + [obj.flush()])


@pytest.mark.parametrize("declare", [True, False], ids=["declares-128MiB", "no-size-inflates-128MiB"])
def test_hostile_zstd_member_costs_only_its_sample(tmp_path, molecules, declare):
    mols, _ = molecules
    shape = (6, 4, SIZE, SIZE)
    bomb = struct.pack("<4I", *shape) + _frame(128 << 20, declare)  # 128 MiB inside a 55 KiB announcement
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="u8zst frame declares (134217728 bytes|no size), not the 13824 bytes"):
            decode_images_u8(bomb, "u8zst")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"refusing the member allocated {peak} bytes"

    rng = np.random.default_rng(1)
    with ShardWriter(tmp_path, "render") as w:
        for i, m in enumerate(mols[:3]):
            s = encode_sample(m, edimg=rng.integers(0, 256, shape, dtype=np.uint8))
            if i == 1:
                s["edimg.u8zst"] = bomb
            w.write(s)
    data = ShardImages(tmp_path, "imageed", img_size=SIZE, n_views=6, split="all")
    assert [x["key"] for x in data] == [mols[0].id, mols[2].id]
    assert len(data.bad) == 1 and f"{mols[1].id}: member 'edimg.u8zst' cannot be decoded" in data.bad[0]


def test_a_frame_that_does_not_match_its_header_is_refused():
    images = np.arange(6 * 4 * 8 * 8, dtype=np.uint8).reshape(6, 4, 8, 8)
    good = encode_images(images, "u8zst")
    assert np.array_equal(decode_images_u8(good, "u8zst"), images)
    smaller = struct.pack("<4I", 6, 4, 8, 4) + good[16:]  # the header says half the bytes the frame holds
    with pytest.raises(ValueError, match="declares 1536 bytes, not the 768 bytes"):
        decode_images_u8(smaller, "u8zst")
    flipped = bytearray(good)
    flipped[-8] ^= 0xFF
    with pytest.raises(zstandard.ZstdError):
        decode_images_u8(bytes(flipped), "u8zst")
    with pytest.raises(zstandard.ZstdError, match="unused data"):  # a second frame after the first
        decode_images_u8(good + good[16:], "u8zst")


def test_a_worker_without_its_codec_refuses_to_start(monkeypatch):
    """Without zstandard (a stale environment) the worker stops before rendering, in one line, rather than
    failing every molecule into the manifest."""
    import sys

    from edg.edg_core.errors import EDGError
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard raises ImportError
    with pytest.raises(EDGError, match=r"u8zst shard images need the PyPI package zstandard: pip install"):
        RenderWorker(device="cpu")
    with pytest.raises(ValueError, match="unknown image encoding 'u9'"):
        RenderWorker(device="cpu", image_encoding="u9")
    assert RenderWorker(device="cpu", image_encoding="u8z").image_encoding == "u8z"  # needs no zstandard

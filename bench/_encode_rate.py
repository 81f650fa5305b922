"""Render output encoding (issue 24): CPU time per molecule from rendered images on the renderer's device to
shard bytes written, for 6 ED (RGB-D) + 4 structure (RGB) views at 224 px.

    python -m bench throughput            # the encode lines among the others
    python -m bench._encode_rate          # the encode lines alone
    python -m bench._encode_rate --codecs # the codec table of docs/shards.md and the loader over u8z / u8zst

Images are real render output: ``RenderWorker.render_batch`` over embedded QM9 molecules with promolecule
fields (``render.synthetic``; rendering is not timed). Timed, per molecule, with ``time.process_time`` (the CPU
time of every thread of the process, the compression pool's included):

* after: ``RenderWorker.encode_batch`` (quantise on the device, one device-to-host copy, zstd samples from the
  thread pool) and ``ShardWriter.write`` of each sample;
* before: the earlier path, ``encode_sample`` per molecule from its float images (``.cpu()``, numpy rounding,
  zlib level 1: ``u8z``) and the same writes.

The device here is the CPU, so quantising costs CPU time that a GPU would take over. torch runs one thread,
as in a Ray actor with one CPU (Ray sets ``OMP_NUM_THREADS`` to the actor's CPUs). Best of a few passes, the
two paths alternating (the machine may be shared).
"""
from __future__ import annotations

import sys
import tempfile
import time

import numpy as np
import torch

GOAL_MS = 8


def _rendered(n: int):
    """(worker, molecules, fields, RenderedBatch) for ``n`` embedded QM9 molecules at 224 px on the CPU."""
    from edg.edg_core.readers import open_source
    from edg.render import RenderConfig
    from edg.render.synthetic import promolecule_fields
    from edg.render.worker import Fields, RenderWorker
    mols = [m for m in open_source("embedded:qm9").molecules() if m.n_atoms >= 9][:n]
    fields = [Fields(grid, ed, esp) for ed, esp, grid in map(promolecule_fields, mols)]
    worker = RenderWorker(RenderConfig(image_size=224, batch_size=n), device="cpu")
    with torch.no_grad():
        batch = worker.render_batch(mols, fields)
    return worker, mols, fields, batch


def _after(worker, mols, fields, batch, out: str) -> float:
    """CPU seconds of the new path over the batch (its images cloned first, untimed: the path consumes them)."""
    from edg.edg_core.shards import ShardWriter
    from edg.render.worker import RenderedBatch
    fresh = RenderedBatch({k: v.clone() for k, v in batch.images.items()}, batch.rows,
                          [dict(m) for m in batch.meta])
    start = time.process_time()
    with ShardWriter(out, "after") as w:
        for s in worker.encode_batch(mols, fields, fresh):
            w.write(s.result())
    return time.process_time() - start


def _before(mols, batch, out: str) -> float:
    """CPU seconds of the earlier path: ``encode_sample`` per molecule from float images, ``u8z``."""
    from edg.edg_core.shards import ShardWriter, encode_sample
    images: list[dict] = [{} for _ in mols]
    for name, rows in batch.rows.items():
        for row, i in enumerate(rows):
            images[i][name] = batch.images[name][row]
    start = time.process_time()
    with ShardWriter(out, "before") as w:
        for m, im, meta in zip(mols, images, batch.meta):
            w.write(encode_sample(m, image_encoding="u8z", extra_meta=meta, **im))
    return time.process_time() - start


def encode(quick: bool) -> list[str]:
    """The encode line (this path, goal 8 ms) and the earlier path's line, measured in one run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n, passes = (2, 5) if quick else (4, 9)
        worker, mols, fields, batch = _rendered(n)
        after = before = float("inf")
        with tempfile.TemporaryDirectory(prefix="edg-bench-encode-") as tmp:
            for p in range(passes):
                after = min(after, _after(worker, mols, fields, batch, f"{tmp}/a{p}"))
                before = min(before, _before(mols, batch, f"{tmp}/b{p}"))
        worker.close()
    finally:
        torch.set_num_threads(threads)
    return [f"throughput encode: {after / n * 1e3:.1f} ms CPU per molecule (goal {GOAL_MS})",
            f"throughput encode (before): {before / n * 1e3:.1f} ms CPU per molecule"]


def encode_line(quick: bool) -> str:
    """``throughput encode: X ms CPU per molecule (goal 8)``: see the module docstring."""
    return encode(quick)[0]


# ---------------------------------------------------------------- the codec table (docs/shards.md)
def _codecs() -> dict:
    """name -> (encode(uint8 array) -> bytes, decode(bytes, shape) -> uint8 array), lossless over uint8."""
    import io
    import zlib

    from zlib_ng import zlib_ng

    def png(a):
        from PIL import Image
        v, c, h, w = a.shape
        buf = io.BytesIO()
        Image.fromarray(a.transpose(2, 0, 3, 1).reshape(h, v * w, c), "RGBA" if c == 4 else "RGB").save(
            buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def unpng(b, shape):
        from PIL import Image
        v, c, h, w = shape
        return np.asarray(Image.open(io.BytesIO(b))).reshape(h, v, w, c).transpose(1, 3, 0, 2)

    def npy(a):
        from edg.edg_core.shards import npy_bytes
        return npy_bytes(a)

    def unnpy(b, shape):
        from edg.edg_core.shards import from_npy_bytes
        return from_npy_bytes(b)

    raw = lambda lib: lambda b, shape: np.frombuffer(lib.decompress(b), np.uint8).reshape(shape)  # noqa: E731
    out = {"zlib 1 (standard library; `u8z` before)": (lambda a: zlib.compress(a, 1), raw(zlib))}
    for level in (1, 3, 6):
        out[f"zlib-ng {level}"] = ((lambda lv: lambda a: zlib_ng.compress(a, lv))(level), raw(zlib_ng))
    try:
        import zstandard
    except ImportError:
        zstandard = None
    if zstandard is not None:
        d = zstandard.ZstdDecompressor()
        for level in (-1, 1, 3, 6):
            c = zstandard.ZstdCompressor(level=level, write_checksum=True)
            out[f"zstd {level}"] = (c.compress, lambda b, shape: np.frombuffer(d.decompress(b), np.uint8
                                                                                ).reshape(shape))
    out["PNG (Pillow, level 1)"] = (png, unpng)
    out["raw .npy"] = (npy, unnpy)
    return out


def codec_rows(quick: bool) -> list[str]:
    """Markdown rows: codec, KiB per molecule, encode and decode CPU ms per molecule (one thread), over the
    uint8 render output of a few molecules."""
    from edg.render.encode import quantise_to_host
    torch.set_num_threads(1)
    n, passes = (2, 3) if quick else (4, 7)
    _, mols, _, batch = _rendered(n)
    host = quantise_to_host(batch.images)
    arrays = [np.ascontiguousarray(host[name][row]) for name in host for row in range(len(host[name]))]
    rows = ["| codec | KiB per molecule | encode, ms CPU per molecule | decode, ms CPU per molecule |",
            "|---|---|---|---|"]
    for name, (enc, dec) in _codecs().items():
        blobs = [enc(a) for a in arrays]
        for a, b in zip(arrays, blobs):
            assert np.array_equal(dec(b, a.shape), a), f"{name} is not lossless"
        best_e = best_d = float("inf")
        for _ in range(passes):
            t = time.process_time()
            for a in arrays:
                enc(a)
            best_e = min(best_e, time.process_time() - t)
            t = time.process_time()
            for a, b in zip(arrays, blobs):
                dec(b, a.shape)
            best_d = min(best_d, time.process_time() - t)
        kib = sum(len(b) for b in blobs) / n / 1024
        rows.append(f"| {name} | {kib:.1f} | {best_e / n * 1e3:.2f} | {best_d / n * 1e3:.2f} |")
    return rows


def loader_rows(quick: bool) -> list[str]:
    """The uint8 loader (``bench.throughput``'s loader line) over the same synthetic 224 px samples stored as
    ``u8z`` and as ``u8zst``: ED samples/s per core, best of alternating passes."""
    from pathlib import Path

    from edg.train.data.shards import write_synthetic_shards

    from bench.throughput import _loader_rate
    torch.set_num_threads(1)
    best = {"u8z": 0.0, "u8zst": 0.0}
    with tempfile.TemporaryDirectory(prefix="edg-bench-encode-") as tmp:
        for enc in best:
            write_synthetic_shards(Path(tmp) / enc, size=224, maxcount=20, limit=20 if quick else 40,
                                   image_encoding=enc)
        for _ in range(3 if quick else 7):
            for enc in best:
                best[enc] = max(best[enc], _loader_rate(Path(tmp) / enc, "uint8", 1))
    return [f"loader uint8 path over {enc} shards: {rate:.0f} ED samples/s per core" for enc, rate in best.items()]


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    for line in codec_rows(quick) + loader_rows(quick) if "--codecs" in argv else encode(quick):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

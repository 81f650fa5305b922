"""Shard image encodings: bytes per sample and decode rate (samples/s) for ``u8z`` and ``png``.

    python -m bench shards                      # synthetic smooth images (a lit sphere per view)
    python -m bench shards --shards DIR         # the edimg/stimg of real rendered shards
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from edg.edg_core.shards import IMAGE_ENCODINGS, decode_images_u8, encode_images, iter_shard, shard_paths


def _synthetic(n: int, res: int = 224) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:res, 0:res] / res - 0.5
    out = []
    for _ in range(n):
        ed = np.ones((6, 4, res, res), np.float32)
        st = np.ones((4, 3, res, res), np.float32)
        for v in range(6):
            cx, cy, r = rng.uniform(-0.1, 0.1, 2).tolist() + [rng.uniform(0.25, 0.4)]
            d2 = ((x - cx) ** 2 + (y - cy) ** 2) / r**2
            inside = d2 < 1
            shade = np.sqrt(np.clip(1 - d2, 0, 1))
            ed[v, 0] = np.where(inside, 0.4 + 0.6 * shade * rng.uniform(0.5, 1), 0)
            ed[v, 1] = np.where(inside, 0.3 + 0.7 * shade, 0)
            ed[v, 2] = np.where(inside, 0.5 + 0.5 * shade * x, 0)
            ed[v, 3] = np.where(inside, 1 - shade * 0.5, 0)
        for v in range(4):
            st[v] *= np.where(((x - 0.1 * v) ** 2 + y ** 2) < 0.05, 0.5, 1)
        out.append((ed, st))
    return out


def _real(spec: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for p in shard_paths(spec):
        for s in iter_shard(p):
            ed = next((decode_images_u8(v, k.split(".", 1)[1]) for k, v in s.items() if k.startswith("edimg.")), None)
            st = next((decode_images_u8(v, k.split(".", 1)[1]) for k, v in s.items() if k.startswith("stimg.")), None)
            if ed is not None and st is not None:
                out.append((ed, st))
            if len(out) >= n:
                return out
    if not out:
        raise SystemExit(f"{spec}: no samples with both edimg and stimg")
    return out


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench shards")
    ap.add_argument("--shards", help="real shards to take images from (default: synthetic images)")
    ap.add_argument("-n", type=int, default=32)
    a, _ = ap.parse_known_args(argv)  # flags meant for other benchmarks (make bench) are ignored
    imgs = _real(a.shards, a.n) if a.shards else _synthetic(a.n)
    src = "real" if a.shards else "synthetic"
    raw = imgs[0][0].size + imgs[0][1].size
    for enc in IMAGE_ENCODINGS:
        t = time.perf_counter()
        blobs = [(encode_images(e, enc), encode_images(s, enc)) for e, s in imgs]
        t_enc = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(3):
            for be, bs in blobs:
                decode_images_u8(be, enc).astype(np.float32)
                decode_images_u8(bs, enc).astype(np.float32)
        t_dec = (time.perf_counter() - t) / 3
        size = np.mean([len(be) + len(bs) for be, bs in blobs])
        print(f"shards {src} images {enc:>4}: {size / 1024:8.1f} KiB/sample (raw uint8 {raw / 1024:.0f} KiB), "
              f"encode {len(imgs) / t_enc:7.1f} samples/s, decode {len(imgs) / t_dec:7.1f} samples/s (1 core)")

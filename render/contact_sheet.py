"""Contact sheets: every view of a few molecules in one PNG, ours beside PyMOL's when given."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from edg.edg_core.io import atomic_path


def natural_key(text: str) -> tuple:
    """Sort key that orders the numbers inside ids by value: qm9:2 < qm9:10 < rmd17:aspirin:7 < rmd17:aspirin:12."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t)


def first_molecules(spec, n: int, scan: int = 500) -> list[dict]:
    """Decoded samples of the ``n`` molecules with the smallest ids (natural order) among the first ``scan``
    samples of the shards ``spec`` (shards are written in completion order, not id order); only those ``n`` are
    decoded."""
    import heapq
    import json
    from itertools import islice

    from edg.edg_core.shards import decode_sample, iter_shard, shard_paths

    def samples():
        for path in shard_paths(spec):
            for raw in iter_shard(path):
                if "__error__" not in raw and "meta.json" in raw:
                    yield raw

    def order(raw):
        return natural_key(str(json.loads(raw["meta.json"]).get("id", raw.get("__key__", ""))))

    # the n smallest in id order; equal ids keep the order they were read in (heapq.nsmallest is stable)
    return [decode_sample(raw, torch_tensors=False) for raw in heapq.nsmallest(n, islice(samples(), scan), key=order)]


def _rgb(images) -> np.ndarray:
    """(V, C, H, W) in [0, 1] -> (V, H, W, 3), the first three channels."""
    a = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    return np.clip(a[:, :3].transpose(0, 2, 3, 1), 0, 1)


def _grey(channel) -> np.ndarray:
    a = channel.detach().cpu().numpy() if hasattr(channel, "detach") else np.asarray(channel)
    return np.repeat(np.clip(a, 0, 1)[..., None], 3, axis=-1)


def contact_sheet(rows: list[tuple[str, object]], path: str | Path, cell: int = 112, depth_rows: bool = True) -> None:
    """Write a PNG with one row per ``(label, images)``; images are (V, 3 or 4, H, W) in [0, 1].

    For 4-channel images from our renderer a second row shows channel 4 (depth or alpha) in grey when
    ``depth_rows``; rows may have different view counts. Written atomically.
    """
    from PIL import Image, ImageDraw
    label_w = 150
    strips = []
    for label, images in rows:
        views = _rgb(images)
        strips.append((label, views))
        a = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
        if depth_rows and a.shape[1] == 4 and not label.startswith("PyMOL"):
            strips.append((f"{label} ch4", _grey(a[:, 3])))
    width = label_w + cell * max(len(v) for _, v in strips)
    sheet = Image.new("RGB", (width, cell * len(strips)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (label, views) in enumerate(strips):
        draw.text((4, r * cell + cell // 2 - 6), label[:24], fill=(0, 0, 0))
        for c, v in enumerate(views):
            tile = Image.fromarray((v * 255).round().astype(np.uint8)).resize((cell, cell), Image.BILINEAR)
            sheet.paste(tile, (label_w + c * cell, r * cell))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")

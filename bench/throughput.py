"""What keeps a GPU fed (issue 24): one line per measurement, each a function in ``MEASUREMENTS``.

    python -m bench throughput [--quick]

* ``loader``: the whole path a trainer waits on for ImageED batches (tar read, split filter, decode, collate
  into the batch the model takes), on one core (no workers, one torch thread), over shards of 224 px synthetic
  images (``train.data.shards.write_synthetic_shards``); the uint8 path over shards of today's encoding, then
  the earlier float32 path (``pixels="float32"``, over the same samples stored as ``u8z`` and inflated with the
  standard library's zlib, as it was) measured the same way. Best of a few passes (the machine may be shared).
* ``student-syncs``: host syncs in one training step of the worst registered student
  (``train.students.host_syncs``; counted on the CPU, where the same ops are dispatched as on CUDA).
* ``encode``: CPU time per molecule from rendered images to shard bytes written, this path and the earlier
  one (``bench._encode_rate``).
* ``dft-trajectory``: warm- vs cold-started SCF over 8 frames of an ethanol MD 1 fs apart, B3LYP/6-31G**, one
  thread (``bench._dft_trajectory``): the total SCF wall-time ratio and the largest energy difference.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _loader_rate(shards: Path, pixels: str, passes: int, batch_size: int = 16) -> float:
    """ED samples/s of one core reading the train split (2 % held out) of ``shards`` into model batches:
    the best of ``passes`` full passes."""
    from edg.train.data.shards import ShardImages, image_loader
    best = 0.0
    for p in range(passes):
        dataset = ShardImages(shards, "imageed", img_size=224, n_views=6, split="train", val_fraction=0.02,
                              shuffle=0, seed=p, pixels=pixels)
        start = time.perf_counter()
        n = sum(len(batch["key"]) for batch in image_loader(dataset, batch_size, num_workers=0))
        best = max(best, n / (time.perf_counter() - start))
    return best


def loader(quick: bool) -> list[str]:
    from edg.edg_core.shards import use_inflater
    from edg.train.data.shards import write_synthetic_shards
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="edg-bench-throughput-") as tmp:
            now, then = Path(tmp) / "now", Path(tmp) / "u8z"
            write_synthetic_shards(now, size=224, maxcount=20, limit=20 if quick else 40)
            write_synthetic_shards(then, size=224, maxcount=20, limit=20 if quick else 40, image_encoding="u8z")
            passes = 3 if quick else 5
            new = _loader_rate(now, "uint8", passes)
            fast = use_inflater("zlib")
            try:
                old = _loader_rate(then, "float32", passes)
            finally:
                use_inflater(fast)
    finally:
        torch.set_num_threads(threads)
    return [f"throughput loader: {new:.0f} ED samples/s per core (goal 300)",
            f"throughput loader float32 path (before): {old:.0f} ED samples/s per core"]


def student_syncs(quick: bool) -> list[str]:
    from edg.train.students import STUDENTS
    from edg.train.students.host_syncs import student_step_syncs
    counts = {name: len(student_step_syncs(name, n_molecules=4 if quick else 16)) for name in STUDENTS}
    worst = max(counts, key=counts.get)
    return [f"throughput student-syncs: {counts[worst]} host syncs per step (goal 1)"]


def encode(quick: bool) -> list[str]:
    from bench._encode_rate import encode as measure
    return measure(quick)


def dft_trajectory(quick: bool) -> list[str]:
    from bench._dft_trajectory import dft_trajectory_line
    return [dft_trajectory_line(quick)]


MEASUREMENTS: dict[str, Callable[[bool], list[str]]] = {
    "loader": loader,
    "encode": encode,
    "dft-trajectory": dft_trajectory,
    "student-syncs": student_syncs,
}
"""Line name -> measurement(quick) returning its printed lines, in the order they are printed."""


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench throughput")
    ap.add_argument("--quick", action="store_true", help="fewer samples and passes")
    a, _ = ap.parse_known_args(argv)  # flags meant for other benchmarks (make bench) are ignored
    for measure in MEASUREMENTS.values():
        for line in measure(a.quick):
            print(line, flush=True)
    return 0

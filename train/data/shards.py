"""Image batches for pretraining, streamed from WebDataset shards (``edg_core.shards``).

A loader makes one pass over the shards, split by node (``torch.distributed`` rank) and by DataLoader
worker, shuffled with a buffer seeded per pass. Batches are dicts:

* ImageED: ``key`` (list of sample keys), ``edimg`` (B, 6, 4, H, W) uint8 (0..255 = [0, 1])
* teacher: ``key``, ``stimg`` (B, 4, 3, H, W) uint8, ``fu`` (B, fu_dim) float32 (zeros where missing) and
  ``has_fu`` (B,) bool

uint8 end to end: the split filter runs on the keys before anything is decoded; a reader decodes only the
members its model needs (ImageED: ``edimg``; teacher: ``stimg`` and ``fu``); images stay uint8 as stored
(a quarter of float32's bytes through worker queues, pinning and the host-to-device copy); ``collate``
stacks them straight into pinned memory when CUDA is available; ``to_device`` copies without blocking and
turns them into float32 in [0, 1] on the device, bit for bit the values the float32 path gave.
``pixels="float32"`` keeps that earlier path (every member decoded, float32 per sample, split filter after
decoding) for comparisons (tests, ``python -m bench throughput``).

The validation split is a deterministic hash of the sample key (``in_validation``), so it is the same for
every reader, node and rerun without a split file. ``write_synthetic_shards`` writes smooth, deterministic
images with the real schema for tests, benchmarks and dry runs where no rendered images exist.
"""
from __future__ import annotations

import functools
import logging
import os
import zlib
from collections.abc import Iterator

import numpy as np
import torch
from edg.edg_core.errors import ShardError
from edg.edg_core.shards import shard_keys, webdataset_pipeline
from torch.utils.data import DataLoader, IterableDataset

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "all")


def in_validation(key: str, fraction: float) -> bool:
    """True for the ``fraction`` of keys held out for validation (CRC32 of the key; stable everywhere)."""
    return (zlib.crc32(key.encode()) % 100_000) < fraction * 100_000


def _keep(key: str, split: str, fraction: float) -> bool:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split == "all" or (in_validation(key, fraction) == (split == "valid"))


def count_samples(spec, split: str = "all", val_fraction: float = 0.0) -> int:
    """Samples of ``split`` in the shards (``shard_keys``: the shards' key indexes, else their tar headers)."""
    return sum(1 for k in shard_keys(spec) if _keep(k, split, val_fraction))


class ShardImages(IterableDataset):
    """One pass over the shards yielding per-sample dicts of the fields a stage needs.

    ``kind`` is ``"imageed"`` (needs ``edimg``) or ``"teacher"`` (needs ``stimg``; ``fu`` optional).
    Samples lacking the needed images are skipped (counted in the log). A bad sample (damaged or missing
    members, images or ``fu`` of the wrong shape) is skipped with a warning naming the shard, key and reason;
    more than ``max_bad_samples`` (default ``$EDG_MAX_BAD_SAMPLES``, else 100) of them in one pass, or a pass
    in which every sample is bad (a model configured for other images), raise ``ShardError``.
    """

    def __init__(self, spec, kind: str, *, img_size: int, n_views: int, split: str = "train",
                 val_fraction: float = 0.0, shuffle: int = 0, seed: int = 0, fu_dim: int = 768,
                 max_bad_samples: int | None = None, pixels: str = "uint8"):
        if kind not in ("imageed", "teacher"):
            raise ValueError(f"kind must be 'imageed' or 'teacher', got {kind!r}")
        if pixels not in ("uint8", "float32"):
            raise ValueError(f"pixels must be 'uint8' or 'float32', got {pixels!r}")
        self.pixels = pixels
        # the seed of the next pass, shared with loader workers that outlive a pass (``next_pass``)
        self._pass_seed = torch.tensor([seed], dtype=torch.int64).share_memory_()
        self.spec, self.kind, self.split, self.val_fraction = spec, kind, split, val_fraction
        self.shape = (n_views, 4, img_size, img_size) if kind == "imageed" else (n_views, 3, img_size, img_size)
        self.shuffle, self.seed, self.fu_dim = shuffle, seed, fu_dim
        if max_bad_samples is None:  # the user's limit, else 100
            max_bad_samples = int(os.environ.get("EDG_MAX_BAD_SAMPLES", "100"))
        self.max_bad_samples = max_bad_samples
        self.bad: list[str] = []  # "shard:key: reason" of the bad samples of the last pass (this process)
        _keep("", split, val_fraction)  # validate the split name early

    def next_pass(self, seed: int) -> None:
        """Seed the next pass (its shuffle order) in this process and in the workers of a persistent loader,
        which read it when the pass starts."""
        self._pass_seed[0] = seed

    def _samples(self) -> Iterator[dict]:
        """Decoded samples of one pass: only the needed members, only this split's keys (uint8 pixels), or,
        with ``pixels="float32"``, every member decoded and the split filtered afterwards (the earlier path)."""
        seed = int(self._pass_seed[0])
        if self.pixels == "float32":
            return (s for s in webdataset_pipeline(self.spec, shuffle=self.shuffle, seed=seed, bad_samples="yield")
                    if _keep(s["__key__"], self.split, self.val_fraction))
        split, fraction = self.split, self.val_fraction
        return webdataset_pipeline(self.spec, shuffle=self.shuffle, seed=seed, bad_samples="yield",
                                   keep_key=lambda key: _keep(key, split, fraction),
                                   members=("edimg",) if self.kind == "imageed" else ("stimg", "fu"),
                                   uint8_images=True)

    def __iter__(self) -> Iterator[dict]:
        member = "edimg" if self.kind == "imageed" else "stimg"
        skipped = good = 0
        self.bad = []
        for s in self._samples():
            key = s["__key__"]
            problem = s.get("__error__") or self._shape_problem(s, member)
            if problem:
                self._bad(problem if "__error__" in s else f"{s.get('__url__')}:{key}: {problem}")
                continue
            img = s.get(member)
            if img is None:
                skipped += 1
                continue
            out = {"key": key, member: img if self.pixels == "uint8" else img.float()}
            if self.kind == "teacher":
                fu = s.get("fu")
                out["has_fu"] = fu is not None
                out["fu"] = fu.float() if fu is not None else torch.zeros(self.fu_dim)
            good += 1
            yield out
        if skipped:
            log.warning("%s: skipped %d samples without %s", self.spec, skipped, member)
        if self.bad and not good:  # every sample bad: a configuration mismatch rather than damaged data
            raise ShardError(f"{self.spec}: all {len(self.bad)} samples of this pass are bad; first: {self.bad[0]}")

    def _shape_problem(self, s: dict, member: str) -> str | None:
        img = s.get(member)
        if img is not None and tuple(img.shape) != self.shape:
            return (f"{member} has shape {tuple(img.shape)}, expected {self.shape} (check the model img_size / "
                    "n_views against the images)")
        fu = s.get("fu") if self.kind == "teacher" else None
        if fu is not None and tuple(fu.shape) != (self.fu_dim,):
            return f"fu has shape {tuple(fu.shape)}, expected ({self.fu_dim},)"
        return None

    def _bad(self, problem: str) -> None:
        self.bad.append(problem)
        log.warning("bad sample skipped: %s", problem)
        if len(self.bad) > self.max_bad_samples:
            raise ShardError(f"{self.spec}: {len(self.bad)} bad samples in one pass, over max_bad_samples="
                             f"{self.max_bad_samples} (first: {self.bad[0]}); fix the shards or raise the limit")


def collate(samples: list[dict], pin: bool = False) -> dict:
    """Samples -> one batch dict: tensors stacked on a new first axis (into pinned memory with ``pin``, ready
    for a non-blocking copy to a GPU), other values as a tensor, ``key`` as a list."""
    out = {"key": [s["key"] for s in samples]}
    for k in samples[0]:
        if k == "key":
            continue
        vals = [s[k] for s in samples]
        if isinstance(vals[0], torch.Tensor):
            stacked = torch.empty((len(vals), *vals[0].shape), dtype=vals[0].dtype, pin_memory=pin)
            out[k] = torch.stack(vals, out=stacked)
        else:
            out[k] = torch.tensor(vals).pin_memory() if pin else torch.tensor(vals)
    return out


def pinned_collate(samples: list[dict]) -> dict:
    """``collate`` into pinned memory (a module-level function, so that a loader can pickle it)."""
    return collate(samples, pin=True)


IMAGE_MEMBERS = ("edimg", "stimg")
_FLOAT_OF_BYTE = torch.from_numpy(np.arange(256, dtype=np.float32) / 255.0)  # exactly the float32 path's values


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (any shape) -> float32 in [0, 1] on their device: byte b becomes float32(b) / 255 as numpy
    rounds it (a 256-entry table, so the values do not depend on how a device divides)."""
    if images.dtype != torch.uint8:
        return images
    return _FLOAT_OF_BYTE.to(images.device, non_blocking=True)[images.int()]


def to_device(batch: dict, device) -> dict:
    """A loader batch on ``device``: tensors copied without blocking (from pinned memory the copy overlaps the
    work already queued), then uint8 images converted to float32 in [0, 1] there."""
    out = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    for k in IMAGE_MEMBERS:
        if k in out:
            out[k] = images_to_float(out[k])
    return out


@functools.cache
def _say_capped(asked: int, cap: int) -> None:
    log.info("loader workers: %d asked, %d used (the CPUs this process may use)", asked, cap)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a Ray actor's or a container's), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def image_loader(dataset: ShardImages, batch_size: int, num_workers: int = 0, drop_last: bool = False,
                 persistent: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` with at most ``usable_cpus()`` worker processes (more only compete).

    With CUDA, batches arrive in pinned memory: collated straight into it without workers; with workers,
    collated in the worker and pinned by the loader's pin thread (a CUDA allocation is not made in a forked
    worker). ``persistent``: workers survive the end of a pass (``iter(loader)`` again restarts them on the next
    pass, seeded with ``dataset.next_pass``) instead of being started anew each time."""
    if num_workers > (cap := usable_cpus()):
        _say_capped(num_workers, cap)
        num_workers = cap
    cuda = torch.cuda.is_available()
    pin_in_collate = cuda and num_workers == 0
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                      collate_fn=pinned_collate if pin_in_collate else collate, drop_last=drop_last,
                      pin_memory=cuda and not pin_in_collate, persistent_workers=persistent and num_workers > 0)


# ---------------------------------------------------------------- synthetic images with the real schema
def _blobs(points: np.ndarray, weights: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Sum of isotropic Gaussians at 2-D points in [-1, 1]^2 -> (size, size) image."""
    t = np.linspace(-1, 1, size)
    gx = np.exp(-((t[None, :] - points[:, :1]) ** 2) / (2 * sigma ** 2))  # (N, size)
    gy = np.exp(-((t[None, :] - points[:, 1:2]) ** 2) / (2 * sigma ** 2))
    return np.einsum("n,ny,nx->yx", weights, gy, gx)


_AXES = {"x": 0, "y": 1, "z": 2}


def _rotation(axis: str, deg: float) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != _AXES[axis]]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


ED_VIEWS = (("x", 0), ("x", 180), ("x", 90), ("x", -90), ("y", 90), ("y", -90))
STRUCTURE_VIEWS = (("x", 0), ("x", 180), ("y", 180), ("z", 180))


def synthetic_images(z: np.ndarray, pos: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth stand-ins for rendered images of one molecule, from its atoms (deterministic):
    ED views (6, 4, size, size) and structure views (4, 3, size, size), floats in [0, 1].
    Atoms become Gaussian blobs seen along the paper's view rotations; the colour depends on the element,
    so images of different molecules differ in ways a network can learn."""
    centred = pos - pos.mean(0)
    scale = np.abs(centred).max() + 1.5
    hue = np.stack([np.cos(z * 0.7), np.sin(z * 1.3), np.cos(z * 2.1)], 1) * 0.5 + 0.5  # (N, 3)

    def views(rotations, sigma, with_depth):
        out = []
        for axis, deg in rotations:
            p = centred @ _rotation(axis, deg).T / scale
            dens = np.stack([_blobs(p[:, :2], hue[:, c], size, sigma) for c in range(3)])
            cover = _blobs(p[:, :2], np.ones(len(z)), size, sigma)
            rgb = 1 - np.clip(cover, 0, 1)[None] * (1 - dens / np.maximum(cover, 1e-6)[None])
            chans = [rgb]
            if with_depth:
                depth = _blobs(p[:, :2], (p[:, 2] + 1) / 2, size, sigma) / np.maximum(cover, 1e-6)
                chans.append((np.clip(depth, 0, 1) * np.clip(cover, 0, 1))[None])
            out.append(np.concatenate(chans))
        return np.clip(np.stack(out), 0, 1).astype(np.float32)
    return views(ED_VIEWS, 0.18, True), views(STRUCTURE_VIEWS, 0.08, False)


def write_synthetic_shards(out, source: str = "embedded:qm9", size: int = 32, maxcount: int = 10,
                           limit: int | None = None, image_encoding: str | None = None) -> int:
    """Write shards with ``edimg`` and ``stimg`` made by ``synthetic_images`` for each molecule of ``source``
    (``image_encoding``: default ``edg_core.shards.DEFAULT_IMAGE_ENCODING``); returns the number of samples
    written."""
    from edg.edg_core.readers import open_source
    from edg.edg_core.shards import DEFAULT_IMAGE_ENCODING, ShardWriter, encode_sample
    image_encoding = image_encoding or DEFAULT_IMAGE_ENCODING
    n = 0
    with ShardWriter(out, "synthetic", maxcount=maxcount) as w:
        for mol in open_source(source).molecules():
            if limit is not None and n >= limit:
                break
            ed, st = synthetic_images(mol.z, mol.pos, size)
            w.write(encode_sample(mol, edimg=ed, stimg=st, image_encoding=image_encoding))
            n += 1
    return n


# ---------------------------------------------------------------- per-sample outputs of a model


def raw_samples(spec) -> Iterator[dict]:
    """Every raw sample (member bytes, ``__key__``, ``__url__``) of the shards of ``spec``, in order."""
    from edg.edg_core.shards import iter_shard, shard_paths
    for path in shard_paths(spec):
        yield from iter_shard(path)



"""``RenderWorker``: molecules (+ optional ED/ESP grids) in, shard samples with ``edimg``/``stimg`` out.

A plain class (no Ray) so that it runs in-process (``edg render``) or inside a generic Ray actor pool. A batch
that fails is retried molecule by molecule, so one bad record only costs itself: it is returned (and, in
``run``, logged to ``<out>/failures.jsonl``) with the reason.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from edg_core.errors import InvalidRecord
from edg_core.grid import CubeGrid
from edg_core.io import append_jsonl, progress
from edg_core.molecule import Molecule
from edg_core.shards import DEFAULT_IMAGE_ENCODING, ShardWriter, encode_sample, sample_key, shard_keys

from .config import RenderConfig
from .renderer import Renderer

log = logging.getLogger(__name__)
STAGE = "render"


@dataclass
class Fields:
    """One molecule's ED (e/bohr^3) and ESP (Hartree/e), arrays or tensors of ``grid.shape`` (bohr)."""
    grid: CubeGrid
    ed: object
    esp: object


@dataclass
class RenderOutput:
    samples: list[dict]  # encode_sample dicts, in input order, for the molecules that succeeded
    failures: list[dict]  # {record, key, stage, reason}


class RenderWorker:
    """Render batches of molecules with one ``RenderConfig`` on one device.

    ``structure``/``ed`` choose the images made (ED images only for molecules that come with ``Fields``);
    ``keep_fields`` also stores ED/ESP (float16) and the grid in the sample.
    """

    def __init__(self, config: RenderConfig | None = None, device: str | None = None, structure: bool = True,
                 ed: bool = True, keep_fields: bool = False, image_encoding: str = DEFAULT_IMAGE_ENCODING):
        self.cfg = config or RenderConfig()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.renderer = Renderer(self.cfg, device=self.device)
        self.structure, self.ed, self.keep_fields = structure, ed, keep_fields
        self.image_encoding = image_encoding

    def _images(self, mols: Sequence[Molecule], fields: Sequence[Fields | None]):
        dev, dt = self.device, self.renderer.dtype
        zs = [torch.as_tensor(m.z, device=dev) for m in mols]
        ps = [torch.as_tensor(m.pos, device=dev, dtype=dt) for m in mols]
        out = [{"extra_meta": {"render": {"fourth_channel": self.cfg.fourth_channel}}} for _ in mols]
        if self.structure:
            st, frames = self.renderer.structure_images(zs, ps)
            for o, img, fr in zip(out, st, frames):
                o["stimg"], o["extra_meta"]["render"]["structure_framing"] = img, fr
        with_fields = [i for i, f in enumerate(fields) if f is not None]
        if self.ed and with_fields:
            as_t = lambda a: torch.as_tensor(a, device=dev, dtype=dt)  # noqa: E731
            ed, frames = self.renderer.ed_images([zs[i] for i in with_fields], [ps[i] for i in with_fields],
                                                 [as_t(fields[i].ed) for i in with_fields],
                                                 [as_t(fields[i].esp) for i in with_fields],
                                                 [fields[i].grid for i in with_fields],
                                                 ids=[mols[i].id for i in with_fields])
            for i, img, fr in zip(with_fields, ed, frames):
                out[i]["edimg"], out[i]["extra_meta"]["render"]["ed_framing"] = img, fr
        return out

    def _sample(self, mol: Molecule, f: Fields | None, images: dict) -> dict:
        kw = {}
        if self.keep_fields and f is not None:
            kw = {"grid": f.grid, "ed": f.ed, "esp": f.esp}
        return encode_sample(mol, image_encoding=self.image_encoding, **kw, **images)

    def render(self, mols: Sequence[Molecule], fields: Sequence[Fields | None] | None = None) -> RenderOutput:
        """Images for ``mols`` (``fields[i]`` None: structure images only) -> samples and failures."""
        fields = list(fields) if fields is not None else [None] * len(mols)
        if len(fields) != len(mols):
            raise ValueError(f"{len(mols)} molecules but {len(fields)} field entries")
        try:
            images = self._images(mols, fields)
            return RenderOutput([self._sample(m, f, im) for m, f, im in zip(mols, fields, images)], [])
        except (InvalidRecord, ValueError, RuntimeError) as batch_error:
            if len(mols) == 1:
                m = mols[0]
                return RenderOutput([], [{"record": m.id, "key": sample_key(m.id), "stage": STAGE,
                                          "reason": f"{type(batch_error).__name__}: {batch_error}"}])
            log.warning("render batch of %d failed (%s); retrying one by one", len(mols), batch_error)
        samples, failures = [], []
        for m, f in zip(mols, fields):
            one = self.render([m], [f])
            samples += one.samples
            failures += one.failures
        return RenderOutput(samples, failures)

    def run(self, records: Iterable[tuple[Molecule | InvalidRecord, Fields | None]], out: str | Path,
            total: int | None = None, maxcount: int = 1000, prefix: str = "render") -> dict:
        """Render ``(molecule, fields)`` pairs into shards under ``out``; resumable (keys already in finished
        shards are skipped), failures appended to ``<out>/failures.jsonl``. Returns a summary dict."""
        out = Path(out)
        done = shard_keys(out) if out.exists() else set()
        failures = out / "failures.jsonl"
        counts = {"rendered": 0, "skipped": 0, "failed": 0}
        t0 = time.monotonic()
        batch: list[tuple[Molecule, Fields | None]] = []

        def flush(writer):
            if not batch:
                return
            res = self.render([m for m, _ in batch], [f for _, f in batch])
            for s in res.samples:
                writer.write(s)
                done.add(s["__key__"])
            for fail in res.failures:
                append_jsonl(failures, fail)
            counts["rendered"] += len(res.samples)
            counts["failed"] += len(res.failures)
            batch.clear()

        with ShardWriter(out, prefix, maxcount) as writer:
            for rec, f in progress(records, f"render -> {out}", total=total):
                if isinstance(rec, InvalidRecord):
                    append_jsonl(failures, {"record": rec.record, "key": sample_key(rec.record), "stage": "read",
                                            "reason": rec.problem})
                    counts["failed"] += 1
                    continue
                if sample_key(rec.id) in done:
                    counts["skipped"] += 1
                    continue
                batch.append((rec, f))
                if len(batch) >= self.cfg.batch_size:
                    flush(writer)
            flush(writer)
        counts["seconds"] = round(time.monotonic() - t0, 3)
        counts["mol_per_s"] = round(counts["rendered"] / max(counts["seconds"], 1e-9), 3)
        return counts

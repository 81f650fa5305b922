"""``RenderWorker``: molecules (+ optional ED/ESP grids) in, shard samples with ``edimg``/``stimg`` out.

A plain class (no Ray): the render stage (``cluster/stages.py``, run by ``cluster.engine.run_stage`` in this
process or on Ray actors) wraps it. Molecules are rendered ``RenderConfig.batch_size`` at a time; each batch's
images are quantised on the device, copied to the host once and compressed into samples by the worker's thread
pool while the next batch renders (``render.encode``). A batch that fails to render is retried molecule by
molecule, and a molecule whose sample cannot be made fails alone, so one bad record only costs itself: it comes
back as a ``Failure`` with the reason. Samples come back in the order of the molecules.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from edg.edg_core.errors import InvalidRecord
from edg.edg_core.grid import CubeGrid, budget_problem
from edg.edg_core.molecule import Molecule
from edg.edg_core.shards import DEFAULT_IMAGE_ENCODING, check_image_encoding, encode_sample
from edg.edg_core.stage import BatchResult, Failure

from .config import RenderConfig
from .encode import encode_threads, quantise_to_host
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
class RenderedBatch:
    """One batch's render output, still on the device: ``images[name]`` (rows, V, C, H, W) floats in [0, 1]
    (``stimg``: a row per molecule; ``edimg``: a row per molecule with fields), ``rows[name]`` the molecule
    index of each row, and each molecule's ``extra_meta`` (the framing records)."""
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: dict[str, list[int]] = field(default_factory=dict)
    meta: list[dict] = field(default_factory=list)


_RENDER_ERRORS = (InvalidRecord, ValueError, RuntimeError)  # a molecule's fault: a Failure, not a stopped run


class RenderWorker:
    """Render batches of molecules with one ``RenderConfig`` on one device.

    ``structure``/``ed`` choose the images made (ED images only for molecules that come with ``Fields``);
    ``keep_fields`` also stores ED/ESP (float16) and the grid in the sample. ``encode_threads``: threads that
    compress samples (default ``render.encode.encode_threads()``).
    """

    def __init__(self, config: RenderConfig | None = None, device: str | None = None, structure: bool = True,
                 ed: bool = True, keep_fields: bool = False, image_encoding: str = DEFAULT_IMAGE_ENCODING,
                 encode_threads: int | None = None):
        check_image_encoding(image_encoding)
        self.cfg = config or RenderConfig()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.renderer = Renderer(self.cfg, device=self.device)
        self.structure, self.ed, self.keep_fields = structure, ed, keep_fields
        self.image_encoding = image_encoding
        self.encode_threads = encode_threads
        self._pool: ThreadPoolExecutor | None = None

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The compression threads, started on first use."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.encode_threads or encode_threads(), thread_name_prefix="edg-encode")
        return self._pool

    def close(self) -> None:
        """Stop the compression threads (a later ``render`` starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def render_batch(self, mols: Sequence[Molecule], fields: Sequence[Fields | None]) -> RenderedBatch:
        """The images of one batch on the device (``renderer`` batches larger lists itself)."""
        dev, dt = self.device, self.renderer.dtype
        zs = [torch.as_tensor(m.z, device=dev) for m in mols]
        ps = [torch.as_tensor(m.pos, device=dev, dtype=dt) for m in mols]
        out = RenderedBatch(meta=[{"render": {"fourth_channel": self.cfg.fourth_channel}} for _ in mols])
        if self.structure:
            st, frames = self.renderer.structure_images(zs, ps)
            out.images["stimg"], out.rows["stimg"] = st, list(range(len(mols)))
            for meta, fr in zip(out.meta, frames):
                meta["render"]["structure_framing"] = fr
        with_fields = [i for i, f in enumerate(fields) if f is not None]
        if self.ed and with_fields:
            as_t = lambda a: torch.as_tensor(a, device=dev, dtype=dt)  # noqa: E731
            ed, frames = self.renderer.ed_images([zs[i] for i in with_fields], [ps[i] for i in with_fields],
                                                 [as_t(fields[i].ed) for i in with_fields],
                                                 [as_t(fields[i].esp) for i in with_fields],
                                                 [fields[i].grid for i in with_fields],
                                                 ids=[mols[i].id for i in with_fields])
            out.images["edimg"], out.rows["edimg"] = ed, with_fields
            for i, fr in zip(with_fields, frames):
                out.meta[i]["render"]["ed_framing"] = fr
        return out

    def encode_batch(self, mols: Sequence[Molecule], fields: Sequence[Fields | None], batch: RenderedBatch
                     ) -> list[Future]:
        """Start making the samples of a rendered batch: its images quantised on the device and copied to the
        host at once (``quantise_to_host``; the batch's images are consumed), then one sample per molecule
        compressed by the thread pool. Returns a future sample (dict) per molecule, in order."""
        host = quantise_to_host(batch.images)
        images: list[dict] = [{} for _ in mols]
        for name, rows in batch.rows.items():
            for row, i in enumerate(rows):
                images[i][name] = host[name][row]
        return [self.pool.submit(self._sample, m, f, {**im, "extra_meta": meta})
                for m, f, im, meta in zip(mols, fields, images, batch.meta)]

    def _sample(self, mol: Molecule, f: Fields | None, images: dict) -> dict:
        kw = {}
        if self.keep_fields and f is not None:
            kw = {"grid": f.grid, "ed": f.ed, "esp": f.esp}
        return encode_sample(mol, image_encoding=self.image_encoding, **kw, **images)

    def _over_budget(self, mol: Molecule, f: Fields | None) -> str | None:
        """Why ``mol`` is too large for ``max_atoms`` / ``max_grid_points``, or None
        (``edg_core.grid.budget_problem``, the DFT stage's rule)."""
        grid = f.grid if f is not None and self.ed else None
        return budget_problem("render", mol.n_atoms, self.cfg.max_atoms, self.cfg.max_grid_points, grid, "ED grid")

    def render(self, mols: Sequence[Molecule], fields: Sequence[Fields | None] | None = None) -> BatchResult:
        """Images for ``mols`` (``fields[i]`` None: structure images only) -> samples and failures."""
        fields = list(fields) if fields is not None else [None] * len(mols)
        if len(fields) != len(mols):
            raise ValueError(f"{len(mols)} molecules but {len(fields)} field entries")
        too_large = [self._over_budget(m, f) for m, f in zip(mols, fields)]
        if any(too_large):  # refused up front, named with their size; the rest render as usual
            res = BatchResult(failures=[Failure.of(m.id, STAGE, why) for m, why in zip(mols, too_large) if why])
            keep = [i for i, why in enumerate(too_large) if not why]
            return res + self.render([mols[i] for i in keep], [fields[i] for i in keep]) if keep else res
        parts: list[tuple[Molecule, Future] | BatchResult] = []  # in the order of the molecules
        bs = max(1, self.cfg.batch_size)
        for s in range(0, len(mols), bs):
            ms, fs = mols[s:s + bs], fields[s:s + bs]
            try:
                parts += zip(ms, self.encode_batch(ms, fs, self.render_batch(ms, fs)))
            except _RENDER_ERRORS as batch_error:
                if len(ms) == 1:
                    reason = f"{type(batch_error).__name__}: {batch_error}"
                    parts.append(BatchResult(failures=[Failure.of(ms[0].id, STAGE, reason)]))
                    continue
                log.warning("render batch of %d failed (%s); retrying one by one", len(ms), batch_error)
                parts += [self.render([m], [f]) for m, f in zip(ms, fs)]
        res = BatchResult()
        for part in parts:
            if isinstance(part, BatchResult):
                res += part
                continue
            mol, sample = part
            try:
                res.samples.append(sample.result())
            except _RENDER_ERRORS as e:  # e.g. kept fields that do not match their grid
                res.failures.append(Failure.of(mol.id, STAGE, f"{type(e).__name__}: {e}"))
        return res

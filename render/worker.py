"""``RenderWorker``: molecules (+ optional ED/ESP grids) in, shard samples with ``edimg``/``stimg`` out.

A plain class (no Ray): the render stage (``cluster/stages.py``, run by ``cluster.engine.run_stage`` in this
process or on Ray actors) wraps it. A batch that fails is retried molecule by molecule, so one bad record only
costs itself: it comes back as a ``Failure`` with the reason.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from edg.edg_core.errors import InvalidRecord
from edg.edg_core.grid import CubeGrid, budget_problem
from edg.edg_core.molecule import Molecule
from edg.edg_core.shards import DEFAULT_IMAGE_ENCODING, encode_sample
from edg.edg_core.stage import BatchResult, Failure

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
        try:
            images = self._images(mols, fields)
            return BatchResult(samples=[self._sample(m, f, im) for m, f, im in zip(mols, fields, images)])
        except (InvalidRecord, ValueError, RuntimeError) as batch_error:
            if len(mols) == 1:
                m = mols[0]
                return BatchResult(failures=[Failure.of(m.id, STAGE, f"{type(batch_error).__name__}: {batch_error}")])
            log.warning("render batch of %d failed (%s); retrying one by one", len(mols), batch_error)
        res = BatchResult()
        for m, f in zip(mols, fields):
            res += self.render([m], [f])
        return res

"""The renderer: ED images (V x RGB-D) and ball-and-stick structure images (V x RGB), batched, in torch.

Inputs per molecule: atomic numbers ``z`` (N,), positions ``pos`` (N, 3) in Å and, for ED images, the ED
(e/bohr^3) and ESP (Hartree/e) as (nx, ny, nz) tensors on an ``edg_core.grid.CubeGrid`` (bohr). Outputs are
float tensors in [0, 1]. Everything runs on the device of the inputs (GPU first, CPU works) and is
differentiable with respect to ED, ESP and positions (silhouettes only with ``soft_coverage``).

ED image channels: RGB = surface (ESP ramp, transparency composited front to back over deeper surface layers
and the structure) on ``ed_background``; channel 4 = depth of the first visible surface or atom,
``t / (2 * depth_radius)`` with 0 on the near side of the framing sphere and 1 on its far side, 1.0 for
background; or, with ``fourth_channel="alpha"``, the alpha the official PyMOL PNG images carry: the opacity of
the first surface layer (1 - transparency = 0.6, however many layers lie behind it), 1 where an atom or stick is
hit, 0 for background (measured against PyMOL, docs/render.md).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from edg.edg_core.grid import CubeGrid

from .camera import Framing, fit_framing, pixel_coords, to_camera, view_rotations
from .colors import esp_ramp, shade
from .config import RenderConfig
from .isosurface import FieldVolume, march_isosurface
from .structure import find_bonds, trace_structure


def pad_atoms(zs: Sequence, positions: Sequence, dtype=torch.float32, device=None):
    """Lists of (N_i,) and (N_i, 3) -> ``z`` (B, N) long (0 = padding), ``pos`` (B, N, 3), ``mask`` (B, N)."""
    n = max(len(z) for z in zs)
    device = device or (positions[0].device if torch.is_tensor(positions[0]) else None)
    z_out = torch.zeros(len(zs), n, dtype=torch.long, device=device)
    rows = []
    for i, (z, p) in enumerate(zip(zs, positions)):
        z_out[i, :len(z)] = torch.as_tensor(z, device=device).long()
        p = torch.as_tensor(p).to(device=device, dtype=dtype)
        rows.append(torch.cat([p, p.new_zeros(n - len(p), 3)]))
    return z_out, torch.stack(rows), z_out > 0


class Renderer:
    """Render batches of molecules with one ``RenderConfig``; long lists are cut into ``batch_size`` chunks."""

    def __init__(self, config: RenderConfig | None = None, device=None, dtype=torch.float32):
        self.cfg = config or RenderConfig()
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype

    # ------------------------------------------------------------------ public API
    def structure_images(self, zs: Sequence, positions: Sequence, framing: Framing | None = None
                         ) -> tuple[torch.Tensor, list[dict]]:
        """(B, V, 3, H, W) ball-and-stick images on ``structure_background`` and each molecule's framing record.
        ``framing`` (optional) fixes the cameras instead of fitting them to the molecules."""
        out, frames = [], []
        bs = self.cfg.batch_size
        for s in range(0, len(zs), bs):
            sl = slice(s, s + bs)
            img, fr = self._structure_batch(zs[sl], positions[sl], None if framing is None else framing.select(sl))
            out.append(img)
            frames += fr
        return torch.cat(out), frames

    def ed_images(self, zs: Sequence, positions: Sequence, eds: Sequence, esps: Sequence,
                  grids: Sequence[CubeGrid], ids: Sequence[str] | None = None, framing: Framing | None = None
                  ) -> tuple[torch.Tensor, list[dict]]:
        """(B, V, 4, H, W) ED images (RGB + depth or alpha) and each molecule's framing record (``ids`` name
        molecules in errors; ``framing`` optionally fixes the cameras)."""
        out, frames = [], []
        bs = self.cfg.batch_size
        for s in range(0, len(zs), bs):
            sl = slice(s, s + bs)
            img, fr = self._ed_batch(zs[sl], positions[sl], eds[sl], esps[sl], grids[sl],
                                     None if ids is None else list(ids[sl]),
                                     None if framing is None else framing.select(sl))
            out.append(img)
            frames += fr
        return torch.cat(out), frames

    # ------------------------------------------------------------------ internals
    def _device_of(self, x):
        return self.device or (x.device if torch.is_tensor(x) else torch.device("cpu"))

    def fit(self, zs: Sequence, positions: Sequence, kind: str = "ed") -> Framing:
        """The framing the renderer would fit to these molecules (``kind`` ed or structure)."""
        return self._atoms(zs, positions, kind)[3]

    def _atoms(self, zs, positions, kind, framing=None):
        cfg = self.cfg
        z, pos, mask = pad_atoms(zs, positions, self.dtype, self._device_of(positions[0]))
        if framing is None:
            margin = cfg.ed_margin if kind == "ed" else cfg.structure_margin
            framing = fit_framing(pos, mask, margin, cfg.image_size, cfg.angstrom_per_pixel)
        drawn = mask & (z != 1) if not cfg.hydrogens else mask
        return z, pos, drawn, framing

    def _trace(self, z, pos, drawn, rot, framing, x, y):
        cfg = self.cfg
        cam = to_camera(pos, rot, framing)
        bonds, bond_mask = find_bonds(z, pos, drawn, cfg.bond_tolerance)
        hits = trace_structure(cam, z, drawn, bonds, bond_mask, x, y, framing.depth_radius,
                               cfg.stick_radius, cfg.sphere_scale, cfg.stick_h_scale)
        color = torch.zeros_like(hits.color)  # shade the pixels that hit an atom or a bond only
        color[hits.hit] = shade(hits.color[hits.hit], hits.normal[hits.hit], cfg)
        return hits, color

    def _to_image(self, pixels: torch.Tensor, n_views: int) -> torch.Tensor:
        """(B, V, H*W, C) -> (B, V, C, H, W)."""
        n = self.cfg.image_size
        return pixels.reshape(pixels.shape[0], n_views, n, n, -1).permute(0, 1, 4, 2, 3).contiguous()

    def _records(self, framing: Framing) -> list[dict]:
        return [framing.to_dict(i, self.cfg.image_size) for i in range(len(framing.half_width))]

    def _structure_batch(self, zs, positions, framing):
        cfg = self.cfg
        z, pos, drawn, framing = self._atoms(zs, positions, "structure", framing)
        rot = view_rotations(cfg.structure_views, self.dtype, pos.device)
        x, y = pixel_coords(framing, cfg.image_size)
        hits, color = self._trace(z, pos, drawn, rot, framing, x, y)
        bg = torch.tensor(cfg.structure_background, dtype=self.dtype, device=pos.device)
        rgb = torch.where(hits.hit[..., None], color, bg)
        return self._to_image(rgb, len(cfg.structure_views)), self._records(framing)

    def _ed_batch(self, zs, positions, eds, esps, grids, ids, framing):
        cfg = self.cfg
        z, pos, drawn, framing = self._atoms(zs, positions, "ed", framing)
        device = pos.device
        vol = FieldVolume.stack(eds, esps, list(grids), ids, self.dtype, device)
        rot = view_rotations(cfg.ed_views, self.dtype, device)
        n_views = len(cfg.ed_views)
        x, y = pixel_coords(framing, cfg.image_size)
        b, r = x.shape
        layers = march_isosurface(vol, rot, framing, x, y, cfg.iso, cfg.step_voxels, cfg.bisection_steps,
                                  cfg.max_layers, cfg.samples_per_chunk, cfg.soft_coverage, cfg.soft_width)
        split = (b, n_views, r)
        t_l = layers.t.reshape(*split, -1)
        found = layers.found.reshape(*split, -1)
        surf_rgb = torch.zeros(*layers.found.shape, 3, dtype=self.dtype, device=device)  # shade found layers only
        hit = layers.found
        surf_rgb[hit] = shade(esp_ramp(layers.esp[hit], cfg.esp_stops), layers.normal[hit], cfg)
        surf_rgb = surf_rgb.reshape(*split, -1, 3)
        if cfg.structure_in_ed:
            hits, st_rgb = self._trace(z, pos, drawn, rot, framing, x, y)
            t_s, hit_s = hits.t, hits.hit
        else:
            t_s = torch.full(split, float("inf"), dtype=self.dtype, device=device)
            hit_s, st_rgb = torch.zeros(split, dtype=torch.bool, device=device), None

        opacity = 1.0 - cfg.transparency
        weight = found.to(self.dtype) * opacity
        if layers.coverage is not None:
            weight = torch.cat([weight[..., :1] * layers.coverage.reshape(split)[..., None], weight[..., 1:]], -1)
        visible = found & ~(hit_s[..., None] & (t_l >= t_s[..., None]))
        weight = torch.where(visible, weight, torch.zeros_like(weight))
        transmit = torch.ones(split, dtype=self.dtype, device=device)
        rgb = torch.zeros(*split, 3, dtype=self.dtype, device=device)
        for lay in range(weight.shape[-1]):
            rgb = rgb + (transmit * weight[..., lay])[..., None] * surf_rgb[..., lay, :]
            transmit = transmit * (1 - weight[..., lay])
        if st_rgb is not None:
            rgb = rgb + torch.where(hit_s[..., None], transmit[..., None] * st_rgb, torch.zeros_like(rgb))
        bg = torch.tensor(cfg.ed_background, dtype=self.dtype, device=device)
        uncovered = torch.where(hit_s, torch.zeros_like(transmit), transmit)
        rgb = rgb + uncovered[..., None] * bg
        if cfg.fourth_channel == "alpha":  # as PyMOL's PNG alpha: the first surface layer's opacity, 1 on atoms
            fourth = torch.where(hit_s, torch.ones_like(transmit), weight[..., 0])
        else:
            first_surface = torch.where(visible[..., 0], t_l[..., 0], torch.full_like(t_s, float("inf")))
            first = torch.minimum(first_surface, torch.where(hit_s, t_s, torch.full_like(t_s, float("inf"))))
            zr2 = 2 * framing.depth_radius.to(self.dtype)[:, None, None]
            fourth = torch.where(torch.isfinite(first), first / zr2, torch.ones_like(first)).clamp(0, 1)
        pixels = torch.cat([rgb, fourth[..., None]], dim=-1)
        return self._to_image(pixels, n_views), self._records(framing)


def render_structure(z, pos, config: RenderConfig | None = None) -> torch.Tensor:
    """One molecule's (V, 3, H, W) structure images (``pos`` Å; runs on ``pos``'s device)."""
    pos = torch.as_tensor(pos)
    return Renderer(config, dtype=pos.dtype if pos.is_floating_point() else torch.float32
                    ).structure_images([z], [pos])[0][0]


def render_ed(z, pos, ed, esp, grid: CubeGrid, config: RenderConfig | None = None) -> torch.Tensor:
    """One molecule's (V, 4, H, W) ED images (ED e/bohr^3 and ESP Hartree/e on ``grid``; ``pos`` Å)."""
    ed = torch.as_tensor(ed)
    return Renderer(config, dtype=ed.dtype).ed_images([z], [pos], [ed], [esp], [grid])[0][0]

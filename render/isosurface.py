"""Ray marching of the ED isosurface on cube grids, batched over molecules, views and pixels.

Fields of a batch are zero-padded to the largest grid of the batch (no resampling: each molecule keeps its
own origin and spacing and addresses only its own corner of the padded array), sampled trilinearly with
``grid_sample``. Each ray is clipped to its molecule's grid box (slab test), so empty space outside the box is
never sampled; only rays still alive (inside their box and short of ``max_layers`` crossings) are gathered
into each march chunk, and a chunk holds at most ``samples_per_chunk`` samples.

Every crossing of ``rho = iso`` along a ray is a surface layer. Crossings are bracketed by the march,
narrowed by bisection (no gradient) and placed by one secant step on the final bracket, which carries the
gradient with respect to the density values. Normals are central differences of the density.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from edg.edg_core.errors import InvalidRecord
from edg.edg_core.grid import CubeGrid
from edg.edg_core.units import ANGSTROM_IN_BOHR, BOHR_IN_ANGSTROM

from .camera import Framing


@dataclass
class FieldVolume:
    """ED and ESP of a batch on zero-padded grids: ``data`` (B, 2, Mx, My, Mz) (channel 0 ED in e/bohr^3,
    channel 1 ESP in Hartree/e), ``origin``/``spacing`` (B, 3) bohr, ``shape`` (B, 3) real grid sizes."""
    data: torch.Tensor
    origin: torch.Tensor
    spacing: torch.Tensor
    shape: torch.Tensor

    @classmethod
    def stack(cls, eds, esps, grids: list[CubeGrid], ids=None, dtype=torch.float32, device=None) -> FieldVolume:
        ids = ids or [f"molecule {i}" for i in range(len(eds))]
        for name, ed, esp, g in zip(ids, eds, esps, grids):
            for what, f in (("ED", ed), ("ESP", esp)):
                if tuple(f.shape) != tuple(g.shape):
                    raise InvalidRecord(name, f"{what} grid shape {tuple(f.shape)} != CubeGrid shape {g.shape}")
            if min(g.shape) < 2:
                raise InvalidRecord(name, f"grid shape {g.shape} needs at least 2 points per axis")
        m = [max(g.shape[k] for g in grids) for k in range(3)]
        device = device or torch.as_tensor(eds[0]).device
        parts = []
        for ed, esp in zip(eds, esps):
            f = torch.stack([torch.as_tensor(ed), torch.as_tensor(esp)]).to(device=device, dtype=dtype)
            nx, ny, nz = f.shape[1:]
            parts.append(F.pad(f, (0, m[2] - nz, 0, m[1] - ny, 0, m[0] - nx)))
        t = lambda rows: torch.tensor(rows, dtype=dtype, device=device)  # noqa: E731
        return cls(torch.stack(parts), t([g.origin for g in grids]), t([g.spacing for g in grids]),
                   torch.tensor([g.shape for g in grids], device=device))

    def occupied_box(self, iso: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Index bounds (B, 3) of the voxels with ED >= ``iso``, grown by one voxel and kept inside the grid;
        lo > hi for a molecule without such voxels. Rays are clipped to this box (empty-space skipping)."""
        with torch.no_grad():
            inside = self.data[:, 0] >= iso
            lo, hi = [], []
            for dims in ((2, 3), (1, 3), (1, 2)):
                occ = inside.any(dim=dims)  # (B, M)
                pos = torch.arange(occ.shape[1], device=occ.device)
                first = torch.where(occ, pos, occ.shape[1]).amin(1)
                last = torch.where(occ, pos, -1).amax(1)
                lo.append(first - 1)
                hi.append(last + 1)
            lo = torch.maximum(torch.stack(lo, 1), torch.zeros_like(self.shape))
            hi = torch.minimum(torch.stack(hi, 1), self.shape - 1)
            empty = ~inside.flatten(1).any(1)[:, None]
            lo = torch.where(empty, self.shape, lo)
        return lo.to(self.data.dtype), hi.to(self.data.dtype)

    def index_scale(self) -> torch.Tensor:
        """(3,) factors taking index steps to ``grid_sample`` coordinates (align_corners, padded size)."""
        size = torch.tensor(self.data.shape[2:], dtype=self.data.dtype, device=self.data.device)
        return 2 / (size - 1)

    def to_sample_coords(self, idx: torch.Tensor) -> torch.Tensor:
        """Fractional grid indices (..., 3) (i, j, k) -> ``grid_sample`` coordinates (..., 3) in (k, j, i) order."""
        return (idx * self.index_scale() - 1).flip(-1)

    def sample(self, coords: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
        """Trilinear values at ``grid_sample`` coordinates ``coords`` (B, P, 3) -> (B, C, P); zero outside."""
        out = F.grid_sample(self.data[:, channels], coords[:, :, None, None, :], mode="bilinear",
                            padding_mode="zeros", align_corners=True)
        return out[:, :, :, 0, 0]


@dataclass
class SurfaceLayers:
    """Up to L surface crossings per ray, in ray order: ``t`` (B, R, L) Å from the near plane, ``normal``
    (B, R, L, 3) camera space (outward, i.e. against the density gradient), ``esp`` (B, R, L) Hartree/e,
    ``found`` (B, R, L) bool; ``coverage`` (B, R) soft silhouette weight (only with ``soft``; else None)."""
    t: torch.Tensor
    normal: torch.Tensor
    esp: torch.Tensor
    found: torch.Tensor
    coverage: torch.Tensor | None = None


def _compact(mask: torch.Tensor):
    """Per row, the indices of True entries first, in order: ``idx`` (B, A) (0 past a row's count), ``valid``
    (B, A), A = most True in a row; and ``where`` = (row, slot, column) of every True entry, for writing per-slot
    values back with ``_put`` (``idx`` repeats 0 in unused slots, so it cannot be scattered to)."""
    b = mask.shape[0]
    rows, cols = mask.nonzero(as_tuple=True)
    count = torch.bincount(rows, minlength=b)
    a = max(int(count.max()), 1) if len(rows) else 1
    slot = torch.arange(len(rows), device=mask.device) - (torch.cumsum(count, 0) - count)[rows]
    idx = torch.zeros(b, a, dtype=torch.long, device=mask.device)
    valid = torch.zeros(b, a, dtype=torch.bool, device=mask.device)
    idx[rows, slot] = cols
    valid[rows, slot] = True
    return idx, valid, (rows, slot, cols)


def _put(dest: torch.Tensor, where, src: torch.Tensor) -> None:
    """dest (B, R, ...)[row, column] = src (B, A, ...)[row, slot] for the ``where`` of ``_compact``."""
    rows, slot, cols = where
    dest[rows, cols] = src[rows, slot]


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, R, ...) rows at idx (B, A) -> (B, A, ...)."""
    return torch.gather(x, 1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:]))


def ray_setup(vol: FieldVolume, rot: torch.Tensor, framing: Framing, x: torch.Tensor, y: torch.Tensor,
              box_lo: torch.Tensor, box_hi: torch.Tensor):
    """Rays in ``grid_sample`` coordinates: start ``g0`` (B, V*R, 3), direction per Å ``gd`` (B, V*R, 3), entry and
    exit ``t_in``/``t_out`` (B, V*R) in Å of the index box [box_lo, box_hi] (B, 3) (t_in > t_out: missed)."""
    b, r = x.shape
    v = rot.shape[0]
    dtype = vol.data.dtype
    rot = rot.to(dtype)
    zr = framing.depth_radius.to(dtype)
    cam0 = torch.stack([x, y, zr[:, None].expand_as(x)], dim=-1).to(dtype)  # (B, R, 3)
    world0 = framing.center.to(dtype)[:, None, None] + torch.einsum("vji,brj->bvri", rot, cam0)  # R^T c
    scale = ANGSTROM_IN_BOHR / vol.spacing  # index units per Å, (B, 3)
    g0 = (world0 * ANGSTROM_IN_BOHR - vol.origin[:, None, None]) / vol.spacing[:, None, None]
    gd = (-rot[:, 2, :])[None] * scale[:, None]  # (B, V, 3): model direction of camera -z, in index units
    lo, hi = box_lo[:, None, None], box_hi[:, None, None]
    gdx = gd[:, :, None].expand_as(g0)
    par = gdx.abs() < 1e-12
    inv = 1 / torch.where(par, torch.ones_like(gdx), gdx)
    t1, t2 = (lo - g0) * inv, (hi - g0) * inv
    inside = (g0 >= lo) & (g0 <= hi)
    big = torch.full_like(t1, float("inf"))
    lo_t = torch.where(par, torch.where(inside, -big, big), torch.minimum(t1, t2))
    hi_t = torch.where(par, torch.where(inside, big, -big), torch.maximum(t1, t2))
    t_in = lo_t.amax(-1).clamp(min=0)
    t_out = torch.minimum(hi_t.amin(-1), 2 * zr[:, None, None])
    g0s = vol.to_sample_coords(g0).reshape(b, v * r, 3)
    gds = (gdx * vol.index_scale()).flip(-1).reshape(b, v * r, 3)
    return g0s, gds, t_in.reshape(b, v * r), t_out.reshape(b, v * r)


def march_isosurface(vol: FieldVolume, rot: torch.Tensor, framing: Framing, x: torch.Tensor, y: torch.Tensor,
                     iso: float = 0.05, step_voxels: float = 0.5, bisection_steps: int = 6, max_layers: int = 4,
                     samples_per_chunk: int = 1 << 25, soft: bool = False, soft_width: float = 0.005
                     ) -> SurfaceLayers:
    """The surface layers (hit depth, normal, ESP) of every pixel ray of every view.

    ``rot`` (V, 3, 3) view rotations, ``x``/``y`` (B, R) pixel coordinates (Å). Returns ``SurfaceLayers`` with
    rays ordered view-major (ray index = view * R + pixel).
    """
    g0, gd, t_in, t_out = ray_setup(vol, rot, framing, x, y, *vol.occupied_box(iso))
    b, n_rays = t_in.shape
    n_layers = max_layers
    dtype, device = vol.data.dtype, vol.data.device
    step = (step_voxels * vol.spacing.amin(1) * BOHR_IN_ANGSTROM).to(dtype)  # (B,) Å
    with torch.no_grad():
        prev_pos = torch.zeros(b, n_rays, dtype=torch.bool, device=device)  # last sample had ED >= iso
        prev_in = torch.zeros(b, n_rays, dtype=torch.bool, device=device)  # ... and was inside the box
        n_found = torch.zeros(b, n_rays, dtype=torch.long, device=device)
        t_lo = torch.zeros(b, n_rays, n_layers, dtype=dtype, device=device)
        t_hi = torch.zeros_like(t_lo)
        f_max = torch.full((b, n_rays), -float("inf"), dtype=dtype, device=device)
        t_max = torch.zeros(b, n_rays, dtype=dtype, device=device)
        k0 = 0
        while True:
            t_now = t_in + k0 * step[:, None]
            alive = (t_now <= t_out) & ((n_found < n_layers) | soft)
            if not alive.any():
                break
            idx, valid, where = _compact(alive)
            t_start = _take(t_in, idx)
            span = torch.where(valid, _take(t_out, idx) - t_start, torch.zeros_like(t_start))
            remaining = int((span / step[:, None]).amax()) + 1 - k0
            c = int(max(1, min(remaining, samples_per_chunk // idx.numel())))
            ks = k0 + torch.arange(c, dtype=dtype, device=device)
            t = t_start[..., None] + ks * step[:, None, None]  # (B, A, C)
            inb = valid[..., None] & (t <= _take(t_out, idx)[..., None])
            pts = torch.addcmul(_take(g0, idx)[:, :, None], t[..., None], _take(gd, idx)[:, :, None])
            f = vol.sample(pts.view(b, -1, 3), slice(0, 1))[:, 0].view_as(t)
            pos = f >= iso
            pos_seq = torch.cat([_take(prev_pos, idx)[..., None], pos], -1)
            in_seq = torch.cat([_take(prev_in, idx)[..., None], inb], -1)
            cross = (pos_seq[..., 1:] != pos_seq[..., :-1]) & in_seq[..., 1:] & in_seq[..., :-1]
            nf = _take(n_found, idx)
            count = torch.cumsum(cross, -1)
            layer = nf[..., None] + count - 1
            bb, aa, cc = (cross & (layer < n_layers)).nonzero(as_tuple=True)
            ray, lay = idx[bb, aa], layer[bb, aa, cc]
            t_cross = t_start[bb, aa] + (k0 + cc).to(dtype) * step[bb]
            t_hi[bb, ray, lay] = t_cross
            t_lo[bb, ray, lay] = t_cross - step[bb]
            _put(n_found, where, (nf + count[..., -1]).clamp(max=n_layers))
            _put(prev_pos, where, pos[..., -1])
            _put(prev_in, where, inb[..., -1])
            if soft:
                fm, km = torch.where(inb, f - iso, -float("inf")).max(-1)
                better = fm > _take(f_max, idx)
                _put(f_max, where, torch.where(better, fm, _take(f_max, idx)))
                _put(t_max, where, torch.where(better, torch.gather(t, -1, km[..., None])[..., 0], _take(t_max, idx)))
            k0 += c
        found = torch.arange(n_layers, device=device) < n_found[..., None]  # (B, R, L)
        coverage = None
        if soft:  # every ray with samples gets a layer 0: its crossing, or the densest sample
            has_sample = torch.isfinite(f_max)
            no_hit = has_sample & ~found[..., 0]
            t_lo[..., 0] = torch.where(no_hit, t_max, t_lo[..., 0])
            t_hi[..., 0] = torch.where(no_hit, t_max, t_hi[..., 0])
            found[..., 0] |= has_sample

    # gather found layers, bisect their brackets, then one differentiable secant step
    flat = found.reshape(b, -1)
    idx, valid, _ = _compact(flat)
    ray = idx // n_layers
    p0, pd = _take(g0, ray), _take(gd, ray)
    a, c_ = _take(t_lo.reshape(b, -1), idx), _take(t_hi.reshape(b, -1), idx)

    def density(tt):
        return vol.sample(p0 + tt[..., None] * pd, slice(0, 1))[:, 0] - iso

    with torch.no_grad():
        fa = density(a)
        for _ in range(bisection_steps):
            mid = 0.5 * (a + c_)
            fm = density(mid)
            same = (fm >= 0) == (fa >= 0)
            a, c_, fa = torch.where(same, mid, a), torch.where(same, c_, mid), torch.where(same, fm, fa)
    fa, fc = density(a), density(c_)
    denom = fc - fa
    ok = denom.abs() > 1e-30
    frac = torch.where(ok, -fa / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    t_hit = a + frac.clamp(0, 1) * (c_ - a)
    pts = p0 + t_hit[..., None] * pd

    esp = vol.sample(pts, slice(1, 2))[:, 0]
    h = 0.5
    eye = torch.eye(3, dtype=dtype, device=device) * h * vol.index_scale()
    offsets = torch.cat([eye, -eye]).flip(-1)  # row a: +-h index steps along model axis a, in (k, j, i) order
    around = vol.sample((pts[:, :, None] + offsets).reshape(b, -1, 3), slice(0, 1))[:, 0].view(b, -1, 6)
    grad = (around[..., :3] - around[..., 3:]) / (2 * h * vol.spacing[:, None])  # e/bohr^4, model axes
    view = ray // (n_rays // rot.shape[0])
    n_cam = torch.einsum("bavj,baj->bav", rot.to(dtype)[view], -grad)
    n_cam = F.normalize(n_cam, dim=-1)

    def scatter(vals, fill):
        shape = (b, flat.shape[1] + 1, *vals.shape[2:])
        out = torch.full(shape, fill, dtype=vals.dtype, device=device)
        dest = torch.where(valid, idx, flat.shape[1])
        out = out.scatter(1, dest.view(*dest.shape, *([1] * (vals.dim() - 2))).expand_as(vals), vals)
        return out[:, :-1].reshape(b, n_rays, n_layers, *vals.shape[2:])

    if soft:
        dens_max = vol.sample(g0 + t_max[..., None] * gd, slice(0, 1))[:, 0]
        coverage = torch.where(torch.isfinite(f_max), torch.sigmoid((dens_max - iso) / soft_width),
                               torch.zeros_like(dens_max))
    return SurfaceLayers(scatter(t_hit, float("inf")), scatter(n_cam, 0.0), scatter(esp, 0.0), found, coverage)

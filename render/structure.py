"""Ball-and-stick geometry: bonds from covalent radii and analytic ray tracing of spheres and cylinders.

Rays are orthographic camera rays (see ``render.camera``): pixel ``(x, y)`` starts at ``z = depth_radius`` and
travels toward -z; ``t`` is the distance travelled (Å). Everything is batched over molecules, views and pixels;
padded atoms (mask False) and padded bonds are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .elements import COVALENT_RADII, ELEMENT_COLORS, VDW_RADII, element_table


def find_bonds(z: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, tolerance: float = 0.45
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bonds of padded molecules: atoms i < j are bonded when ``d_ij < r_cov_i + r_cov_j + tolerance`` (Å).

    ``z`` (B, N) long, ``pos`` (B, N, 3) Å, ``mask`` (B, N) bool -> ``bonds`` (B, P, 2) long atom indices and
    ``bond_mask`` (B, P) bool (P = most bonds in the batch, at least 1).
    """
    with torch.no_grad():
        b, n = z.shape
        rc = element_table(COVALENT_RADII, z, pos.dtype)
        d = torch.cdist(pos, pos)
        pair = mask[:, :, None] & mask[:, None, :]
        upper = torch.ones(n, n, dtype=torch.bool, device=z.device).triu(1)
        bonded = pair & upper & (d < rc[:, :, None] + rc[:, None, :] + tolerance) & (d > 0.1)
        mol, i, j = bonded.nonzero(as_tuple=True)
        counts = torch.bincount(mol, minlength=b)
        p = max(int(counts.max()) if len(counts) else 0, 1)
        slot = torch.arange(len(mol), device=z.device) - (torch.cumsum(counts, 0) - counts)[mol]
        bonds = torch.zeros(b, p, 2, dtype=torch.long, device=z.device)
        bond_mask = torch.zeros(b, p, dtype=torch.bool, device=z.device)
        bonds[mol, slot, 0], bonds[mol, slot, 1] = i, j
        bond_mask[mol, slot] = True
    return bonds, bond_mask


@dataclass
class StructureHits:
    """First hit of every ray: ``t`` (B, V, R) Å (inf where missed), ``normal`` (B, V, R, 3) camera space,
    ``color`` (B, V, R, 3) unshaded element colour, ``hit`` (B, V, R) bool."""
    t: torch.Tensor
    normal: torch.Tensor
    color: torch.Tensor
    hit: torch.Tensor


def trace_structure(cam: torch.Tensor, z: torch.Tensor, mask: torch.Tensor, bonds: torch.Tensor,
                    bond_mask: torch.Tensor, x: torch.Tensor, y: torch.Tensor, depth_radius: torch.Tensor,
                    stick_radius: float = 0.15, sphere_scale: float = 0.2, stick_h_scale: float = 0.4,
                    tile: int = 16, max_elements: int = 1 << 24) -> StructureHits:
    """Ray-trace balls (radius ``sphere_scale`` x vdW) and sticks (radius ``stick_radius``, times
    ``stick_h_scale`` for bonds to hydrogen as in PyMOL; each half in its atom's colour).

    ``cam`` (B, V, N, 3) camera-space atom positions (Å), ``z``/``mask`` (B, N), ``bonds``/``bond_mask`` from
    ``find_bonds``, ``x``/``y`` (B, n*n) pixel-centre coordinates (Å) of an n x n image in row-major order,
    ``depth_radius`` (B,) Å. The image is cut into ``tile`` x ``tile`` tiles; the search tests each ball or
    stick only against the pixels of the tiles its screen bounding box overlaps (a list of (tile, primitive)
    pairs, processed in chunks of at most ``max_elements`` pixel tests) and keeps the nearest hit per pixel
    (ties: balls before sticks, then the lower index). The hits are then recomputed from the winners alone,
    which is where gradients with respect to ``cam`` flow.
    """
    b, v, _, _ = cam.shape
    n = int(round(x.shape[1] ** 0.5))
    nt = -(-n // tile)
    dtype = cam.dtype
    far = torch.finfo(dtype).max ** 0.25  # off-image padding pixels: far from everything, finite
    cols = x.view(b, n, n)[:, 0, :].detach()  # (B, n) x of each pixel column
    rows = y.view(b, n, n)[:, :, 0].detach()  # (B, n) y of each pixel row
    cols_pad = F.pad(cols, (0, nt * tile - n), value=far)
    rows_pad = F.pad(rows, (0, nt * tile - n), value=far)
    first = torch.arange(nt, device=x.device) * tile
    last = (first + tile - 1).clamp(max=n - 1)
    tiles = (torch.minimum(cols[:, first], cols[:, last]), torch.maximum(cols[:, first], cols[:, last]),
             torch.minimum(rows[:, first], rows[:, last]), torch.maximum(rows[:, first], rows[:, last]))

    radius = element_table(VDW_RADII, z, dtype) * sphere_scale  # (B, N)
    colors = element_table(ELEMENT_COLORS, z, dtype)  # (B, N, 3)
    to_h = (torch.gather(z, 1, bonds[..., 0]) == 1) | (torch.gather(z, 1, bonds[..., 1]) == 1)
    bond_radius = stick_radius * torch.where(to_h, stick_h_scale, 1.0).to(dtype)  # (B, P)
    a_end = torch.gather(cam, 2, bonds[:, None, :, 0, None].expand(-1, v, -1, 3))  # (B, V, P, 3)
    b_end = torch.gather(cam, 2, bonds[:, None, :, 1, None].expand(-1, v, -1, 3))
    zr = depth_radius.to(dtype)

    with torch.no_grad():
        c = cam.detach()
        r_s = radius[:, None, :]
        balls = _tile_pairs(c[..., 0] - r_s, c[..., 0] + r_s, c[..., 1] - r_s, c[..., 1] + r_s, mask, tiles)
        a, e = a_end.detach(), b_end.detach()
        r_c = bond_radius[:, None, :]
        sticks = _tile_pairs(torch.minimum(a[..., 0], e[..., 0]) - r_c, torch.maximum(a[..., 0], e[..., 0]) + r_c,
                             torch.minimum(a[..., 1], e[..., 1]) - r_c, torch.maximum(a[..., 1], e[..., 1]) + r_c,
                             bond_mask, tiles)
        n_px = b * v * nt * nt * tile * tile

        def pixels(pairs):  # (Q,) pairs -> pixel x (Q, 1, tile), y (Q, tile, 1), depth radius (Q, 1, 1)
            bi, _, tr, tc, _ = pairs
            offs = torch.arange(tile, device=x.device)
            return (cols_pad[bi[:, None], tc[:, None] * tile + offs][:, None, :],
                    rows_pad[bi[:, None], tr[:, None] * tile + offs][:, :, None], zr[bi][:, None, None])

        def ball_t(pairs):
            bi, vi, _, _, k = pairs
            px, py, zq = pixels(pairs)
            return _ball_t(px, py, zq, c[bi, vi, k], radius[bi, k])

        def stick_t(pairs):
            bi, vi, _, _, k = pairs
            px, py, zq = pixels(pairs)
            return _stick_t(px, py, zq, a[bi, vi, k], e[bi, vi, k], bond_radius[bi, k])

        t_s, win_s = _nearest(balls, ball_t, n_px, v, nt, tile, max_elements, dtype)
        t_c, win_c = _nearest(sticks, stick_t, n_px, v, nt, tile, max_elements, dtype)
        ball_wins = t_s <= t_c
        hit_px = torch.isfinite(torch.minimum(t_s, t_c)).nonzero()[:, 0]
        is_ball = ball_wins[hit_px]
        # flat pixel index (b, v, tr, tc, dr, dc) -> image coordinates
        dc, dr = hit_px % tile, (hit_px // tile) % tile
        tc, tr = (hit_px // (tile * tile)) % nt, (hit_px // (tile * tile * nt)) % nt
        bv = hit_px // (tile * tile * nt * nt)
        bi, vi, row, col = bv // v, bv % v, tr * tile + dr, tc * tile + dc
        on_image = (row < n) & (col < n)
        sel_b = (on_image & is_ball).nonzero()[:, 0]
        sel_c = (on_image & ~is_ball).nonzero()[:, 0]
        k_b = balls[4][win_s[hit_px[sel_b]]]
        k_c = sticks[4][win_c[hit_px[sel_c]]]

    # the winners again, differentiably
    def at(sel):
        return bi[sel], vi[sel], cols[bi[sel], col[sel]], rows[bi[sel], row[sel]], zr[bi[sel]]

    bb, vb, pxb, pyb, zb = at(sel_b)
    cen, rad = cam[bb, vb, k_b], radius[bb, k_b]
    t_b = _ball_t(pxb, pyb, zb, cen, rad)
    q_b = torch.stack([pxb, pyb, zb - t_b], -1)
    n_b = (q_b - cen) / rad[:, None]
    col_b = colors[bb, k_b]

    bc, vc, pxc, pyc, zc = at(sel_c)
    a_hit, e_hit, rad_c = a_end[bc, vc, k_c], b_end[bc, vc, k_c], bond_radius[bc, k_c]
    t_st = _stick_t(pxc, pyc, zc, a_hit, e_hit, rad_c)
    q_c = torch.stack([pxc, pyc, zc - t_st], -1)
    axis = e_hit - a_hit
    length = axis.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    u = axis / length
    along = ((q_c - a_hit) * u).sum(-1, keepdim=True)
    n_c = (q_c - a_hit - along * u) / rad_c[:, None]
    col_c = torch.where(along < 0.5 * length, colors[bc, bonds[bc, k_c, 0]], colors[bc, bonds[bc, k_c, 1]])

    pixel = row * n + col
    where = (torch.cat([bb, bc]), torch.cat([vb, vc]), torch.cat([pixel[sel_b], pixel[sel_c]]))
    t = torch.full((b, v, n * n), float("inf"), dtype=dtype, device=x.device).index_put(where, torch.cat([t_b, t_st]))
    zeros = torch.zeros(b, v, n * n, 3, dtype=dtype, device=x.device)
    return StructureHits(t, zeros.index_put(where, torch.cat([n_b, n_c])),
                         zeros.index_put(where, torch.cat([col_b, col_c]).to(dtype)), torch.isfinite(t))


def _tile_pairs(lo_x, hi_x, lo_y, hi_y, valid, tiles):
    """The (molecule, view, tile row, tile column, primitive) index tensors, each (Q,), of every primitive whose
    screen box [lo_x, hi_x] x [lo_y, hi_y] (B, V, K) overlaps a tile; ``tiles`` = per tile column x bounds and per
    tile row y bounds, each (B, nt). Ordered by molecule, view, tile, then primitive."""
    x_lo, x_hi, y_lo, y_hi = (t[:, None, :, None] for t in tiles)  # (B, 1, nt, 1)
    in_cols = (hi_x[:, :, None] >= x_lo) & (lo_x[:, :, None] <= x_hi) & valid[:, None, None, :]  # (B, V, nt, K)
    in_rows = (hi_y[:, :, None] >= y_lo) & (lo_y[:, :, None] <= y_hi)
    return (in_rows[:, :, :, None] & in_cols[:, :, None]).nonzero(as_tuple=True)


def _nearest(pairs, t_of, n_px, v, nt, tile, max_elements, dtype):
    """Nearest hit per pixel over (tile, primitive) ``pairs``: ``t`` (n_px,) (inf: none) and the winning pair's
    index (n_px,) (the lowest among equal ``t``). ``t_of(pairs)`` -> (Q, tile, tile) distances. Two passes over
    chunks of at most ``max_elements`` pixel tests: the minimum, then the first pair that reaches it (a single
    chunk is computed once)."""
    bi, vi, tr, tc, _ = pairs
    device = bi.device
    offs = torch.arange(tile * tile, device=device)
    cell = ((bi * v + vi) * nt + tr) * nt + tc  # (Q,) flat (molecule, view, tile) index

    def pixels(sl):  # flat pixel indices (chunk * tile * tile,) of a chunk of pairs
        return (cell[sl, None] * (tile * tile) + offs).reshape(-1)
    step = max(1, max_elements // (tile * tile))
    spans = [slice(s, s + step) for s in range(0, len(bi), step)]
    best = torch.full((n_px,), float("inf"), dtype=dtype, device=device)
    win = torch.full((n_px,), len(bi), dtype=torch.long, device=device)
    kept = None
    for sl in spans:
        kept = t_of(tuple(p[sl] for p in pairs)).reshape(-1, tile * tile)
        best.scatter_reduce_(0, pixels(sl), kept.reshape(-1), "amin")
    for sl in spans:
        t = kept if len(spans) == 1 else t_of(tuple(p[sl] for p in pairs)).reshape(-1, tile * tile)
        ids = torch.arange(sl.start, sl.start + len(t), device=device)[:, None].expand_as(t)
        px = pixels(sl)
        mine = (t == best[px].view_as(t)) & torch.isfinite(t)
        win.scatter_reduce_(0, px, torch.where(mine, ids, len(bi)).reshape(-1), "amin")
    return best, win


def _ball_t(px, py, zr, center, radius):
    """Distance from the near plane to the near cap of balls ``center`` (..., 3) of ``radius`` (...), for rays
    at ``px``/``py`` (broadcast against center's leading shape plus pixel dims); inf where missed."""
    cx, cy, cz = (center[..., i].view(*center.shape[:-1], *([1] * (px.dim() - center.dim() + 1)))
                  for i in range(3))
    r = radius.view_as(cx)
    gap = r ** 2 - (px - cx) ** 2 - (py - cy) ** 2
    on = gap > 0
    return torch.where(on, zr - cz - torch.sqrt(torch.where(on, gap, torch.ones_like(gap))),
                       torch.full_like(gap, float("inf")))


def _stick_t(px, py, zr, a, e, radius):
    """Distance from the near plane to sticks (cylinders from ``a`` to ``e`` (..., 3), ``radius`` (...)) for rays
    o + s (0, 0, -1) at ``px``/``py``; inf where missed. Shapes broadcast as in ``_ball_t``."""
    axis = e - a
    length = axis.norm(dim=-1).clamp(min=1e-12)
    u = axis / length[..., None]
    lead = (*a.shape[:-1], *([1] * (px.dim() - a.dim() + 1)))
    ax, ay, az = (a[..., i].view(lead) for i in range(3))
    ux, uy, uz = (u[..., i].view(lead) for i in range(3))
    wx, wy, wz = px - ax, py - ay, zr - az
    w_u = wx * ux + wy * uy + wz * uz
    perp_x, perp_y, perp_z = wx - w_u * ux, wy - w_u * uy, wz - w_u * uz
    qa = 1 - uz ** 2
    qb = -2 * perp_z
    qc = perp_x ** 2 + perp_y ** 2 + perp_z ** 2 - radius.view(lead) ** 2
    disc = qb ** 2 - 4 * qa * qc
    ok = (disc > 0) & (qa > 1e-9)
    safe_qa = torch.where(ok, qa, torch.ones_like(qa))
    s = (-qb - torch.sqrt(torch.where(ok, disc, torch.ones_like(disc)))) / (2 * safe_qa)
    h = w_u - s * uz
    ok = ok & (h >= 0) & (h <= length.view(lead))
    return torch.where(ok, s, torch.full_like(s, float("inf")))

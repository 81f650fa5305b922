"""Ball-and-stick geometry: bonds from covalent radii and analytic ray tracing of spheres and cylinders.

Rays are orthographic camera rays (see ``render.camera``): pixel ``(x, y)`` starts at ``z = depth_radius`` and
travels toward -z; ``t`` is the distance travelled (Å). Everything is batched over molecules, views and pixels;
padded atoms (mask False) and padded bonds are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

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
    ``depth_radius`` (B,) Å. The image is cut into ``tile`` x ``tile`` tiles and each tile tests only the
    balls and sticks whose screen bounding boxes overlap it (most tiles: a handful, many: none); tiles are
    processed in groups so that no intermediate holds more than ``max_elements`` numbers.
    """
    b, v, n_atoms, _ = cam.shape
    n = int(round(x.shape[1] ** 0.5))
    nt = -(-n // tile)
    pad = nt * tile - n
    dtype = cam.dtype
    # pixel coordinates per tile: (B, T, P) with T = nt * nt tiles of P = tile * tile pixels
    far = torch.finfo(dtype).max ** 0.25  # off-image padding pixels: far from everything, finite
    xs = torch.nn.functional.pad(x.view(b, n, n)[:, 0, :], (0, pad), value=far)  # (B, n_pad) columns
    ys = torch.nn.functional.pad(y.view(b, n, n)[:, :, 0], (0, pad), value=far)  # (B, n_pad) rows
    xt = xs.view(b, 1, nt, 1, tile).expand(b, nt, nt, tile, tile).reshape(b, nt * nt, tile * tile)
    yt = ys.view(b, nt, 1, tile, 1).expand(b, nt, nt, tile, tile).reshape(b, nt * nt, tile * tile)
    real_x = x.view(b, n, n)[:, 0, :]
    real_y = y.view(b, n, n)[:, :, 0]
    first = torch.arange(nt, device=x.device) * tile
    last = (first + tile - 1).clamp(max=n - 1)
    x_lo = torch.minimum(real_x[:, first], real_x[:, last])[:, None, :].expand(b, nt, nt).reshape(b, 1, -1, 1)
    x_hi = torch.maximum(real_x[:, first], real_x[:, last])[:, None, :].expand(b, nt, nt).reshape(b, 1, -1, 1)
    y_lo = torch.minimum(real_y[:, first], real_y[:, last])[:, :, None].expand(b, nt, nt).reshape(b, 1, -1, 1)
    y_hi = torch.maximum(real_y[:, first], real_y[:, last])[:, :, None].expand(b, nt, nt).reshape(b, 1, -1, 1)

    radius = element_table(VDW_RADII, z, dtype) * sphere_scale  # (B, N)
    colors = element_table(ELEMENT_COLORS, z, dtype)  # (B, N, 3)
    to_h = (torch.gather(z, 1, bonds[..., 0]) == 1) | (torch.gather(z, 1, bonds[..., 1]) == 1)
    bond_radius = stick_radius * torch.where(to_h, stick_h_scale, 1.0).to(dtype)  # (B, P)
    a_end = torch.gather(cam, 2, bonds[:, None, :, 0, None].expand(-1, v, -1, 3))  # (B, V, P, 3)
    b_end = torch.gather(cam, 2, bonds[:, None, :, 1, None].expand(-1, v, -1, 3))

    def overlapping(lo_x, hi_x, lo_y, hi_y, valid):
        """Per tile, the primitives whose box overlaps it: indices (B, V, T, K) and validity."""
        hit = (hi_x[:, :, None] >= x_lo) & (lo_x[:, :, None] <= x_hi) & \
              (hi_y[:, :, None] >= y_lo) & (lo_y[:, :, None] <= y_hi) & valid[:, None, None, :]
        k = max(int(hit.sum(-1).max()), 1)
        order = torch.argsort((~hit).to(torch.int8), dim=-1, stable=True)[..., :k]
        return order, torch.gather(hit, -1, order)

    with torch.no_grad():
        r_s = radius[:, None, :]
        s_idx, s_ok = overlapping(cam[..., 0] - r_s, cam[..., 0] + r_s, cam[..., 1] - r_s, cam[..., 1] + r_s,
                                  mask)
        r_c = bond_radius[:, None, :]
        c_idx, c_ok = overlapping(torch.minimum(a_end[..., 0], b_end[..., 0]) - r_c,
                                  torch.maximum(a_end[..., 0], b_end[..., 0]) + r_c,
                                  torch.minimum(a_end[..., 1], b_end[..., 1]) - r_c,
                                  torch.maximum(a_end[..., 1], b_end[..., 1]) + r_c, bond_mask)

    def per_tile(data, idx):
        """data (B, V, Q, C) or (B, Q, C) -> (B, V, T, 1, K, C) for tile primitive indices (B, V, T, K)."""
        if data.dim() == 3:
            data = data[:, None].expand(-1, v, -1, -1)
        t_count, k = idx.shape[2], idx.shape[3]
        flat = torch.gather(data, 2, idx.reshape(b, v, t_count * k, 1).expand(-1, -1, -1, data.shape[-1]))
        return flat.view(b, v, t_count, 1, k, data.shape[-1])

    t_count = nt * nt
    ks, kc = s_idx.shape[-1], c_idx.shape[-1]
    step = max(1, max_elements // max(b * v * tile * tile * max(ks, kc), 1))
    sph = (per_tile(cam, s_idx), per_tile(radius[..., None], s_idx)[..., 0], per_tile(colors, s_idx),
           s_ok[:, :, :, None, :])
    cyl = (per_tile(a_end, c_idx), per_tile(b_end, c_idx), per_tile(bond_radius[..., None], c_idx)[..., 0],
           per_tile(torch.gather(colors, 1, bonds[..., 0, None].expand(-1, -1, 3)), c_idx),
           per_tile(torch.gather(colors, 1, bonds[..., 1, None].expand(-1, -1, 3)), c_idx), c_ok[:, :, :, None, :])
    zr = depth_radius.to(dtype).view(b, 1, 1, 1, 1)
    parts = [_trace_tiles(xt[:, None, sl, :, None], yt[:, None, sl, :, None], zr, *(a[:, :, sl] for a in sph),
                          *(a[:, :, sl] for a in cyl))
             for sl in (slice(i, i + step) for i in range(0, t_count, step))]
    hits = StructureHits(*(torch.cat([getattr(p, f) for p in parts], dim=2) for f in ("t", "normal", "color", "hit")))

    def untile(a):  # (B, V, T, P, ...) -> (B, V, n*n, ...)
        rest = a.shape[4:]
        a = a.reshape(b, v, nt, nt, tile, tile, *rest).transpose(3, 4).reshape(b, v, nt * tile, nt * tile, *rest)
        return a[:, :, :n, :n].reshape(b, v, n * n, *rest)

    return StructureHits(*(untile(getattr(hits, f)) for f in ("t", "normal", "color", "hit")))


def _pick(data: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """data (..., 1, K, C) and winner indices k (..., P) -> (..., P, C)."""
    shape = (*k.shape, 1, data.shape[-1])
    return torch.gather(data.expand(*k.shape, data.shape[-2], data.shape[-1]), -2,
                        k[..., None, None].expand(shape))[..., 0, :]


def _trace_tiles(px, py, zr, s_c, s_r, s_col, s_ok, c_a, c_b, c_r, c_col_i, c_col_j, c_ok) -> StructureHits:
    """Nearest ball or stick per ray. Pixels ``px``/``py`` (B, 1, T, P, 1); primitives per tile
    (B, V, T, 1, K[, C]); ``zr`` (B, 1, 1, 1, 1). Returns (B, V, T, P[, 3]) fields."""
    dtype = px.dtype
    inf = torch.tensor(float("inf"), dtype=dtype, device=px.device)

    # balls: hit where the pixel lies inside the projected disc; the near cap is at cz + sqrt(r^2 - rho^2)
    gap = s_r ** 2 - (px - s_c[..., 0]) ** 2 - (py - s_c[..., 1]) ** 2
    on_ball = (gap > 0) & s_ok
    t_ball = torch.where(on_ball, zr - s_c[..., 2] - torch.sqrt(torch.where(on_ball, gap, torch.ones_like(gap))), inf)
    t_s, k_s = t_ball.min(dim=-1)

    # sticks: ray o + s * (0, 0, -1) against the cylinder around A + h * u, 0 <= h <= L
    axis = c_b - c_a
    length = axis.norm(dim=-1).clamp(min=1e-12)
    u = axis / length[..., None]
    wx, wy, wz = px - c_a[..., 0], py - c_a[..., 1], zr - c_a[..., 2]
    ux, uy, uz = u[..., 0], u[..., 1], u[..., 2]
    w_u = wx * ux + wy * uy + wz * uz
    perp_x, perp_y, perp_z = wx - w_u * ux, wy - w_u * uy, wz - w_u * uz
    qa = 1 - uz ** 2
    qb = -2 * perp_z
    qc = perp_x ** 2 + perp_y ** 2 + perp_z ** 2 - c_r ** 2
    disc = qb ** 2 - 4 * qa * qc
    ok = (disc > 0) & (qa > 1e-9) & c_ok
    safe_qa = torch.where(ok, qa, torch.ones_like(qa))
    s = (-qb - torch.sqrt(torch.where(ok, disc, torch.ones_like(disc)))) / (2 * safe_qa)
    h = w_u - s * uz
    ok = ok & (h >= 0) & (h <= length)
    t_stick = torch.where(ok, s, inf)
    t_c, k_c = t_stick.min(dim=-1)

    ball_wins = t_s <= t_c
    t = torch.minimum(t_s, t_c)
    hit = torch.isfinite(t)
    t_safe = torch.where(hit, t, torch.zeros_like(t))
    q = torch.stack([px[..., 0].expand_as(t), py[..., 0].expand_as(t), zr[..., 0] - t_safe], dim=-1)

    n_ball = (q - _pick(s_c, k_s)) / _pick(s_r[..., None], k_s)
    a_hit, u_hit = _pick(c_a, k_c), _pick(u, k_c)
    along = ((q - a_hit) * u_hit).sum(-1, keepdim=True)
    n_stick = (q - a_hit - along * u_hit) / _pick(c_r[..., None], k_c)
    first_half = along < 0.5 * _pick(length[..., None], k_c)
    col_stick = torch.where(first_half, _pick(c_col_i, k_c), _pick(c_col_j, k_c))

    normal = torch.where(ball_wins[..., None], n_ball, n_stick)
    color = torch.where(ball_wins[..., None], _pick(s_col, k_s), col_stick)
    zero = torch.zeros_like(normal)
    return StructureHits(t, torch.where(hit[..., None], normal, zero), torch.where(hit[..., None], color, zero), hit)

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


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, V, K, C), idx (B, V, R) -> (B, V, R, C)."""
    return torch.gather(x, 2, idx[..., None].expand(*idx.shape, x.shape[-1]))


def trace_structure(cam: torch.Tensor, z: torch.Tensor, mask: torch.Tensor, bonds: torch.Tensor,
                    bond_mask: torch.Tensor, x: torch.Tensor, y: torch.Tensor, depth_radius: torch.Tensor,
                    stick_radius: float = 0.15, sphere_scale: float = 0.2, stick_h_scale: float = 0.4,
                    max_elements: int = 1 << 24) -> StructureHits:
    """Ray-trace balls (radius ``sphere_scale`` x vdW) and sticks (radius ``stick_radius``, times
    ``stick_h_scale`` for bonds to hydrogen as in PyMOL; each half in its atom's colour).

    ``cam`` (B, V, N, 3) camera-space atom positions (Å), ``z``/``mask`` (B, N), ``bonds``/``bond_mask`` from
    ``find_bonds``, ``x``/``y`` (B, R) pixel coordinates (Å), ``depth_radius`` (B,) Å. Pixels are processed in
    chunks so that no intermediate holds more than ``max_elements`` numbers per coordinate.
    """
    b, v, n, _ = cam.shape
    r_count = x.shape[1]
    p = bonds.shape[1]
    chunk = max(1, max_elements // max(b * v * (n + p), 1))
    to_h = (torch.gather(z, 1, bonds[..., 0]) == 1) | (torch.gather(z, 1, bonds[..., 1]) == 1)
    bond_radius = stick_radius * torch.where(to_h, stick_h_scale, 1.0).to(cam.dtype)  # (B, P)
    parts = [_trace_chunk(cam, z, mask, bonds, bond_mask, x[:, s:s + chunk], y[:, s:s + chunk], depth_radius,
                          bond_radius, sphere_scale) for s in range(0, r_count, chunk)]
    return StructureHits(*(torch.cat([getattr(q, f) for q in parts], dim=2) for f in ("t", "normal", "color", "hit")))


def _trace_chunk(cam, z, mask, bonds, bond_mask, x, y, zr, bond_radius, sphere_scale) -> StructureHits:
    dtype = cam.dtype
    v = cam.shape[1]
    inf = torch.tensor(float("inf"), dtype=dtype, device=cam.device)
    radius = element_table(VDW_RADII, z, dtype) * sphere_scale  # (B, N)
    colors = element_table(ELEMENT_COLORS, z, dtype)  # (B, N, 3)
    px = x[:, None, :, None]  # (B, 1, R, 1)
    py = y[:, None, :, None]
    zr4 = zr[:, None, None, None]

    # spheres: hit where the pixel lies inside the projected disc; the near cap is at cz + sqrt(r^2 - rho^2)
    cx, cy, cz = (cam[..., k][:, :, None, :] for k in range(3))  # (B, V, 1, N)
    r2 = (radius ** 2)[:, None, None, :]
    gap = r2 - (px - cx) ** 2 - (py - cy) ** 2
    on_sphere = (gap > 0) & mask[:, None, None, :]
    t_sph = torch.where(on_sphere, zr4 - cz - torch.sqrt(torch.where(on_sphere, gap, torch.ones_like(gap))), inf)
    t_s, k_s = t_sph.min(dim=-1)  # (B, V, R)

    # cylinders: ray o + s * (0, 0, -1) against the infinite cylinder around axis A + h * u, 0 <= h <= L
    a_end = torch.gather(cam, 2, bonds[:, None, :, 0, None].expand(-1, v, -1, 3))  # (B, V, P, 3)
    b_end = torch.gather(cam, 2, bonds[:, None, :, 1, None].expand(-1, v, -1, 3))
    axis = b_end - a_end
    length = axis.norm(dim=-1).clamp(min=1e-12)
    u = axis / length[..., None]
    wx = px - a_end[..., 0][:, :, None, :]
    wy = py - a_end[..., 1][:, :, None, :]
    wz = zr4 - a_end[..., 2][:, :, None, :]
    ux, uy, uz = (u[..., k][:, :, None, :] for k in range(3))
    w_u = wx * ux + wy * uy + wz * uz
    perp_x, perp_y, perp_z = wx - w_u * ux, wy - w_u * uy, wz - w_u * uz
    qa = 1 - uz ** 2
    qb = -2 * perp_z
    qc = perp_x ** 2 + perp_y ** 2 + perp_z ** 2 - (bond_radius ** 2)[:, None, None, :]
    disc = qb ** 2 - 4 * qa * qc
    ok = (disc > 0) & (qa > 1e-9) & bond_mask[:, None, None, :]
    safe_qa = torch.where(ok, qa, torch.ones_like(qa))
    s = (-qb - torch.sqrt(torch.where(ok, disc, torch.ones_like(disc)))) / (2 * safe_qa)
    h = w_u - s * uz
    ok = ok & (h >= 0) & (h <= length[:, :, None, :])
    t_cyl = torch.where(ok, s, inf)
    t_c, k_c = t_cyl.min(dim=-1)

    sphere_wins = t_s <= t_c
    t = torch.minimum(t_s, t_c)
    hit = torch.isfinite(t)
    t_safe = torch.where(hit, t, torch.zeros_like(t))
    q = torch.stack([x[:, None].expand_as(t), y[:, None].expand_as(t), zr[:, None, None] - t_safe], dim=-1)

    center = _gather(cam, k_s)
    rad = torch.gather(radius[:, None, :].expand(-1, v, -1), 2, k_s)
    n_sph = (q - center) / rad[..., None]
    col_sph = torch.gather(colors[:, None].expand(-1, v, -1, -1), 2, k_s[..., None].expand(-1, -1, -1, 3))

    a_hit, u_hit = _gather(a_end, k_c), _gather(u, k_c)
    along = ((q - a_hit) * u_hit).sum(-1, keepdim=True)
    n_cyl = (q - a_hit - along * u_hit) / torch.gather(bond_radius[:, None].expand(-1, v, -1), 2, k_c)[..., None]
    atom_i = torch.gather(bonds[:, None, :, 0].expand(-1, v, -1), 2, k_c)
    atom_j = torch.gather(bonds[:, None, :, 1].expand(-1, v, -1), 2, k_c)
    first_half = along[..., 0] < 0.5 * torch.gather(length, 2, k_c)
    atom = torch.where(first_half, atom_i, atom_j)
    col_cyl = torch.gather(colors[:, None].expand(-1, v, -1, -1), 2, atom[..., None].expand(-1, -1, -1, 3))

    normal = torch.where(sphere_wins[..., None], n_sph, n_cyl)
    color = torch.where(sphere_wins[..., None], col_sph, col_cyl)
    zero = torch.zeros_like(normal)
    return StructureHits(t, torch.where(hit[..., None], normal, zero), torch.where(hit[..., None], color, zero), hit)

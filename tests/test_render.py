"""Torch renderer: geometry against analytic answers, view conventions, colours, gradients, batching."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from edg.edg_core.grid import CubeGrid
from edg.edg_core.readers import open_source
from edg.edg_core.units import ANGSTROM_IN_BOHR
from edg.render import RenderConfig, Renderer, render_ed, render_structure
from edg.render.camera import fit_framing, pixel_coords, to_camera, view_rotation, view_rotations
from edg.render.colors import esp_ramp
from edg.render.elements import ELEMENT_COLORS, VDW_RADII, element_table
from edg.render.renderer import pad_atoms
from edg.render.structure import _ball_t, _stick_t, find_bonds, trace_structure


def gaussian_fields(n=41, spacing=0.4, height=0.5, sigma=1.5, center=(0.0, 0.0, 0.0), dtype=torch.float64):
    """A spherical Gaussian ED (e/bohr^3) and an ESP linear in x, centred at ``center`` (Å)."""
    c = np.asarray(center) * ANGSTROM_IN_BOHR
    grid = CubeGrid(tuple((c - (n - 1) / 2 * spacing).tolist()), (spacing,) * 3, (n,) * 3)
    pts = torch.tensor(grid.points(), dtype=dtype).view(n, n, n, 3) - torch.tensor(c, dtype=dtype)
    ed = height * torch.exp(-(pts ** 2).sum(-1) / (2 * sigma ** 2))
    esp = 0.02 * pts[..., 0] + 0.005  # no ESP exactly at the ramp's kink (0) where the images are symmetric
    return ed, esp, grid


def test_gaussian_sphere_disc_and_depth():
    height, sigma, iso = 0.5, 1.5, 0.05
    r0 = sigma * math.sqrt(2 * math.log(height / iso)) / ANGSTROM_IN_BOHR  # isosurface radius, Å
    ed, esp, grid = gaussian_fields(height=height, sigma=sigma)
    size = 48
    cfg = RenderConfig(image_size=size, ed_views=("x,0", "y,90"), structure_in_ed=False)
    img = render_ed([1], torch.zeros(1, 3, dtype=torch.float64), ed, esp, grid, cfg)
    alpha_img = render_ed([1], torch.zeros(1, 3, dtype=torch.float64), ed, esp, grid,
                          RenderConfig(**{**cfg.__dict__, "fourth_channel": "alpha"}))
    half_width = 0.0 + cfg.ed_margin  # one atom at the origin: framing radius = margin
    px = 2 * half_width / size
    coords = (torch.arange(size, dtype=torch.float64) + 0.5) * px - half_width
    rho = torch.sqrt(coords[None, :] ** 2 + coords[:, None] ** 2)
    for v in range(2):
        covered = alpha_img[v, 3] > 0.5
        radius = math.sqrt(covered.sum().item() / math.pi) * px
        assert abs(radius - r0) < px, (radius, r0)
        inner = rho < r0 - px
        expected = (half_width - torch.sqrt(r0 ** 2 - rho[inner] ** 2)) / (2 * half_width)
        err = (img[v, 3][inner] - expected).abs().max().item() * 2 * half_width
        assert err < px, err
        assert torch.all(img[v, 3][~covered] == 1.0)  # background depth
        assert torch.all(img[v, :3][:, ~covered] == 0.0)  # black ED background


@pytest.mark.parametrize("view", ["x,0", "x,180", "x,90", "x,-90", "y,90", "y,-90", "y,180", "z,180"])
def test_view_puts_marked_atom_in_place(view):
    # carbon at the origin, a red oxygen far out on a generic direction: find the red blob
    p = torch.tensor([[0.0, 0.0, 0.0], [2.5, 1.5, -2.0]], dtype=torch.float64)
    size = 64
    cfg = RenderConfig(image_size=size, structure_views=(view,), structure_margin=1.0)
    img = render_structure([6, 8], p, cfg)[0]
    red = (img[0] > 0.6) & (img[1] < 0.5) & (img[2] < 0.5)
    rows, cols = torch.nonzero(red, as_tuple=True)
    center = (p.min(0).values + p.max(0).values) / 2
    half_width = (p - center).norm(dim=1).max().item() + 1.0
    cam = view_rotation(view) @ (p[1] - center)
    col = (cam[0].item() + half_width) / (2 * half_width) * size - 0.5
    row = (half_width - cam[1].item()) / (2 * half_width) * size - 0.5
    assert abs(cols.double().mean().item() - col) < 1.0
    assert abs(rows.double().mean().item() - row) < 1.0


def test_turn_semantics_match_pymol():
    # measured with PyMOL 3: after `turn y, 90` a point on +z is drawn right of centre; after `turn x, 90`, below
    assert view_rotation("y,90") @ torch.tensor([0, 0, 1.0], dtype=torch.float64) == pytest.approx([1, 0, 0])
    assert (view_rotation("x,90") @ torch.tensor([0, 0, 1.0], dtype=torch.float64))[1] == pytest.approx(-1)


def test_esp_ramp_end_points_and_midpoints():
    esp = torch.tensor([-0.2, -0.08, -0.04, 0.0, 0.04, 0.08, 0.3])
    rgb = esp_ramp(esp)
    expect = torch.tensor([[1, 0, 0], [1, 0, 0], [1, 0.5, 0.5], [1, 1, 1], [0.5, 0.5, 1], [0, 0, 1], [0, 0, 1.0]])
    assert torch.allclose(rgb, expect, atol=1e-6)


def test_bonds_from_covalent_radii_and_hydrogen_switch():
    mols = {m.formula: m for m in open_source("embedded:qm9").molecules()}
    water, methane = mols["H2O"], mols["CH4"]
    z, pos, mask = pad_atoms([water.z, methane.z], [torch.tensor(water.pos), torch.tensor(methane.pos)])
    bonds, bond_mask = find_bonds(z, pos, mask)
    assert bond_mask.sum(1).tolist() == [2, 4]
    for b in range(2):
        pairs = {tuple(sorted(int(a) for a in bonds[b, k])) for k in range(bond_mask.shape[1]) if bond_mask[b, k]}
        heavy = int(torch.nonzero(z[b] != 1)[0])
        assert all(heavy in pr for pr in pairs)
    with_h = render_structure(methane.z, methane.pos, RenderConfig(image_size=48))
    no_h = render_structure(methane.z, methane.pos, RenderConfig(image_size=48, hydrogens=False))
    assert with_h.shape == (4, 3, 48, 48)
    grey = lambda im: ((im - 0.9 * (im.max(0).values > 0)).abs().sum(0) < 0.05) & (im.sum(0) < 2.9)  # noqa: E731
    assert grey(no_h[0]).sum() == 0 and (no_h[0] < 0.99).any(0).sum() < (with_h[0] < 0.99).any(0).sum()
    assert torch.all(with_h[:, :, 0, 0] == 1.0)  # white background


def test_batch_equals_single_molecules():
    mols = list(open_source("embedded:qm9?limit=6").molecules())[3:6]
    fields = []
    for i, m in enumerate(mols):  # Gaussian-sum densities on grids of different shapes and spacings
        sp = 0.4 + 0.05 * i
        from edg.edg_core.grid import grid_for_positions
        g = grid_for_positions(m.pos, sp, 3.0)
        pts = torch.tensor(g.points()).view(*g.shape, 3)
        atoms = torch.tensor(m.pos) * ANGSTROM_IN_BOHR
        d2 = ((pts[..., None, :] - atoms) ** 2).sum(-1)
        ed = (torch.tensor(m.z, dtype=torch.float64) * torch.exp(-d2 / 0.8)).sum(-1).float()
        esp = (0.05 * torch.sin(pts[..., 0]) * torch.cos(pts[..., 1])).float()
        fields.append((ed, esp, g))
    cfg = RenderConfig(image_size=24, ed_views=("x,0", "y,90"), batch_size=3)
    r = Renderer(cfg)
    zs, ps = [m.z for m in mols], [torch.tensor(m.pos, dtype=torch.float32) for m in mols]
    batch, frames = r.ed_images(zs, ps, [f[0] for f in fields], [f[1] for f in fields], [f[2] for f in fields])
    st_batch, _ = r.structure_images(zs, ps)
    for i in range(3):
        one, fr = r.ed_images(zs[i:i + 1], ps[i:i + 1], [fields[i][0]], [fields[i][1]], [fields[i][2]])
        assert torch.allclose(batch[i], one[0], atol=1e-4), (i, (batch[i] - one[0]).abs().max())
        assert fr[0] == frames[i]
        assert torch.allclose(st_batch[i], r.structure_images(zs[i:i + 1], ps[i:i + 1])[0][0], atol=1e-5)
    assert (batch[:, :, 3] < 1).float().mean() > 0.1  # the surfaces are there


def test_tiled_structure_search_matches_testing_every_primitive_at_every_pixel():
    """The tile/primitive pair search (any chunking, image sizes that are not a multiple of the tile) finds the
    same nearest ball or stick per pixel as testing every primitive at every pixel (ties: balls, then lower index)."""
    mols = list(open_source("embedded:qm9?limit=8").molecules())[5:8]
    z, pos, mask = pad_atoms([m.z for m in mols], [torch.tensor(m.pos) for m in mols], torch.float64)
    n = 37
    fr = fit_framing(pos, mask, 1.0, n)
    rot = view_rotations(("x,0", "y,90", "z,180"), torch.float64)
    x, y = pixel_coords(fr, n)
    cam = to_camera(pos, rot, fr)
    bonds, bond_mask = find_bonds(z, pos, mask)
    radius = 0.2 * element_table(VDW_RADII, z, torch.float64)
    to_h = (torch.gather(z, 1, bonds[..., 0]) == 1) | (torch.gather(z, 1, bonds[..., 1]) == 1)
    stick_r = 0.15 * torch.where(to_h, 0.4, 1.0).double()
    px, py, zr = x[:, None, :, None], y[:, None, :, None], fr.depth_radius[:, None, None, None]
    t_ball = _ball_t(px, py, zr, cam[:, :, None], radius[:, None, None].expand(-1, 3, 1, -1))
    t_ball = torch.where(mask[:, None, None], t_ball, torch.inf)  # (B, V, R, N)
    ends = [torch.gather(cam, 2, bonds[:, None, :, k, None].expand(-1, 3, -1, 3))[:, :, None] for k in (0, 1)]
    t_stick = _stick_t(px, py, zr, *ends, stick_r[:, None, None].expand(-1, 3, 1, -1))
    t_stick = torch.where(bond_mask[:, None, None], t_stick, torch.inf)
    t_all = torch.cat([t_ball, t_stick], -1)
    best, winner = t_all.min(-1)  # first minimum: balls before sticks, lower index first
    for tile, max_elements in ((16, 1 << 24), (8, 64), (5, 1000)):
        hits = trace_structure(cam, z, mask, bonds, bond_mask, x, y, fr.depth_radius, tile=tile,
                               max_elements=max_elements)
        assert torch.equal(hits.hit, torch.isfinite(best)) and hits.hit.sum() > 100
        assert torch.equal(hits.t[hits.hit], best[hits.hit])
        ball = winner < t_ball.shape[-1]
        atom = torch.gather(torch.arange(z.shape[1]).expand(*winner.shape, -1), -1,
                            winner.clamp(max=z.shape[1] - 1)[..., None])[..., 0]
        colors = element_table(ELEMENT_COLORS, z, torch.float64)
        bi = torch.arange(len(mols))[:, None, None].expand_as(atom)
        on_ball = hits.hit & ball
        assert torch.equal(hits.color[on_ball], colors[bi, atom][on_ball])
        assert torch.allclose(hits.normal[hits.hit].norm(dim=-1), torch.ones(()).double(), atol=1e-6)
    assert (hits.hit & ~ball).any() and (hits.hit & ball).any()  # both kinds win somewhere


def _tiny_setup():
    ed, esp, grid = gaussian_fields(n=11, spacing=0.5, height=0.4, sigma=1.0, center=(0.1, -0.05, 0.03))
    pos = torch.tensor([[0.1, -0.05, 0.03]], dtype=torch.float64)
    return ed, esp, grid, pos


@pytest.mark.parametrize("soft", [False, True])
def test_gradcheck_density_esp_positions(soft):
    ed, esp, grid, pos = _tiny_setup()
    cfg = RenderConfig(image_size=5, ed_views=("x,90",), ed_margin=1.3, max_layers=2, soft_coverage=soft,
                       soft_width=0.02)

    r = Renderer(cfg, dtype=torch.float64)
    framing = r.fit([[8]], [pos])  # fixed cameras: moving the atom must not move the camera

    def f(ed_, esp_, pos_):
        return r.ed_images([[8]], [pos_], [ed_], [esp_], [grid], framing=framing)[0]

    ed_p, esp_p, pos_p = (t.clone().requires_grad_(True) for t in (ed, esp, pos))
    out = f(ed_p, esp_p, pos_p)
    out.sum().backward()
    assert ed_p.grad.abs().sum() > 0 and esp_p.grad.abs().sum() > 0 and pos_p.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda e: f(e, esp, pos), (ed.clone().requires_grad_(True),), eps=1e-6,
                                    atol=1e-5, fast_mode=True)
    assert torch.autograd.gradcheck(lambda e: f(ed, e, pos), (esp.clone().requires_grad_(True),), eps=1e-6,
                                    atol=1e-5, fast_mode=True)
    assert torch.autograd.gradcheck(lambda p: f(ed, esp, p), (pos.clone().requires_grad_(True),), eps=1e-6,
                                    atol=1e-5, fast_mode=True)


def test_soft_coverage_moves_silhouette_with_density():
    ed, esp, grid, pos = _tiny_setup()
    cfg = RenderConfig(image_size=9, ed_views=("x,0",), fourth_channel="alpha", soft_coverage=True,
                       structure_in_ed=False, soft_width=0.02)
    ed_p = ed.clone().requires_grad_(True)
    img = render_ed([8], pos, ed_p, esp, grid, cfg)
    img[0, 3].sum().backward()  # more density -> more coverage
    assert ed_p.grad.sum() > 0


def test_fixed_scale_and_bad_grid():
    ed, esp, grid, pos = _tiny_setup()
    r = Renderer(RenderConfig(image_size=8, ed_views=("x,0",), angstrom_per_pixel=0.5), dtype=torch.float64)
    _, frames = r.ed_images([[8]], [pos], [ed], [esp], [grid], ids=["m0"])
    assert frames[0]["angstrom_per_pixel"] == pytest.approx(0.5)
    from edg.edg_core.errors import InvalidRecord
    with pytest.raises(InvalidRecord, match="m0.*ESP grid shape"):
        r.ed_images([[8]], [pos], [ed], [esp[:-1]], [grid], ids=["m0"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu():
    mols = list(open_source("embedded:qm9?limit=8").molecules())[4:8]
    from edg.render.synthetic import promolecule_fields
    fields = [promolecule_fields(m) for m in mols]
    cfg = RenderConfig(image_size=64, batch_size=4)
    out = {}
    for dev in ("cpu", "cuda"):
        r = Renderer(cfg, device=dev)
        zs = [torch.as_tensor(m.z, device=dev) for m in mols]
        ps = [torch.as_tensor(m.pos, dtype=torch.float32, device=dev) for m in mols]
        ed, _ = r.ed_images(zs, ps, [f[0].to(dev) for f in fields], [f[1].to(dev) for f in fields],
                            [f[2] for f in fields])
        st, _ = r.structure_images(zs, ps)
        out[dev] = (ed.cpu(), st.cpu())
    for a, b in zip(out["cpu"], out["cuda"]):
        assert (a - b).abs().gt(0.02).float().mean() < 0.002  # float32 rounding may flip a few edge pixels

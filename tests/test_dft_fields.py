"""DFT stage: ED and ESP on points and cube grids, the band ESP option, cube files."""
from __future__ import annotations

import numpy as np
import pytest
from edg.dft import fields
from edg.dft.config import DFTConfig
from edg.dft.esp_band import band_mask, coarse_axes, esp_band_cpu
from edg.dft.scf import run_scf
from edg.edg_core.cube import read_cube, write_cube
from edg.edg_core.errors import InvalidRecord
from edg.edg_core.grid import CubeGrid, grid_for_positions
from edg.edg_core.molecule import Molecule
from edg.edg_core.units import ANGSTROM_IN_BOHR

WATER = Molecule(z=[8, 1, 1], pos=[[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]],
                 id="water")


@pytest.fixture(scope="module")
def water():
    return run_scf(WATER, DFTConfig(), "cpu")


def test_density_integrates_to_electron_count_on_the_dft_quadrature(water):
    g = water.mf.grids
    rho = fields.density_cpu(water.mol, water.dm, g.coords)
    assert abs(float(rho @ g.weights) - 10.0) < 1e-4
    # a raw sum over the 0.4-bohr cube is a poor quadrature near the nuclei: it is not the way to count electrons
    grid = grid_for_positions(WATER.pos)
    cube_sum = fields.density_cpu(water.mol, water.dm, grid.points()).sum() * 0.4**3
    assert abs(cube_sum - 10.0) > 0.1


def test_esp_and_density_agree_with_pyscf_cubegen(tmp_path):
    # cubegen.mep cannot take a Cartesian-d molecule (its density-fitted nuclear part builds a spherical
    # auxiliary molecule), so this comparison runs with spherical d; the Cartesian case is checked below
    from pyscf.tools import cubegen
    water = run_scf(WATER, DFTConfig(basis_functions="spherical"), "cpu")
    dm = water.mf.make_rdm1()
    cubegen.mep(water.mol, str(tmp_path / "mep.cube"), dm, nx=14, ny=13, nz=12)
    cubegen.density(water.mol, str(tmp_path / "den.cube"), dm, nx=14, ny=13, nz=12)
    mep, den = read_cube(tmp_path / "mep.cube"), read_cube(tmp_path / "den.cube")
    assert mep.grid.shape == (14, 13, 12) and list(mep.z) == [8, 1, 1]
    np.testing.assert_allclose(mep.pos, WATER.pos, atol=1e-5)  # Å, through the bohr header
    # cubegen's exact points (the header keeps only 6 decimals of bohr), values with 5 significant digits
    pts = cubegen.Cube(water.mol, 14, 13, 12).get_coords()
    np.testing.assert_allclose(mep.grid.points(), pts, atol=2e-5)
    np.testing.assert_allclose(fields.esp(water.mol, water.dm, pts, "cpu"), mep.data.reshape(-1), rtol=1e-5,
                               atol=1e-9)
    np.testing.assert_allclose(fields.density(water.mol, water.dm, pts), den.data.reshape(-1), rtol=1e-5,
                               atol=1e-10)


def test_esp_with_cartesian_d_matches_rinv_integrals(water):
    """The default (Cartesian 6d) basis: the ESP from batched int1e_grids equals, point by point, the nuclear
    term minus tr(D <mu|1/|r-C||nu>) from PySCF's int1e_rinv with the origin moved to each point C."""
    assert water.mol.cart
    pts = np.array([[0.3, -0.4, 2.5], [1.7, 0.2, -0.9], [-2.2, 1.1, 0.4]])  # bohr
    ref = []
    for c in pts:
        with water.mol.with_rinv_origin(c):
            v_el = np.einsum("ij,ji", water.mol.intor("int1e_rinv"), water.dm)
        r = np.linalg.norm(water.mol.atom_coords() - c, axis=1)
        ref.append((water.mol.atom_charges() / r).sum() - v_el)
    np.testing.assert_allclose(fields.esp(water.mol, water.dm, pts, "cpu"), ref, rtol=1e-9, atol=1e-12)


def test_esp_batches_are_small_blocks_and_do_not_change_the_values(water):
    """The default batch is a ~16 MB (points, nao, nao) block, at most a quarter of the memory budget, and the
    ESP is the same whatever the batch size (last batch partial, one point per batch, all points at once)."""
    for nao, mem in ((25, 4000), (110, 4000), (220, 4000), (110, 8)):
        block = fields.default_chunk(nao, mem) * 8 * nao * nao
        assert 16 * nao * nao * 8 <= block <= max(min(16 * 2**20, mem * 2**20 // 4), 16 * 8 * nao * nao)
    assert fields.default_chunk(110, 4000) == 16 * 2**20 // (8 * 110 * 110)
    pts = grid_for_positions(WATER.pos, 0.9, 2.0).points()
    whole = fields.electronic_potential_cpu(water.mol, water.dm, pts, chunk=len(pts))
    for chunk in (1, 7, 0):
        np.testing.assert_allclose(fields.electronic_potential_cpu(water.mol, water.dm, pts, chunk=chunk), whole,
                                   rtol=1e-12, atol=1e-13)


def test_esp_is_finite_on_a_nucleus_and_positive_near_it(water):
    pts = water.mol.atom_coords()  # bohr, exactly on the nuclei
    v = fields.esp(water.mol, water.dm, pts, "cpu")
    assert np.isfinite(v).all() and (v > 100).all()
    # far away the neutral molecule's potential decays (dipole ~ 1/r^2)
    far = np.array([[0.0, 0.0, 40.0], [0.0, 0.0, -40.0]])
    vf = fields.esp(water.mol, water.dm, far, "cpu")
    assert np.abs(vf).max() < 1e-3 and vf[0] * vf[1] < 0


def test_band_mask_covers_every_cell_the_isosurface_crosses():
    x = np.linspace(-3, 3, 31)
    r = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2)
    ed = np.exp(-1.2 * r)  # a spherical "density" crossing 0.05 at r = 2.5
    mask = band_mask(ed, iso=0.05, band=(0.04, 0.06))
    corners = [ed[i:30 + i, j:30 + j, k:30 + k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    crossing = (np.minimum.reduce(corners) < 0.05) & (np.maximum.reduce(corners) >= 0.05)
    assert crossing.any()
    corner_masks = [mask[i:30 + i, j:30 + j, k:30 + k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    assert np.logical_and.reduce(corner_masks)[crossing].all()
    assert mask[(ed >= 0.04) & (ed <= 0.06)].all()
    assert not mask[15, 15, 15] and not mask[0, 0, 0]  # centre and far corner are outside the band
    assert 0.05 < mask.mean() < 0.5


def test_band_esp_is_exact_where_the_renderer_reads_it(water):
    grid = grid_for_positions(WATER.pos, spacing=0.5)
    pts = grid.points()
    ed = fields.density(water.mol, water.dm, pts).reshape(grid.shape)
    full = fields.esp(water.mol, water.dm, pts, "cpu")
    fast, exact = esp_band_cpu(water.mol, water.dm, pts, ed, iso=0.05, band=(0.01, 0.25), stride=3)
    assert exact.mean() < 0.3  # most of the grid is interpolated, not integrated
    np.testing.assert_allclose(fast[exact], full[exact], rtol=1e-12, atol=1e-12)
    corners = np.zeros(grid.shape, bool)
    corners[np.ix_(*coarse_axes(grid.shape, 3))] = True
    assert exact.reshape(grid.shape)[corners].all()
    assert np.isfinite(fast).all()
    outside = (ed.reshape(-1) < 0.01) & ~exact
    assert outside.sum() > 1000
    err = np.abs(fast - full)[outside]
    assert np.median(err) < 1e-3 and err.max() < 0.1  # outside the molecule the ESP is smooth


def test_cube_round_trip_and_angstrom_axes(tmp_path):
    grid = CubeGrid((-3.0, -2.5, -2.0), (0.4, 0.4, 0.4), (7, 6, 5))
    data = np.random.default_rng(1).normal(size=grid.shape) * 1e-2
    write_cube(tmp_path / "a.cube", grid, data, WATER.z, WATER.pos, "test cube")
    c = read_cube(tmp_path / "a.cube")
    assert c.grid.shape == grid.shape and c.comment == "test cube"
    np.testing.assert_allclose(c.grid.origin, grid.origin, atol=1e-6)
    np.testing.assert_allclose(c.grid.spacing, grid.spacing, atol=1e-6)
    np.testing.assert_allclose(c.data, data, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(c.pos, WATER.pos, atol=1e-6)
    assert list(c.z) == [8, 1, 1]
    # the same header with Å axes (negative counts) reads back to the same grid in bohr
    lines = (tmp_path / "a.cube").read_text().splitlines()
    lines[2] = "    3 " + " ".join(f"{o / ANGSTROM_IN_BOHR:12.6f}" for o in grid.origin)
    for i, n in zip((3, 4, 5), grid.shape):
        v = [0.0, 0.0, 0.0]
        v[i - 3] = 0.4 / ANGSTROM_IN_BOHR
        lines[i] = f"{-n:5d} " + " ".join(f"{x:12.6f}" for x in v)
    for a in range(3):
        f = lines[6 + a].split()
        lines[6 + a] = " ".join(f[:2] + [f"{float(x) / ANGSTROM_IN_BOHR:12.6f}" for x in f[2:]])
    (tmp_path / "b.cube").write_text("\n".join(lines) + "\n")
    b = read_cube(tmp_path / "b.cube")
    np.testing.assert_allclose(b.grid.origin, grid.origin, atol=1e-5)
    np.testing.assert_allclose(b.grid.spacing, grid.spacing, atol=1e-5)
    np.testing.assert_allclose(b.pos, WATER.pos, atol=1e-5)
    # a truncated file is a named error
    (tmp_path / "c.cube").write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(InvalidRecord, match="c.cube"):
        read_cube(tmp_path / "c.cube")


def test_pymol_loads_our_cube(tmp_path):
    pymol2 = pytest.importorskip("pymol2")
    grid = CubeGrid((-4.0, -2.0, -1.0), (0.4, 0.4, 0.4), (11, 21, 31))
    x = grid.points().reshape(*grid.shape, 3)
    write_cube(tmp_path / "g.cube", grid, np.exp(-np.linalg.norm(x, axis=-1)), [1], [[0.0, 0.0, 0.0]])
    # An instance, not pymol.finish_launching(): that starts a non-daemon thread that never ends, and the
    # test process then hangs at exit.
    p = pymol2.PyMOL()
    p.start()
    try:
        p.cmd.load(str(tmp_path / "g.cube"), "g")
        lo, hi = np.array(p.cmd.get_extent("g"))
    finally:
        p.stop()
    # PyMOL reports a map's extent as its points padded by half a voxel on each side
    h = 0.4 / ANGSTROM_IN_BOHR
    first = np.array(grid.origin) / ANGSTROM_IN_BOHR
    last = first + (np.array(grid.shape) - 1) * h
    np.testing.assert_allclose(lo, first - h / 2, atol=1e-4)
    np.testing.assert_allclose(hi, last + h / 2, atol=1e-4)

"""Synthetic fields for tests and benchmarks: a promolecule ED (sum of atom-centred exponentials whose
0.05 e/bohr^3 isosurface sits roughly where B3LYP's does) and a point-charge ESP, on the paper's cube grid."""
from __future__ import annotations

import torch


def promolecule_fields(mol, spacing=0.4, padding=4.0):
    """(ED (nx, ny, nz) e/bohr^3, ESP Hartree/e, CubeGrid) for a ``Molecule`` on a ``spacing``/``padding`` bohr grid."""
    from edg.edg_core.grid import grid_for_positions
    from edg.edg_core.units import ANGSTROM_IN_BOHR
    grid = grid_for_positions(mol.pos, spacing, padding)
    pts = torch.tensor(grid.points(), dtype=torch.float32)
    atoms = torch.tensor(mol.pos * ANGSTROM_IN_BOHR, dtype=torch.float32)
    z = torch.tensor(mol.z)
    reach = torch.where(z == 1, 1.25, 2.1)  # bohr from the nucleus to rho = 0.05
    r = torch.cdist(pts, atoms)
    ed = (0.05 * torch.exp((reach - r) / 0.45)).sum(1)
    q = torch.where(z == 1, 0.15, -0.15 * (z == 8).float() - 0.1 * (z == 7).float())
    esp = (q / r.clamp(min=0.3)).sum(1)
    return ed.view(grid.shape), esp.view(grid.shape), grid

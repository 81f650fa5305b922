"""Units: the one place where physical constants and conversions live.

Conventions (docs/design.md): positions in Å; fields and cube grids in bohr; energies in Hartree inside
``dft/``; task-facing energies in kcal/mol (rMD17) or eV (QM9, Geom3D protocol).
Constants are CODATA 2018 (as used by PySCF and ASE).
"""
from __future__ import annotations

BOHR_IN_ANGSTROM = 0.529177210903  # Å per bohr (CODATA 2018)
ANGSTROM_IN_BOHR = 1.0 / BOHR_IN_ANGSTROM
HARTREE_IN_EV = 27.211386245988  # eV per Hartree (CODATA 2018)
HARTREE_IN_KCAL_PER_MOL = 627.5094740631  # kcal/mol per Hartree
KCAL_PER_MOL_IN_EV = HARTREE_IN_EV / HARTREE_IN_KCAL_PER_MOL
DEBYE_IN_AU = 0.393430238  # e*bohr per Debye

ELEMENTS = (
    "X", "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar",
    "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr",
    "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe",
)
"""Element symbols indexed by atomic number (index 0 is a dummy); Z up to 54 is supported."""
MAX_Z = len(ELEMENTS) - 1
SYMBOL_TO_Z = {s.lower(): z for z, s in enumerate(ELEMENTS) if z > 0}


def angstrom_to_bohr(x):
    return x * ANGSTROM_IN_BOHR


def bohr_to_angstrom(x):
    return x * BOHR_IN_ANGSTROM


def hartree_to_ev(x):
    return x * HARTREE_IN_EV


def hartree_to_kcal_per_mol(x):
    return x * HARTREE_IN_KCAL_PER_MOL


def symbol_to_z(symbol: str) -> int:
    """Atomic number for an element symbol (case-insensitive); raises ``ValueError`` naming the symbol."""
    try:
        return SYMBOL_TO_Z[symbol.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown element symbol {symbol!r}") from None


def z_to_symbol(z: int) -> str:
    if not 1 <= int(z) <= MAX_Z:
        raise ValueError(f"unknown atomic number {z} (supported 1..{MAX_Z})")
    return ELEMENTS[int(z)]

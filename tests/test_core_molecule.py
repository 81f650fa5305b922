import numpy as np
import pytest
from edg.edg_core import InvalidRecord, Molecule
from edg.edg_core.config import ConfigError, add_config_args, apply_args, from_dict
from edg.edg_core.grid import grid_for_positions
from edg.edg_core.units import ANGSTROM_IN_BOHR, HARTREE_IN_EV, symbol_to_z

WATER = dict(z=[8, 1, 1], pos=[[0, 0, 0.1173], [0, 0.7572, -0.4692], [0, -0.7572, -0.4692]])


def test_valid_molecule_defaults():
    m = Molecule(id="water", **WATER)
    assert m.n_atoms == 3 and m.n_electrons == 10 and m.multiplicity == 1
    assert m.formula == "H2O"
    assert Molecule(id="oh", z=[8, 1], pos=[[0, 0, 0], [0, 0, 0.97]]).multiplicity == 2
    assert Molecule(id="oh-", z=[8, 1], pos=[[0, 0, 0], [0, 0, 0.97]], charge=-1).multiplicity == 1


@pytest.mark.parametrize("kwargs, problem", [
    (dict(z=[], pos=np.zeros((0, 3))), "zero atoms"),
    (dict(z=[8, 1, 120], pos=np.zeros((3, 3))), "unknown element with atomic number 120 at atom 2"),
    (dict(z=[8, 1, 0], pos=np.zeros((3, 3))), "unknown element with atomic number 0"),
    (dict(z=[8, 1, 1], pos=[[0, 0, 0], [0, np.nan, 0], [1, 1, 1]]), "non-finite coordinates"),
    (dict(z=[8, 1, 1], pos=[[0, 0, 0], [0, np.inf, 0], [1, 1, 1]]), "at atom 1"),
    (dict(z=[8, 1, 1], pos=np.zeros((2, 3))), "3 atomic numbers but 2 positions"),
    (dict(z=[8, 1, 1], pos=np.zeros((3, 2))), "shape (N, 3)"),
    (dict(z=[8, 1, 1], pos=np.eye(3), multiplicity=2), "multiplicity 2 impossible"),
])
def test_bad_records_name_the_record_and_problem(kwargs, problem):
    with pytest.raises(InvalidRecord) as e:
        Molecule(id="mol-17", **kwargs)
    assert e.value.record == "mol-17"
    assert problem in str(e.value) and str(e.value).startswith("mol-17:")


def test_dict_round_trip():
    m = Molecule(id="w", labels={"energy": -1.5, "forces": np.arange(9.0).reshape(3, 3)}, **WATER)
    m2 = Molecule.from_dict(m.to_dict())
    assert np.array_equal(m2.pos, m.pos) and np.array_equal(m2.labels["forces"], m.labels["forces"])


def test_units_and_symbols():
    assert abs(ANGSTROM_IN_BOHR - 1.8897261246) < 1e-9
    assert abs(HARTREE_IN_EV - 27.211386245988) < 1e-12
    assert symbol_to_z("cl") == 17 and symbol_to_z(" O ") == 8
    with pytest.raises(ValueError, match="Xx"):
        symbol_to_z("Xx")


def test_grid_encloses_atoms_with_padding():
    g = grid_for_positions(np.array(WATER["pos"]), spacing=0.4, padding=4.0)
    pts = g.points()
    lo, hi = pts.min(0), pts.max(0)
    atoms = np.array(WATER["pos"]) * ANGSTROM_IN_BOHR
    assert np.all(atoms.min(0) - lo >= 4.0 - 1e-9) and np.all(hi - atoms.max(0) >= 4.0 - 1e-9)
    assert np.all(hi - atoms.max(0) < 4.0 + 0.4 + 1e-9)
    assert pts.shape == (g.n_points, 3)


def test_config_helpers():
    import argparse
    from dataclasses import dataclass, field

    @dataclass
    class Inner:
        lr: float = 1e-3

    @dataclass
    class Outer:
        name: str = "x"
        steps: int = 10
        flag: bool = False
        inner: Inner = field(default_factory=Inner)

    c = from_dict(Outer, {"steps": 3, "inner": {"lr": 0.5}})
    assert c.steps == 3 and c.inner.lr == 0.5
    with pytest.raises(ConfigError, match="stepz"):
        from_dict(Outer, {"stepz": 3})
    p = argparse.ArgumentParser()
    add_config_args(p, Outer)
    a = p.parse_args(["--steps", "7", "--flag", "--inner.lr", "0.1"])
    c2 = apply_args(c, a)
    assert (c2.steps, c2.flag, c2.inner.lr, c2.name) == (7, True, 0.1, "x")

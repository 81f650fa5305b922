import numpy as np
import pytest
from edg.edg_core import DataSourceError, InvalidRecord
from edg.edg_core.readers import open_source, read_sdf, read_xyz, smiles_to_molecule
from edg.edg_core.readers.qm9 import ATOMREF, N_MOLECULES, TARGETS, geom3d_targets, load_qm9, split_customized_01
from edg.edg_core.readers.rmd17 import load_rmd17
from edg.edg_core.units import HARTREE_IN_EV

EXTXYZ = """3
id=w1 energy=-76.4 charge=0 Properties=species:S:1:pos:R:3:forces:R:3
O 0.0 0.0 0.1173 0.1 0.2 0.3
H 0.0 0.7572 -0.4692 1 2 3
H 0.0 -0.7572 -0.4692 4 5 6
2
second frame, plain comment
H 0 0 0
H 0 0 0.74
"""


def test_xyz_multiframe_and_extended(tmp_path):
    p = tmp_path / "w.extxyz"
    p.write_text(EXTXYZ)
    recs = list(read_xyz(p))
    assert [r.id for r in recs] == ["w1", "w:1"]
    w = recs[0]
    assert w.labels["energy"] == -76.4
    assert np.array_equal(w.labels["forces"], [[0.1, 0.2, 0.3], [1, 2, 3], [4, 5, 6]])
    assert recs[1].z.tolist() == [1, 1] and recs[1].pos[1, 2] == 0.74


def test_xyz_tolerant_numbers_and_bad_frames(tmp_path):
    p = tmp_path / "bad.xyz"
    p.write_text("2\nok\nC 0. 0 1.*^-1\nH 1. 0 0\n2\nbad element\nQq 0 0 0\nH 0 0 1\n3\ntruncated\nH 0 0 0\n")
    recs = list(read_xyz(p))
    assert recs[0].pos[0].tolist() == [0.0, 0.0, 0.1]
    assert isinstance(recs[1], InvalidRecord) and "Qq" in str(recs[1]) and recs[1].record == "bad:1"
    assert isinstance(recs[2], InvalidRecord) and "truncated" in str(recs[2])


def test_text_lines_is_the_one_line_decoder_of_xyz_and_smiles_files(tmp_path):
    """``io.text_lines`` decodes each line on its own (``\n`` or ``\r\n`` ends; a non-UTF-8 line is None), as the
    readers' stream (``readers.stream.text_lines_of``) does line by line: the bad line fails its own record only."""
    from edg.edg_core.io import text_lines
    p = tmp_path / "t.txt"
    p.write_bytes(b"a\r\nb\xff\xfe c\n\nd")
    assert text_lines(p) == ["a", None, "", "d"]
    p.write_bytes(b"a\n")
    assert text_lines(p) == ["a"]
    p.write_bytes(b"")
    assert text_lines(p) == []
    smi = tmp_path / "m.smi"
    smi.write_bytes(b"O water\r\nC\xff\xfe broken\r\nC methane\r\n")
    recs = list(open_source(str(smi)))
    assert [r.id for r in recs if not isinstance(r, InvalidRecord)] == ["water", "methane"]
    [bad] = [r for r in recs if isinstance(r, InvalidRecord)]
    assert bad.record == "m:1" and bad.problem == "m.smi, line 2: not UTF-8 text"
    xyz = tmp_path / "a.xyz"
    xyz.write_bytes(b"2\r\nid=a\r\nH 0 0 0\r\nH 0 0 0.74\r\n2\r\nid=b \xff\r\nH 0 0 0\r\nH 0 0 0.74\r\n")
    recs = list(read_xyz(xyz))
    assert recs[0].id == "a" and isinstance(recs[1], InvalidRecord) and "line 6" in recs[1].problem
    assert "not UTF-8" in recs[1].problem


def test_missing_file_is_clear():
    with pytest.raises(DataSourceError, match="no such file"):
        open_source("/nonexistent/molecules.xyz")
    with pytest.raises(DataSourceError, match="no such file"):
        list(read_xyz("/nonexistent/molecules.xyz"))


def test_smiles_conformer_and_sdf_round_trip(tmp_path):
    from rdkit import Chem
    m = smiles_to_molecule("CCO", "ethanol")
    assert m.n_atoms == 9 and sorted(m.z.tolist()) == [1] * 6 + [6, 6, 8]
    d = np.linalg.norm(m.pos[:, None] - m.pos[None], axis=-1)
    c, o = [i for i in range(9) if m.z[i] == 6], [i for i in range(9) if m.z[i] == 8][0]
    assert 1.35 < min(d[o, c]) < 1.50  # a relaxed C-O single bond
    rd = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    from rdkit.Chem import AllChem
    AllChem.EmbedMolecule(rd, randomSeed=1)
    rd.SetProp("_Name", "eth")
    w = Chem.SDWriter(str(tmp_path / "e.sdf"))
    w.write(rd)
    w.close()
    bad = Chem.RWMol(Chem.MolFromSmiles("C"))
    for _ in range(5):  # a pentavalent carbon: RDKit's sanitisation rejects it on reading
        bad.AddBond(0, bad.AddAtom(Chem.Atom(1)), Chem.BondType.SINGLE)
    block = Chem.MolToMolBlock(bad, kekulize=False)
    (tmp_path / "e.sdf").write_text((tmp_path / "e.sdf").read_text() + block + "$$$$\n")
    recs = list(read_sdf(tmp_path / "e.sdf"))
    assert recs[0].id == "eth" and np.allclose(recs[0].pos, rd.GetConformer().GetPositions(), atol=1e-4)
    assert isinstance(recs[1], InvalidRecord)
    with pytest.raises(InvalidRecord, match="invalid SMILES"):
        smiles_to_molecule("C1CC(", "broken")


def test_embedded_data():
    src = open_source("embedded")
    mols = list(src.molecules())
    assert len(mols) == 80 and len(src) == 80
    assert mols[0].id == "qm9:1" and mols[0].smiles == "C"
    eth = [m for m in mols if m.id.startswith("rmd17:ethanol")]
    assert len(eth) == 24 and eth[0].labels["forces"].shape == (9, 3)
    assert len(list(open_source("embedded:qm9?limit=5"))) == 5


def test_qm9_count_targets_and_methane():
    table = load_qm9()
    assert len(table) == N_MOLECULES == 130_831
    assert table.gdb_id[0] == 1 and table.gdb_id[-1] == 133_885
    methane = table.molecule(0)
    assert methane.z.tolist() == [6, 1, 1, 1, 1]
    raw = dict(zip(TARGETS, table.targets[0]))
    assert raw["U0"] == -40.47893 and raw["homo"] == -0.3877 and raw["alpha"] == 13.21
    # Geom3D transform by hand: U0 minus atom references (1 C + 4 H), Hartree -> eV.
    u0 = (-40.47893 - (ATOMREF[6][0] + 4 * ATOMREF[1][0])) * HARTREE_IN_EV
    assert methane.labels["U0"] == pytest.approx(u0, abs=1e-9)
    assert methane.labels["G"] == pytest.approx((-40.498597 - (ATOMREF[6][3] + 4 * ATOMREF[1][3])) * HARTREE_IN_EV)
    assert methane.labels["homo"] == pytest.approx(-0.3877 * HARTREE_IN_EV)
    assert methane.labels["gap"] == pytest.approx(0.5048 * HARTREE_IN_EV)
    assert methane.labels["zpve"] == pytest.approx(0.044749 * HARTREE_IN_EV)
    assert methane.labels["Cv"] == pytest.approx(6.469 - 5 * 2.981)
    assert methane.labels["mu"] == 0.0 and methane.labels["r2"] == 35.3641
    # the embedded copy agrees with the package
    emb = next(open_source("embedded:qm9").molecules())
    assert emb.labels["U0"] == pytest.approx(u0, abs=1e-8) and np.allclose(emb.pos, methane.pos)
    with pytest.raises(DataSourceError, match="Z=16"):
        geom3d_targets(table.targets[:1], [np.array([16])])


def test_qm9_split_customized_01():
    sp = split_customized_01()
    assert {k: len(v) for k, v in sp.items()} == {"train": 110_000, "valid": 10_000, "test": 10_831}
    allidx = np.concatenate(list(sp.values()))
    assert np.array_equal(np.sort(allidx), np.arange(N_MOLECULES))
    assert np.array_equal(sp["train"][:5], np.random.RandomState(42).permutation(N_MOLECULES)[:5])
    assert sp["train"][:3].tolist() == [112526, 100113, 55940]
    assert sp["test"][:3].tolist() == [24143, 20981, 30492]
    table = load_qm9()
    assert table.gdb_id[sp["train"][:3]].tolist() == [114631, 102124, 57491]
    assert table.gdb_id[sp["test"][:3]].tolist() == [24660, 21361, 31451]


def test_rmd17_presplit_aspirin_shapes_units(rmd17_root):
    s = load_rmd17(rmd17_root, "aspirin")
    assert {k: len(v) for k, v in s.items()} == {"train": 950, "valid": 50, "test": 1000}
    tr = s["train"]
    assert tr.pos.shape == (950, 21, 3) and tr.forces.shape == (950, 21, 3) and tr.energy.shape == (950,)
    assert tr.z.tolist().count(6) == 9 and tr.z.tolist().count(8) == 4 and len(tr.z) == 21
    # kcal/mol: aspirin's PBE/def2-SVP total energy is about -406,000 kcal/mol (= -648 Ha)
    assert -407_000 < tr.energy.mean() < -405_000
    assert 5 < np.abs(tr.forces).mean() < 60  # kcal/mol/Å, not eV/Å or Ha/bohr
    assert not set(s["valid"].index) & set(tr.index)


def test_rmd17_archive_layout_matches_presplit(tmp_path, rmd17_root):
    """Build the official archive layout from the pre-split files and read it back."""
    tr = np.load(rmd17_root / "rmd17_ethanol_train_01.npz")
    te = np.load(rmd17_root / "rmd17_ethanol_test_01.npz")
    n_total = int(max(tr["old_indices"].max(), te["old_indices"].max())) + 1
    full = {k: np.zeros((n_total,) + tr[k].shape[1:], tr[k].dtype) for k in ("coords", "energies", "forces")}
    for d in (tr, te):
        for k in full:
            full[k][d["old_indices"]] = d[k]
    (tmp_path / "npz_data").mkdir()
    (tmp_path / "splits").mkdir()
    np.savez(tmp_path / "npz_data" / "rmd17_ethanol.npz", nuclear_charges=tr["nuclear_charges"], **full)
    np.savetxt(tmp_path / "splits" / "index_train_01.csv", tr["old_indices"], fmt="%d")
    np.savetxt(tmp_path / "splits" / "index_test_01.csv", te["old_indices"], fmt="%d")
    a, b = load_rmd17(tmp_path, "ethanol"), load_rmd17(rmd17_root, "ethanol")
    for split in ("train", "valid", "test"):
        assert np.array_equal(a[split].pos, b[split].pos)
        assert np.array_equal(a[split].forces, b[split].forces)
        assert np.array_equal(a[split].index, b[split].index)


def test_rmd17_errors(tmp_path, rmd17_root):
    with pytest.raises(DataSourceError, match="does not exist"):
        load_rmd17(tmp_path / "nope", "aspirin")
    with pytest.raises(DataSourceError, match="unknown rMD17 molecule 'asprin'"):
        load_rmd17(rmd17_root, "asprin")
    with pytest.raises(DataSourceError, match="official archive layout"):
        load_rmd17(tmp_path, "aspirin")
    with pytest.raises(DataSourceError, match="rMD17 data not found"):
        open_source(f"rmd17:aspirin?root={tmp_path / 'nope'}")
    src = open_source(f"rmd17:aspirin?split=test&root={rmd17_root}&limit=3")
    assert [m.labels["split"] for m in src] == ["test"] * 3


def test_rmd17_check_available_agrees_with_load(tmp_path):
    """check_available and load_rmd17 look the split files up the same way (``_split_files``): the pre-split
    layout wins as soon as its train file exists, so a train file without its test file is an error for both
    even where a complete archive layout sits beside it (check_available used to accept that layout)."""
    from edg.edg_core.readers.rmd17 import check_available
    for f in ("npz_data/rmd17_ethanol.npz", "splits/index_train_01.csv", "splits/index_test_01.csv",
              "rmd17_ethanol_train_01.npz"):
        (tmp_path / f).parent.mkdir(exist_ok=True)
        (tmp_path / f).write_bytes(b"")  # existence is all the lookup needs
    for look in (check_available, load_rmd17):
        with pytest.raises(DataSourceError, match="found rmd17_ethanol_train_01.npz but not rmd17_ethanol_test_01"):
            look(tmp_path, "ethanol")
    (tmp_path / "rmd17_ethanol_train_01.npz").unlink()
    (tmp_path / "splits" / "index_test_01.csv").unlink()
    for look in (check_available, load_rmd17):
        with pytest.raises(DataSourceError, match="split file .*index_test_01.csv does not exist"):
            look(tmp_path, "ethanol")
    for look in (check_available, load_rmd17):
        with pytest.raises(DataSourceError, match="no rMD17 data for 'aspirin' split 02 .*official archive layout"):
            look(tmp_path, "aspirin", 2)


def test_rmd17_embedded_root():
    s = load_rmd17("embedded", "ethanol")
    assert {k: len(v) for k, v in s.items()} == {"train": 16, "valid": 4, "test": 4}
    ids = [m.id for m in open_source("rmd17:ethanol?split=train&root=embedded").molecules()]
    emb = [m.id for m in open_source("embedded:rmd17").molecules() if "ethanol" in m.id]
    assert ids == emb[:16]
    with pytest.raises(DataSourceError, match="only ethanol and aspirin"):
        load_rmd17("embedded", "uracil")

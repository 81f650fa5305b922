"""Readers stream, read an input once, resynchronise without costing a neighbour, refuse what they cannot
represent, and say where charge and multiplicity came from (issue 23, deliverable 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from edg.edg_core.errors import DataSourceError, InvalidRecord
from edg.edg_core.molecule import MIN_ATOM_DISTANCE_A, Molecule
from edg.edg_core.readers import open_source, read_sdf, read_xyz
from edg.edg_core.spec import SpecError

REPO = Path(__file__).resolve().parents[1]
WATER = "O 0.0 0.0 0.117\nH 0.0 0.757 -0.467\nH 0.0 -0.757 -0.467\n"


def frame(id_: str, atoms: str = WATER, extra: str = "", count: str | None = None) -> str:
    n = count if count is not None else str(len(atoms.strip().splitlines()))
    return f"{n}\nid={id_} {extra}\n{atoms}"


def split(records):
    good = [r.id for r in records if not isinstance(r, InvalidRecord)]
    bad = [r for r in records if isinstance(r, InvalidRecord)]
    return good, bad


def edg(*argv: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real ``edg`` command line in a child process (this tree on PYTHONPATH)."""
    return subprocess.run([sys.executable, "-m", "edg.cluster.cli", *argv], capture_output=True, text=True,
                          input=None if stdin is None else stdin.decode(), cwd=cwd, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "EDG_PROGRESS": "0"})


# ------------------------------------------------------------------ streaming, read once
def _write_frames(path: Path, target_bytes: int, atoms: int = 1000) -> int:
    """Frames of ``atoms`` carbon atoms 1.5 Å apart on a cube lattice until the file holds ``target_bytes``."""
    side = int(np.ceil(atoms ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:atoms] * 1.5
    body = "".join(f"C {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in grid)
    n = 0
    with open(path, "w") as f:
        while f.tell() < target_bytes:
            f.write(f"{atoms}\nid=f{n}\n{body}")
            n += 1
    return n


_PEAK = """
import resource, sys
from edg.edg_core.readers import read_xyz
records = read_xyz(sys.argv[1])
first = next(records)  # imports (numpy, scipy's k-d tree) and one frame are in the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n = 1 + sum(1 for r in records if r.__class__.__name__ == "Molecule")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(n, (peak - base) * 1024)
"""


def test_xyz_memory_is_bounded_by_the_largest_frame_not_the_file(tmp_path):
    """100 MB of 1000-atom frames (43 KB each) stream through in a child process whose peak resident memory
    grows by less than 16 MB after the first frame (the whole-file reader grew by 5x the file)."""
    path = tmp_path / "big.xyz"
    frames = _write_frames(path, 100 * 10**6)
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    n, growth = map(int, out.stdout.split())
    assert n == frames
    assert growth < 16 * 2**20, f"peak RSS grew by {growth / 2**20:.1f} MB reading {path.stat().st_size} bytes"


def test_a_fifo_is_read_once_and_len_then_iteration_both_work(tmp_path):
    """``len(source)`` (the stage commands count first) and the iteration after it read one FIFO written once."""
    fifo = tmp_path / "in.xyz"
    os.mkfifo(fifo)
    data = (frame("a") + frame("b") + frame("c")).encode()
    written = threading.Event()

    def writer():
        with open(fifo, "wb") as f:  # blocks until the reader opens the FIFO
            f.write(data)
        written.set()
    threading.Thread(target=writer, daemon=True).start()
    src = open_source(str(fifo))
    assert len(src) == 3
    assert written.wait(600)  # the event; the timeout only stops a hang
    assert [m.id for m in src.molecules()] == ["a", "b", "c"]
    assert [m.id for m in src.molecules()] == ["a", "b", "c"]  # again, from the one copy


def test_standard_input_is_an_input(tmp_path):
    out = edg("data", "info", "-", "--json", stdin=(frame("a") + frame("b")).encode(), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout[out.stdout.index("{"):])["molecules"] == 2
    out = edg("data", "info", "-", "--json", "--show", "1", stdin=(frame("a") + frame("b")).encode(), cwd=tmp_path)
    info = json.loads(out.stdout[out.stdout.index("{"):])  # the summary and the shown record from one read
    assert info["molecules"] == 2 and [r["id"] for r in info["records"]] == ["a"], out.stderr
    # "-?..." would read as a flag: options on standard input go on /dev/stdin (or --input=-?format=smi)
    out = edg("data", "info", "/dev/stdin?format=smi", "--json", stdin=b"O water\nC methane\n", cwd=tmp_path)
    assert json.loads(out.stdout[out.stdout.index("{"):])["molecules"] == 2, out.stderr


def test_sdf_streams_from_a_fifo_with_line_numbers(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem
    blocks = []
    for name, smi in (("w", "O"), ("m", "C")):
        m = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(m, randomSeed=1)
        m.SetProp("_Name", name)
        blocks.append(Chem.MolToMolBlock(m) + "> <energy>\n-1.5\n\n$$$$\n")
    fifo = tmp_path / "m.sdf"
    os.mkfifo(fifo)
    threading.Thread(target=lambda: fifo.write_text("".join(blocks)), daemon=True).start()
    recs = list(read_sdf(fifo))
    assert [r.id for r in recs] == ["w", "m"] and recs[1].labels == {"energy": -1.5}


# ------------------------------------------------------------------ resynchronisation
def test_a_12_digit_count_line_fails_only_its_own_frame(tmp_path):
    p = tmp_path / "a.xyz"
    p.write_text(frame("good-1") + frame("bad", count="123456789012") + frame("good-2"))
    good, bad = split(list(read_xyz(p)))
    assert good == ["good-1", "good-2"]
    assert [b.record for b in bad] == ["bad"]
    assert "frame 1, line 6: atom count 123456789012 is over the 10,000,000 atoms" in bad[0].problem


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("extra, accepted", [
    ('Lattice="10 0 0 0 10 0 0 0 10"', False),
    ('Lattice="10 0 0 0 10 0 0 0 10" pbc="T T T"', False),
    ('pbc="F F T"', False),
    ('Lattice="10 0 0 0 10 0 0 0 10" pbc="F F F"', True),
])
def test_periodic_cells_are_refused(tmp_path, extra, accepted):
    p = tmp_path / "a.xyz"
    p.write_text(frame("good-1") + frame("cell", extra=extra) + frame("good-2"))
    good, bad = split(list(read_xyz(p)))
    if accepted:
        assert good == ["good-1", "cell", "good-2"] and not bad
    else:
        assert good == ["good-1", "good-2"] and [b.record for b in bad] == ["cell"]
        assert "periodic cell (" in bad[0].problem and "EDG computes isolated molecules" in bad[0].problem


def test_sdf_with_every_atom_at_the_origin_is_refused(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem
    blocks = []
    for name in ("good-1", "origin", "good-2"):
        m = Chem.AddHs(Chem.MolFromSmiles("O"))
        AllChem.EmbedMolecule(m, randomSeed=1)
        if name == "origin":
            for i in range(m.GetNumAtoms()):
                m.GetConformer().SetAtomPosition(i, (0.0, 0.0, 0.0))
        m.SetProp("_Name", name)
        blocks.append(Chem.MolToMolBlock(m) + "$$$$\n")
    p = tmp_path / "m.sdf"
    p.write_text("".join(blocks))
    good, bad = split(list(read_sdf(p)))
    assert good == ["good-1", "good-2"]
    assert bad[0].record == "origin" and "m.sdf, record 1, line" in bad[0].problem
    assert "coincident atoms: atoms 0 and 1 are 0.000 Å apart (< 0.3 Å)" in bad[0].problem


@pytest.mark.parametrize("gap, accepted", [(MIN_ATOM_DISTANCE_A - 0.01, False), (MIN_ATOM_DISTANCE_A + 0.01, True)])
def test_the_coincidence_threshold_is_the_stated_one(tmp_path, gap, accepted):
    p = tmp_path / "a.xyz"
    p.write_text(frame("hh", f"H 0 0 0\nH 0 0 {gap:.3f}\n", extra="multiplicity=1"))
    good, bad = split(list(read_xyz(p)))
    assert (good == ["hh"]) is accepted and (len(bad) == 0) is accepted


def test_large_molecules_use_the_kd_tree_and_find_the_one_close_pair():
    pos = np.stack(np.meshgrid(*[np.arange(5)] * 3, indexing="ij"), -1).reshape(-1, 3) * 1.5  # 125 atoms
    pos[77] = pos[31] + [0.0, 0.1, 0.0]
    with pytest.raises(InvalidRecord, match="atoms 31 and 77 are 0.100 Å apart"):
        Molecule(z=[6] * 125, pos=pos, id="lattice").check_atoms_apart()


@pytest.mark.parametrize("extra, problem", [
    ("charge=-1000", "impossible charge -1000: 1010 electrons on a nuclear charge of 10 (more than 2 per proton)"),
    ("charge=10", "impossible charge +10: leaves 0 electrons"),
    ("charge=12", "impossible charge +12: leaves -2 electrons"),
    ("multiplicity=13", "multiplicity 13 impossible with 10 electrons"),
])
def test_impossible_charges_and_multiplicities_are_refused(tmp_path, extra, problem):
    p = tmp_path / "a.xyz"
    p.write_text(frame("good-1") + frame("bad", extra=extra) + frame("good-2"))
    good, bad = split(list(read_xyz(p)))
    assert good == ["good-1", "good-2"] and bad[0].record == "bad" and problem in bad[0].problem


def test_hydride_and_oxide_are_possible():
    assert Molecule(z=[1], pos=[[0, 0, 0]], id="h-", charge=-1).multiplicity == 1
    assert Molecule(z=[8], pos=[[0, 0, 0]], id="o2-", charge=-2).multiplicity == 1


# ------------------------------------------------------------------ one-line answers
def test_no_molecules_is_one_line(tmp_path):
    (tmp_path / "empty.xyz").write_bytes(b"")
    (tmp_path / "blank.smi").write_text("\n\n# a comment\n")
    for name in ("empty.xyz", "blank.smi"):
        out = edg("data", "convert", "--input", str(tmp_path / name), "--out", str(tmp_path / "out"))
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert out.stderr.strip().splitlines()[-1] == f"edg data: error: input '{tmp_path / name}': no molecules"
    assert list(open_source(f"{tmp_path / 'empty.xyz'}?limit=0")) == []  # asked for none: no error


def test_a_folder_or_unreadable_input_and_an_unwritable_out_are_one_line(tmp_path):
    (tmp_path / "a.xyz").write_text(frame("a"))
    cases = [(["data", "convert", "--input", str(tmp_path), "--out", str(tmp_path / "o1")], "is a folder"),
             (["data", "convert", "--input", str(tmp_path / "a.xyz"), "--out", str(tmp_path / "a.xyz" / "o")],
              "is a file, not a folder"),
             (["dft", "--input", str(tmp_path), "--out", str(tmp_path / "o2")], "is a folder")]
    if os.geteuid() != 0:  # root reads and writes whatever the modes say
        (tmp_path / "secret.xyz").write_text(frame("s"))
        (tmp_path / "secret.xyz").chmod(0)
        (tmp_path / "ro").mkdir(mode=0o555)
        cases += [(["data", "convert", "--input", str(tmp_path / "secret.xyz"), "--out", str(tmp_path / "o3")],
                   "cannot be read"),
                  (["data", "convert", "--input", str(tmp_path / "a.xyz"), "--out", str(tmp_path / "ro" / "o")],
                   "cannot be written")]
    for argv, words in cases:
        out = edg(*argv)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("edg ") and ": error: " in last and words in last, out.stderr


def test_unreadable_file_is_one_data_source_error(tmp_path):
    """The check itself, whatever user runs the test: a path whose read the OS refuses."""
    from edg.edg_core.readers.stream import open_input
    with pytest.raises(DataSourceError, match="is a folder"):
        with open_input(tmp_path):
            pass


# ------------------------------------------------------------------ charge and multiplicity
def test_charge_and_multiplicity_are_never_silently_guessed(tmp_path):
    p = tmp_path / "oh.xyz"
    p.write_text(frame("oh", "O 0 0 0\nH 0 0 0.97\n"))
    [m] = open_source(str(p)).molecules()
    assert (m.charge, m.multiplicity, m.inferred) == (0, 2, ("charge", "multiplicity"))
    [m] = open_source(f"{p}?charge=-1").molecules()
    assert (m.charge, m.multiplicity, m.inferred) == (-1, 1, ("multiplicity",))
    [m] = open_source(f"{p}?charge=-1&multiplicity=3").molecules()
    assert (m.charge, m.multiplicity, m.inferred) == (-1, 3, ())
    out = edg("data", "info", str(p))
    assert "inferred: {'charge': 1, 'multiplicity': 1}" in out.stdout and "multiplicities: {'2': 1}" in out.stdout
    assert "?charge=N&multiplicity=M" in out.stdout
    info = json.loads(edg("data", "info", f"{p}?charge=-1", "--json").stdout)
    assert info["charges"] == {"-1": 1} and info["multiplicities"] == {"1": 1}
    assert info["inferred"] == {"charge": 0, "multiplicity": 1}


def test_a_stated_charge_that_disagrees_with_the_spec_is_refused(tmp_path):
    p = tmp_path / "a.xyz"
    p.write_text(frame("stated", extra="charge=-1", atoms="O 0 0 0\nH 0 0 0.97\n") + frame("plain"))
    good, bad = split(list(open_source(f"{p}?charge=0")))
    assert good == ["plain"]
    assert "charge=-1 on the comment line but ?charge=0 in the spec" in bad[0].problem
    smi = tmp_path / "m.smi"
    smi.write_text("[OH-] hydroxide\nO water\n")
    good, bad = split(list(open_source(f"{smi}?multiplicity=1")))
    assert good == ["hydroxide", "water"]
    good, bad = split(list(open_source(f"{smi}?charge=0")))
    assert good == ["water"] and "charge -1 in the file but ?charge=0 in the spec" in bad[0].problem


def test_stated_charge_is_not_marked_inferred_and_datasets_state_theirs(tmp_path):
    p = tmp_path / "a.xyz"
    p.write_text(frame("w", extra="charge=0 multiplicity=1"))
    [m] = open_source(str(p)).molecules()
    assert m.inferred == ()
    assert all(m.inferred == () for m in open_source("embedded").molecules())


@pytest.mark.parametrize("spec, words", [("a.xyz?charge=abc", "option charge='abc' must be an integer"),
                                         ("a.xyz?multiplicity=0", "option multiplicity='0' must be an integer >= 1"),
                                         ("a.xyz?format=pdb", "option format='pdb' must be one of xyz, sdf, smi")])
def test_charge_state_options_are_checked_by_the_spec_grammar(tmp_path, monkeypatch, spec, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.xyz").write_text(frame("a"))
    with pytest.raises(SpecError, match=words.replace("(", r"\(").replace("?", r"\?")):
        open_source(spec)

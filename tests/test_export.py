"""``edg export``: one self-contained model file of a trained student, its model card, and the domain verdicts of
``edg predict``, the ASE calculator and ``ExportedModel.predict``; hostile model files are refused.

One SchNet is trained for 2 epochs on the 16 embedded rMD17 ethanol frames and exported once (through the real
``edg export`` command) for the whole module."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from edg.cluster.cli import main
from edg.edg_core.errors import EDGError
from edg.edg_core.readers import open_source
from edg.edg_core.units import KCAL_PER_MOL_IN_EV

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"hidden_channels": 16, "num_filters": 16, "num_interactions": 2, "num_gaussians": 12, "cutoff": 5.0}
TEST = "rmd17:ethanol?split=test&root=embedded"
BENZENE = ([6] * 6 + [1] * 6, np.array(
    [[1.39 * np.cos(a), 1.39 * np.sin(a), 0.0] for a in np.arange(6) * np.pi / 3]
    + [[2.47 * np.cos(a), 2.47 * np.sin(a), 0.0] for a in np.arange(6) * np.pi / 3]))
AMMONIUM = ([7, 1, 1, 1, 1], np.array([[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63],
                                      [0.63, -0.63, -0.63]], dtype=float))
WATER = ([8, 1, 1], np.array([[0.0, 0.0, 0.117], [0.0, 0.757, -0.467], [0.0, -0.757, -0.467]]))
METHANOL = ([6, 8, 1, 1, 1, 1], np.array([[0.0, 0.0, 0.0], [1.42, 0.0, 0.0], [-0.36, 1.03, 0.0],
                                          [-0.36, -0.51, 0.89], [-0.36, -0.51, -0.89], [1.74, 0.9, 0.0]]))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(run folder, model file, what `edg export` printed): 2 epochs of SchNet, exported for molecules of up
    to 25 atoms (one program)."""
    from edg.train.configs import FitConfig
    from edg.train.loops.distill import DistillConfig, run_distill
    out = tmp_path_factory.mktemp("export")
    cfg = DistillConfig(dataset="rmd17:ethanol?root=embedded", out=str(out / "runs"), student_args=SMALL,
                        fit=FitConfig(epochs=2, lr=3e-3, batch_size=4, seed=1))
    run_distill(cfg)
    run_dir = out / "runs" / cfg.run_name()
    model = out / "ethanol.pt2"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(run_dir), "--out", str(model), "--max-atoms", "25"]) == 0
    return run_dir, model, printed.getvalue()


@pytest.fixture(scope="module")
def loaded(exported):
    from edg.train.io.exported import load_exported
    return load_exported(exported[1])


def _reference(run_dir, structures, dtype: str = "float32"):
    """Energies (eV) and forces (eV/Å) of the run folder's own model (``load_student`` in ``dtype``, as
    exported), one structure at a time."""
    import torch
    from edg.train.io.predict import load_student
    student = load_student(run_dir, device="cpu", dtype=getattr(torch, dtype))
    out = []
    for z, pos in structures:
        e, f = student.energy_forces(torch.as_tensor(z), torch.as_tensor(pos, dtype=torch.float64))
        out.append((float(e[0]) * KCAL_PER_MOL_IN_EV, f.double().numpy() * KCAL_PER_MOL_IN_EV))
    return out


def test_export_prints_the_card_and_the_file_equals_the_run_folder(exported, loaded):
    run_dir, model, printed = exported
    assert f"edg export: results in {model}" in printed
    assert "trained on rmd17:ethanol?" in printed and "elements H, C, O" in printed and "1 composition(s)" in printed
    card = loaded.card
    assert card.elements == [1, 6, 8] and list(card.formulas) == ["C2H6O"]
    assert card.data["structures"] == 16 and card.data["spec"].startswith("rmd17:ethanol?") and "root=embedded" in \
        card.data["spec"]
    mols = list(open_source("rmd17:ethanol?split=train&root=embedded").molecules())
    energies = [m.labels["energy"] * KCAL_PER_MOL_IN_EV for m in mols]
    assert card.energy.min == pytest.approx(min(energies)) and card.energy.max == pytest.approx(max(energies))
    assert loaded.units == {"energy": "eV", "forces": "eV/Å", "positions": "Å"}
    assert loaded.student == "schnet" and loaded.cutoff == 5.0
    assert loaded.meta["run"]["name"] == run_dir.name and loaded.meta["card"]["data"] == card.data
    # the test frames and structures of other sizes (6, 9 and 12 atoms: the atom count is dynamic), as one batch
    test = [(m.z, m.pos) for m in open_source(TEST).molecules()]
    structures = [*test, METHANOL, BENZENE]
    got = loaded.predict(structures)
    ref = _reference(run_dir, structures)
    for p, (e, f) in zip(got, ref):
        assert p.energy == pytest.approx(e, rel=1e-5, abs=1e-4)
        np.testing.assert_allclose(p.forces, f, rtol=1e-4, atol=1e-4)
    assert max(abs(p.energy - e) for p, (e, _) in zip(got, ref)) < 1e-3
    # one molecule at a time gives what the batch gave
    alone = loaded.predict([METHANOL])[0]
    assert alone.energy == pytest.approx(got[4].energy, abs=1e-4)
    d = got[0].to_dict()
    assert json.loads(json.dumps(d)) == d and set(d) == {"energy", "forces", "verdict"}


def test_verdicts_ethanol_in_benzene_water_warn_ammonium_refused(loaded):
    test = [(m.z, m.pos) for m in open_source(TEST).molecules()]
    got = loaded.predict([*test, BENZENE, WATER, AMMONIUM])
    assert [p.verdict.status for p in got] == ["in"] * 4 + ["warn", "warn", "refused"]
    assert "composition C6H6 never seen in training (seen: C2H6O)" in got[4].verdict.reasons
    assert "composition H2O never seen in training (seen: C2H6O)" in got[5].verdict.reasons
    amm = got[6]
    assert amm.energy is None and amm.forces is None
    assert amm.verdict.reasons == ["element N never seen in training (seen: H, C, O)"]
    assert amm.to_dict() == {"energy": None, "forces": None, "verdict": {"status": "refused", "reasons":
                                                                         amm.verdict.reasons}}
    # the BFGS result: ethanol with its C-C bond stretched from 1.5 to 2.1 Å
    z, pos = test[0]
    pos = np.array(pos, dtype=float)
    bond = pos[0] - pos[1]
    pos[0] = pos[1] + bond * 2.1 / np.linalg.norm(bond)
    stretched = loaded.predict([(z, pos)])[0]
    assert stretched.verdict.status == "warn" and stretched.energy is not None
    assert any(r.startswith("C-C distance 2.10 Å never seen in training (seen: 1.") for r in
               stretched.verdict.reasons), stretched.verdict.reasons
    big = loaded.predict([([6, 1] * 15, np.random.default_rng(0).uniform(0, 6, (30, 3)))])[0]
    assert big.verdict.status == "refused" and "30 atoms, more than the 25 this file accepts" in big.verdict.reasons


def test_card_rules_energy_and_force_margins():
    """Energy outside [min - max(10 % span, 2 std), max + ...] of its composition, or a force above the training
    maximum by that margin, is a warning; inside is not."""
    from edg.train.io.model_card import ModelCard
    z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
    energies = np.linspace(-100.0, -99.0, 11)  # eV: span 1, std 0.316 -> margin 0.632
    forces = [np.full((9, 3), 0.1 * k) for k in range(11)]  # largest norm 1.732 eV/Å
    card = ModelCard.from_training([z] * 11, energies, forces, {"spec": "synthetic"})  # no positions: no distances
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again == card
    ok = card.check_prediction(card.check_structure(z, np.zeros((9, 3)) + np.arange(9)[:, None]), z, -99.5,
                               np.zeros((9, 3)))
    assert ok.status == "in" and ok.reasons == []
    assert card.check_prediction(card.check_structure(z, np.ones((9, 3))), z, -98.4, None).status == "in"
    far = card.check_prediction(card.check_structure(z, np.ones((9, 3))), z, -98.3, None)
    assert far.status == "warn" and far.reasons[0].startswith("energy -98.3000 eV far outside the training range")
    r = card.force_norm  # per-atom norms 0..1.732 eV/Å, std 0.55: at most 1.732 + 1.10
    assert r.max == pytest.approx(3 ** 0.5) and r.max + r.margin() == pytest.approx(3 ** 0.5 + 2 * r.std)
    weak = card.check_prediction(card.check_structure(z, np.ones((9, 3))), z, -99.5, np.full((9, 3), 1.5))
    assert weak.status == "in"
    strong = card.check_prediction(card.check_structure(z, np.ones((9, 3))), z, -99.5, np.full((9, 3), 2.0))
    assert strong.status == "warn" and "largest atomic force 3.4641 eV/Å above the training range" in \
        strong.reasons[0]


def test_edg_predict_with_a_model_file_writes_the_domain_column_and_a_summary(exported, tmp_path, capsys):
    from ase.io import read
    _, model, _ = exported
    sym = {1: "H", 6: "C", 7: "N", 8: "O"}
    frames = [(m.id, m.z, m.pos) for m in list(open_source(TEST).molecules())[:2]]
    frames += [("benzene", *BENZENE), ("ammonium", *AMMONIUM), ("water", *WATER)]
    lines = []
    for id_, z, pos in frames:
        lines += [str(len(z)), f"id={id_}"] + [f"{sym[int(a)]} {x:.6f} {y:.6f} {w:.6f}" for a, (x, y, w) in
                                               zip(z, pos)]
    src = tmp_path / "in.xyz"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "pred.extxyz"
    assert main(["predict", "--model", str(model), "--input", str(src), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert cap.err.strip().splitlines() == [
        "edg predict: ammonium: refused: element N never seen in training (seen: H, C, O)"]
    assert "predicted 4 molecules" in cap.out and "1 refused" in cap.out
    assert re.search(r"3 of 5 structures outside the training domain: 1 refused \(element N never seen in "
                     r"training\), 2 warned \(composition C6H6 never seen in training; \d+ other reason\(s\)\)",
                     cap.out), cap.out
    got = read(out, index=":")
    assert [f.info["id"] for f in got] == [frames[0][0], frames[1][0], "benzene", "water"]
    assert [f.info["domain"] for f in got] == ["in", "in", "warn", "warn"]
    assert "composition C6H6 never seen" in got[2].info["domain_reasons"] and "domain_reasons" not in got[0].info
    assert got[0].info["model"] == "ethanol.pt2"
    refused = [json.loads(x) for x in (tmp_path / "pred.extxyz.failures.jsonl").read_text().splitlines()]
    assert [(r["record"], r["stage"]) for r in refused] == [("ammonium", "predict")]
    # the run folder gives the same energies and the same verdicts (its card is made from its training data)
    out2 = tmp_path / "run.extxyz"
    assert main(["predict", "--model", str(exported[0]), "--input", str(src), "--out", str(out2)]) == 0
    assert "3 of 5 structures outside the training domain" in capsys.readouterr().out
    got2 = read(out2, index=":")
    assert [f.info["domain"] for f in got2] == ["in", "in", "warn", "warn"]
    np.testing.assert_allclose([f.get_potential_energy() for f in got2], [f.get_potential_energy() for f in got],
                               rtol=0, atol=1e-3)


def test_ase_calculator_with_a_model_file_warns_and_refuses(exported, loaded):
    from ase import Atoms
    from edg.train.io.ase_calculator import DomainWarning, EDGCalculator
    from edg.train.io.predict import ModelError
    calc = EDGCalculator(exported[1])
    m = next(open_source(TEST).molecules())
    atoms = Atoms(numbers=m.z, positions=m.pos, calculator=calc)
    assert atoms.get_potential_energy() == pytest.approx(loaded.predict([(m.z, m.pos)])[0].energy, abs=1e-6)
    assert atoms.get_forces().shape == (9, 3)
    assert calc.domain.status == "in" and calc.results["domain"] == "in"
    benzene = Atoms(numbers=BENZENE[0], positions=BENZENE[1], calculator=calc)
    with pytest.warns(DomainWarning, match="C6H6 is outside the model's training domain: composition C6H6 never"):
        benzene.get_potential_energy()
    assert calc.domain.status == "warn" and calc.results["domain"] == "warn"
    ammonium = Atoms(numbers=AMMONIUM[0], positions=AMMONIUM[1], calculator=calc)
    with pytest.raises(ModelError, match="H4N refused: element N never seen in training"):
        ammonium.get_potential_energy()
    assert calc.domain.status == "refused"


BLOCKER = """
import importlib.abc, json, sys, warnings
BLOCKED = ("edg.train.students", "edg.train.loops", "edg.train.tasks", "edg.train.models", "torch_geometric")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith(BLOCKED):
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
from ase import Atoms
from edg.api import EDGCalculator, load_exported
model = load_exported(sys.argv[1])
preds = model.predict(json.loads(sys.argv[2]))
atoms = Atoms(numbers=[8, 1, 1], positions=[[0, 0, 0.117], [0, 0.757, -0.467], [0, -0.757, -0.467]])
atoms.calc = EDGCalculator(sys.argv[1])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    atoms.get_potential_energy()
print(json.dumps({"energies": [p.energy for p in preds], "calc": atoms.calc.domain.status,
                  "warned": len(caught),
                  "imported": sorted(n for n in sys.modules
                                     if n.startswith(BLOCKED) or n == "edg.train.io.export_trace")}))
"""


def test_a_model_file_loads_without_the_run_folder_or_the_training_code(exported, loaded, tmp_path):
    """In a child process that cannot import the students, loops, tasks, models or torch_geometric, the file
    (copied away from its run folder) loads, predicts what it predicts here, and backs the ASE calculator."""
    copy = tmp_path / "elsewhere" / "model.pt2"
    copy.parent.mkdir()
    copy.write_bytes(exported[1].read_bytes())
    test = [(m.z.tolist(), m.pos.tolist()) for m in open_source(TEST).molecules()]
    proc = subprocess.run([sys.executable, "-c", BLOCKER, str(copy), json.dumps(test)], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                               "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["imported"] == [] and res["calc"] == "warn" and res["warned"] == 1
    here = [p.energy for p in loaded.predict(test)]
    np.testing.assert_allclose(res["energies"], here, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- hostile files
def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _write(path: Path, members: list[tuple[str, bytes]], compress: int = zipfile.ZIP_STORED) -> Path:
    seen = set()
    with zipfile.ZipFile(path, "w", compress) as z:
        for name, data in members:
            with pytest.warns(UserWarning, match="Duplicate name") if name in seen else contextlib.nullcontext():
                z.writestr(name, data)
            seen.add(name)
    return path


def _tampered(src: Path, dst: Path, edit, rehash: bool = True) -> Path:
    """A copy of the model file ``src`` with ``edit(members, meta)`` applied (names relative to the archive
    folder); with ``rehash`` the metadata's SHA-256 are recomputed, as an attacker would."""
    raw = _members(src)
    prefix = next(iter(raw)).split("/")[0] + "/"
    members = {k[len(prefix):]: v for k, v in raw.items()}
    meta = json.loads(members["extra/edg/model.json"])
    edit(members, meta)
    if rehash:
        meta["digests"] = {k: hashlib.sha256(v).hexdigest() for k, v in members.items()
                           if k.startswith(("models/", "data/weights/", "data/constants/"))}
    members["extra/edg/model.json"] = json.dumps(meta).encode()
    return _write(dst, [(prefix + k, v) for k, v in members.items()])


def _program(members) -> str:
    return next(k for k in members if k.startswith("models/"))[len("models/"):-len(".json")]


def _edit_json(members, name, change) -> None:
    doc = json.loads(members[name])
    change(doc)
    members[name] = json.dumps(doc).encode()


def _os_system(marker: Path) -> bytes:
    """A pickle that runs ``touch <marker>`` when unpickled in full."""
    return b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."


def _pickled_weight(marker):
    def edit(members, meta):
        name = f"data/weights/{_program(members)}_weights_config.json"
        cfg = json.loads(members[name])
        first = next(iter(cfg["config"].values()))
        first["use_pickle"] = True
        members[f"data/weights/{first['path_name']}"] = _os_system(marker)
        members[name] = json.dumps(cfg).encode()
    return edit


def _sympy_injection(marker):
    def edit(members, meta):
        prog = f"models/{_program(members)}.json"

        def change(doc):
            values = doc["graph_module"]["graph"]["sym_int_values"]
            key = next(iter(values))
            values[key] = {"as_expr": {"expr_str": f"__import__('os').system('touch {marker}')", "hint": None}}
        _edit_json(members, prog, change)
    return edit


def _node_target(members, meta):
    def change(doc):
        doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"
    _edit_json(members, f"models/{_program(members)}.json", change)


def _guards(members, meta):
    def change(doc):
        doc["guards_code"] = ["__import__('os').system('id') == 0"]
    _edit_json(members, f"models/{_program(members)}.json", change)


def _oversized(members, meta):
    name = f"data/weights/{_program(members)}_weights_config.json"
    cfg = json.loads(members[name])
    first = next(iter(cfg["config"].values()))
    first["tensor_meta"]["sizes"] = [{"as_int": 100_000}, {"as_int": 100_000}, {"as_int": 100}]
    first["tensor_meta"]["strides"] = [{"as_int": 10_000_000}, {"as_int": 100}, {"as_int": 1}]
    members[f"data/weights/{first['path_name']}"] = b""
    members[name] = json.dumps(cfg).encode()


def _malformed(members, meta):
    def change(doc):
        doc["graph_module"]["signature"] = ["not", "an", "object"]
    _edit_json(members, f"models/{_program(members)}.json", change)


def _card(members, meta):
    meta["card"]["elements"] = [1, 6, 8, 200]


def _units(members, meta):
    meta["units"]["energy"] = "kcal/mol"


def _edit_weight(members, meta):
    name = next(k for k in members if re.match(r"data/weights/weight_\d+$", k) and len(members[k]) > 16)
    members[name] = bytes(b ^ 0xFF for b in members[name][:8]) + members[name][8:]


HOSTILE = {
    "pickled-weight": (lambda m: _pickled_weight(m), True,
                       r"is stored as a pickle \(torch would unpickle it in full\)"),
    "sympy-eval": (lambda m: _sympy_injection(m), True, r"symbolic expression \"__import__\('os'\).* holds Call, "
                                                        r"which is not size arithmetic; refused without evaluating"),
    "node-target": (lambda m: _node_target, True, r"node target 'torch\.os\.system' is not an admitted ATen operator"),
    "guards-code": (lambda m: _guards, True, r"guard \"__import__\('os'\).* holds Call, which is not size arithmetic"),
    "oversized-tensor": (lambda m: _oversized, True,
                         r"declares 1000000000000 elements \(sizes \[100000, 100000, 100\]\) "
                         r"but its record holds 0; refused before allocating"),
    "weight-edited": (lambda m: _edit_weight, False, r"member 'data/weights/weight_\d+' does not match the SHA-256 in "
                                                     r"its metadata \(changed after export\)"),
    "malformed-graph": (lambda m: _malformed, True, r"program atoms2to25 is malformed \(AttributeError: .*\); not "
                                                    r"what edg export writes"),
    "card-element": (lambda m: _card, True, r"model card: elements must be a non-empty list of atomic numbers 1\.\.54"),
    "metadata-units": (lambda m: _units, True, r"metadata units .* are not eV, eV/Å, Å"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_model_files_are_refused_in_one_line(exported, tmp_path, kind):
    from edg.train.io.exported import load_exported
    marker = tmp_path / "ran"
    make, rehash, message = HOSTILE[kind]
    bad = _tampered(exported[1], tmp_path / f"{kind}.pt2", make(marker), rehash)
    with pytest.raises(EDGError) as e:
        load_exported(bad)
    assert "\n" not in str(e.value) and re.search(message, str(e.value)), str(e.value)
    assert str(bad) in str(e.value) and not marker.exists()


def test_what_the_guard_stops_would_run_in_torch_export_load(exported, tmp_path):
    """The two code-running files above are real: torch.export.load on them runs the command they carry."""
    import torch
    for kind in ("pickled-weight", "sympy-eval"):
        marker = tmp_path / f"ran-{kind}"
        bad = _tampered(exported[1], tmp_path / f"{kind}.pt2", HOSTILE[kind][0](marker))
        # torch reads one program per archive; keep only the first one's members under torch's name "model"
        members = _members(bad)
        prefix = next(iter(members)).split("/")[0] + "/"
        prog = _program({k[len(prefix):]: v for k, v in members.items()})
        single = {k.replace(prog, "model") if prog in k else k: v for k, v in members.items()}
        path = _write(tmp_path / f"{kind}-single.pt2", list(single.items()))
        with contextlib.suppress(Exception):
            torch.export.load(path)
        assert marker.exists(), kind


def test_forged_and_foreign_archives_are_refused(exported, tmp_path, capsys):
    from edg.train.io.exported import load_exported
    members = _members(exported[1])
    prefix = next(iter(members)).split("/")[0] + "/"
    graph = next(k for k in members if "/models/" in k)
    cases = {
        "twice": ([*members.items(), (graph, b"{}")], zipfile.ZIP_STORED, r"forged archive: member '.*' appears twice"),
        "outside": ([*members.items(), ("../evil.json", b"{}")], zipfile.ZIP_STORED, r"outside the archive folder"),
        "compressed": (list(members.items()), zipfile.ZIP_DEFLATED, r"is compressed \(\d+ bytes stored for \d+\)"),
        "no-metadata": ([(k, v) for k, v in members.items() if not k.endswith("edg/model.json")], zipfile.ZIP_STORED,
                        r"no EDG metadata \(extra/edg/model\.json\): not a model file written by edg export"),
        "extra-member": ([*members.items(), (prefix + "data/weights/evil.pt", b"x")], zipfile.ZIP_STORED,
                         r"unexpected member 'data/weights/evil\.pt'"),
    }
    for name, (content, compress, message) in cases.items():
        path = _write(tmp_path / f"{name}.pt2", content, compress)
        with pytest.raises(EDGError, match=message) as e:
            load_exported(path)
        assert "\n" not in str(e.value)
    # a zip whose central directory lies about a member's size
    data = bytearray(exported[1].read_bytes())
    lied = tmp_path / "lied.pt2"
    name = graph.encode()
    at = data.rfind(b"PK\x01\x02", 0, data.rfind(name))  # the central directory entry of the graph
    data[at + 24:at + 28] = (int.from_bytes(data[at + 24:at + 28], "little") + 1000).to_bytes(4, "little")
    lied.write_bytes(bytes(data))
    with pytest.raises(EDGError, match=r"forged|damaged|compressed|declare more bytes"):
        load_exported(lied)
    # not a zip at all, and through the command line: one line, exit 2
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(pickle.dumps({"x": 1}))
    assert main(["predict", "--model", str(tmp_path / "twice.pt2"), "--input", TEST, "--out",
                 str(tmp_path / "o.extxyz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "appears twice" in err[0] and not (tmp_path / "o.extxyz").exists()
    with pytest.raises(EDGError, match="no such model file"):
        load_exported(tmp_path / "missing.pt2")


def test_sample_inputs_of_the_file_are_never_read(exported, tmp_path, loaded):
    """The file's pickled sample inputs (which torch unpickles, in full when weights-only fails) are replaced by
    EDG's own: a file whose sample inputs run a command loads, predicts, and runs nothing."""
    from edg.train.io.exported import load_exported
    marker = tmp_path / "ran"

    def edit(members, meta):
        members[f"data/sample_inputs/{_program(members)}.pt"] = _os_system(marker)
    path = _tampered(exported[1], tmp_path / "samples.pt2", edit)
    model = load_exported(path)
    (p,) = model.predict([METHANOL])
    assert p.energy == pytest.approx(loaded.predict([METHANOL])[0].energy, abs=1e-9) and not marker.exists()


def test_a_run_folder_without_its_training_data_predicts_and_says_the_domain_was_not_checked(exported, tmp_path,
                                                                                              capsys):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(exported[0], copy)
    rec = json.loads((copy / "result.json").read_text())
    rec["config"]["task"]["root"] = str(tmp_path / "gone")
    (copy / "result.json").write_text(json.dumps(rec))
    assert main(["predict", "--model", str(copy), "--input", TEST, "--out", str(tmp_path / "p.extxyz")]) == 0
    out = capsys.readouterr().out
    assert "predicted 4 molecules" in out and "training domain not checked: edg export needs the run's training " \
        "data for the model card" in out


@pytest.mark.slow
def test_default_export_covers_large_molecules_with_one_program_per_size_range(exported, tmp_path):
    """The default file (up to 500 atoms, here in float64) has one program per range where the traced code
    branches (25 and k + 1 = 33 atoms for SchNet's 32 neighbours); a 40-atom structure, where the neighbour limit
    prunes, equals the run folder's model."""
    from edg.train.io.exported import ExportConfig, export_run, load_exported
    path = export_run(exported[0], tmp_path / "full.pt2", ExportConfig(dtype="float64"))
    model = load_exported(path)
    assert model.meta["dtype"] == "float64"
    assert [(p.min_atoms, p.max_atoms) for p in model.programs] == [(2, 25), (26, 33), (34, 500)]
    g = np.random.default_rng(1)
    structures = [(np.array([6, 1, 8, 1] * 10), g.uniform(0, 7, (40, 3))), (np.array([6, 1] * 14),
                                                                          g.uniform(0, 6, (28, 3))), METHANOL]
    got = model.predict(structures)
    for p, (e, f) in zip(got, _reference(exported[0], structures, "float64")):
        assert p.energy == pytest.approx(e, rel=1e-9, abs=1e-8)
        np.testing.assert_allclose(p.forces, f, rtol=1e-7, atol=1e-8)

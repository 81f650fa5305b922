"""The one spec grammar (edg_core.spec) and the dataset registry (edg_core.datasets), through their consumers."""
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edg.edg_core.datasets import DATASETS, families, family_of, get_dataset
from edg.edg_core.readers import open_source
from edg.edg_core.readers.sources import embedded_path
from edg.edg_core.spec import TASK, DatasetSpec, SpecError, parse_spec

CANONICAL = {
    "embedded": "embedded",
    "embedded:qm9?limit=05": "embedded:qm9?limit=5",
    "qm9?target=U0": "qm9:U0",
    "qm9:gap?root=embedded&split=valid": "qm9:gap?split=valid&root=embedded",
    "rmd17?molecule=aspirin&limit=3&split=test": "rmd17:aspirin?split=test&limit=3",
    "rmd17:ethanol?split_id=2&root=/data/r md17&split=train":
        "rmd17:ethanol?split=train&root=/data/r%20md17&split_id=2",
    "smiles:CCO,c1ccccc1?limit=1": "smiles:CCO,c1ccccc1?limit=1",
    "some/dir/mols.xyz?limit=2": "some/dir/mols.xyz?limit=2",
    "file:///abs/mols.sdf": "/abs/mols.sdf",
}


@pytest.mark.parametrize("text, canonical", CANONICAL.items())
def test_spec_canonical_form_round_trips(text, canonical):
    spec = parse_spec(text)
    assert str(spec) == canonical
    assert parse_spec(str(spec)) == spec and str(parse_spec(str(spec))) == canonical
    assert hash(spec) == hash(parse_spec(canonical))  # frozen: usable as a key


def test_a_bare_word_is_a_file_only_when_the_file_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match="unknown dataset 'molecules'"):
        parse_spec("molecules")
    (tmp_path / "molecules").write_text("")
    assert parse_spec("molecules") == DatasetSpec("file", "molecules")


def test_spec_fields_and_typed_options():
    s = parse_spec("rmd17:ethanol?root=embedded&split=test&limit=4&split_id=3")
    assert (s.name, s.subset, s.split, s.root, s.limit, s.option("split_id")) == \
        ("rmd17", "ethanol", "test", "embedded", 4, "3")
    assert s.option("molecule") == "ethanol" and s.family == "rmd17" and str(s.base) == "rmd17:ethanol"
    assert parse_spec("rmd17:ethanol").split == "train" and parse_spec("qm9").split == "all"  # the registry's defaults
    assert str(s.replace(limit=None, split="valid")) == "rmd17:ethanol?split=valid&root=embedded&split_id=3"
    assert parse_spec("qm9:U0").target == "U0"  # qm9's positional option is its target
    task = parse_spec("rmd17:aspirin?root=DIR&train-size=8", TASK)  # task options: '-' reads as '_'
    assert task.task_options() == {"train_size": "8"} and task.source_options() == {"root": "DIR"}


@pytest.mark.parametrize("text, purpose, message", [
    ("qm8:train", "records", "spec 'qm8:train': unknown dataset 'qm8' (did you mean 'qm9'?)"),
    ("rmd17:asprin", "records", "spec 'rmd17:asprin': unknown rMD17 molecule 'asprin' (did you mean 'aspirin'?)"),
    ("qm9:hommo", "task", "spec 'qm9:hommo': unknown QM9 target 'hommo' (did you mean 'homo'?)"),
    ("embedded?limt=2", "records", "spec 'embedded?limt=2': unknown option 'limt' (did you mean 'limit'?)"),
    ("rmd17:aspirin?train_size=8", "records", "unknown option 'train_size'"),
    ("embedded:qm9?limit=-1", "records", "spec 'embedded:qm9?limit=-1': option limit='-1' must be an integer >= 0"),
    ("rmd17:aspirin?split_id=x", "records", "option split_id='x' must be an integer >= 1"),
    ("rmd17:aspirin?split=tran", "records", "unknown rmd17 split 'tran' (did you mean 'train'?)"),
    ("rmd17:aspirin:tst", "records", "unknown rmd17 split 'tst' (did you mean 'test'?)"),
    ("rmd17", "records", "spec 'rmd17': name rMD17 molecule"),
    ("qm9", "task", "spec 'qm9': name QM9 target"),
    ("embedded:qm9", "task", "embedded has records but no task"),
    ("rmd17:aspirin?split=train", "task", "a task trains on all its splits; drop ?split=train"),
    ("rmd17:aspirin?limit=1&limit=2", "records", "option(s) ['limit'] given more than once"),
    ("rmd17:aspirin?molecule=ethanol", "records", "molecule given twice ('aspirin' and 'ethanol')"),
    ("rmd17:aspirin:train:x", "records", "too many ':' parts"),
    ("embedded:", "records", "nothing after ':'"),
    ("", "records", "empty spec"),
])
def test_bad_specs_are_one_line_errors_naming_the_spec_and_the_bad_part(text, purpose, message):
    with pytest.raises(SpecError) as e:
        parse_spec(text, purpose)
    assert message in str(e.value) and "\n" not in str(e.value)


EMBEDDED_SPECS = {  # every registered dataset, on the data shipped in the package
    "embedded": ["embedded", "embedded:qm9?limit=3", "embedded:rmd17"],
    "qm9": ["qm9?root=embedded", "qm9:U0?root=embedded&split=train", "qm9?root=embedded&split=test"],
    "rmd17": ["rmd17:ethanol?root=embedded", "rmd17:aspirin?root=embedded&split=valid"],
    "smiles": ["smiles:CCO,O"],
    "file": ["{tmp}/frames.extxyz", "{tmp}/frames.extxyz?limit=2"],
    "edbench": ["edbench:{tmp}/ed_energy_5w", "edbench:{tmp}?set=ed_energy_5w&split=train&split_by=random"],
    "pcqm4mv2": ["pcqm4mv2:{tmp}/pcqm.sdf", "pcqm4mv2:{tmp}/pcqm.sdf?part=1/2"],
}


def test_every_registered_dataset_opens_and_yields_records(tmp_path):
    assert set(EMBEDDED_SPECS) == set(DATASETS), "a dataset was registered without a test spec here"
    (tmp_path / "frames.extxyz").write_text(embedded_path("rmd17").read_text())
    from paperdata_fixtures import write_edbench, write_pcqm_sdf
    write_edbench(tmp_path / "ed_energy_5w")
    write_pcqm_sdf(tmp_path / "pcqm.sdf", ["CCO", "O", "C#N"])
    counts = {}
    for specs in EMBEDDED_SPECS.values():
        for text in specs:
            src = open_source(text.format(tmp=tmp_path))
            mols = list(src.molecules())
            assert mols and len(mols) == len(src), text
            counts[text] = len(mols)
    assert counts["embedded:qm9?limit=3"] == 3 and counts["{tmp}/frames.extxyz?limit=2"] == 2
    assert counts["embedded"] == counts["embedded:rmd17"] + 40 == counts["{tmp}/frames.extxyz"] + 40
    # the QM9 splits of the 40 embedded molecules partition them
    ids = {s: {m.id for m in open_source(f"qm9?root=embedded&split={s}").molecules()} for s in ("train", "valid",
                                                                                                 "test")}
    assert sum(map(len, ids.values())) == 40 and len(set.union(*ids.values())) == 40
    assert {m.labels["split"] for m in open_source("qm9:U0?root=embedded&split=valid").molecules()} == {"valid"}


def test_qm9_embedded_keeps_the_shipped_geom3d_targets():
    """The embedded QM9 table recovers raw targets from the file's Geom3D values: reading back gives them."""
    shipped = list(open_source("embedded:qm9").molecules())
    table = list(open_source("qm9?root=embedded").molecules())
    assert [m.id for m in table] == [m.id for m in shipped]
    for a, b in zip(shipped, table):
        assert np.allclose([a.labels[t] for t in ("mu", "gap", "U0", "G", "Cv")],
                           [b.labels[t] for t in ("mu", "gap", "U0", "G", "Cv")], rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("old, new", [
    ("rmd17:ethanol:test?root=embedded", "rmd17:ethanol?split=test&root=embedded"),
    ("rmd17:aspirin:valid?root=embedded&limit=1", "rmd17:aspirin?split=valid&root=embedded&limit=1"),
    ("qm9:train?root=embedded&limit=4", "qm9?split=train&root=embedded&limit=4"),
])
def test_old_spellings_give_the_same_records_with_one_note(old, new, caplog, monkeypatch):
    import edg.edg_core.spec as spec_module
    monkeypatch.setattr(spec_module, "_noted", set())  # once per process: start this process afresh
    with caplog.at_level(logging.WARNING, logger="edg.edg_core.spec"):
        before = [m.id for m in open_source(old).molecules()]
        again = [m.id for m in open_source(old).molecules()]
    notes = [r.getMessage() for r in caplog.records]
    assert notes == [f"deprecated spec {old!r} (a split goes after '?'): write {new!r}"]
    assert str(parse_spec(old)) == new
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edg.edg_core.spec"):
        assert [m.id for m in open_source(new).molecules()] == before == again
    assert not caplog.records  # the canonical spelling is silent


def test_one_spec_string_for_records_and_task():
    """``rmd17:ethanol?root=embedded&limit=4`` is 4 records to open_source and a task capped at 4 per split."""
    from edg.train.tasks import build_task, parse_dataset, validate_dataset
    for text, n_mols in (("rmd17:ethanol?root=embedded&limit=4", 4), ("qm9:gap?root=embedded&limit=5", 5)):
        assert len(list(open_source(text).molecules())) == n_mols
        validate_dataset(text)
        task = build_task(text)
        assert (len(task.train), task.name) == (n_mols, str(parse_spec(text).base))
        assert len(task.valid) <= n_mols and len(task.test) <= n_mols
    name, opts = parse_dataset("rmd17:ethanol?root=embedded&limit=4&energy_weight=0.1")
    assert name == "rmd17:ethanol" and opts == {"root": "embedded", "limit": 4, "energy_weight": 0.1}
    # the task's records are the reader's records of each split
    task = build_task("rmd17:ethanol?root=embedded")
    for split in ("train", "valid", "test"):
        assert task.__getattribute__(split).ids == \
            [m.id for m in open_source(f"rmd17:ethanol?root=embedded&split={split}").molecules()]
    qm9 = build_task("qm9:U0?root=embedded")
    assert qm9.train.ids == [m.id for m in open_source("qm9?root=embedded&split=train").molecules()]


def test_families_come_from_the_registry():
    from edg.cluster.pipeline import StudentsConfig
    from edg.train.paper_settings import FAMILIES, PAPER_TABLES, paper_settings
    assert families() == FAMILIES == ("qm9", "rmd17")
    assert family_of("rmd17:aspirin?root=x") == "rmd17" and family_of("qm9:U0") == "qm9"
    assert [t["family"] for t in PAPER_TABLES.values()] == ["qm9", "rmd17"]
    assert paper_settings("visnet", "rmd17:ethanol").fit["epochs"] == 3000
    assert paper_settings("schnet", "embedded:qm9").fit == {}  # no family: the training defaults apply
    with pytest.raises(ValueError, match="'md22:x' is not registered, so it has no paper family"):
        paper_settings("schnet", "md22:x")
    st = StudentsConfig(datasets=["qm9:U0", "rmd17:ethanol"], task={"rmd17": {"root": "embedded"}},
                        students={"qm9": ["egnn"], "rmd17": ["visnet"]}, conformations="embedded")
    assert st.task_for("rmd17:ethanol") == {"root": "embedded"} and st.task_for("qm9:U0") == {}
    assert st.students_for("qm9:U0") == ["egnn"] and st.students_for("rmd17:ethanol") == ["visnet"]
    with pytest.raises(SpecError, match="unknown rMD17 molecule 'etanol'"):
        StudentsConfig(dataset="rmd17:etanol")
    with pytest.raises(SpecError, match="spec 'qm9:trian'"):
        StudentsConfig(conformations=["qm9:trian"])


def test_entries_are_complete():
    for ds in DATASETS.values():
        assert get_dataset(ds.name) is ds and ds.description
        assert ds.default_split is None or ds.default_split in ds.splits
        if ds.task:
            cls = ds.task_class()
            assert callable(cls.from_spec) and callable(cls.check_spec)
            assert ds.metrics and ds.targets and ds.subset  # a family is optional (no paper table)
    assert isinstance(parse_spec("embedded"), DatasetSpec)


def test_edg_core_registry_does_not_import_torch_or_train():
    code = ("import sys; import edg.edg_core.datasets, edg.edg_core.spec, edg.edg_core.readers as r; "
            "r.open_source('rmd17:ethanol?root=embedded'); "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('edg.train')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_edg_data_datasets_and_split(tmp_path, capsys):
    from edg.cluster.cli import main
    assert main(["data", "datasets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("qm9[:<target>]", "rmd17:<molecule>", "embedded[:<part>]", "<path>"))
    assert main(["data", "split", "rmd17:ethanol?root=embedded", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as z:
        assert [len(z[k]) for k in ("train", "valid", "test")] == [16, 4, 4]
    assert main(["data", "split", "embedded", "--out", str(tmp_path / "e.npz")]) == 2
    assert "embedded has no fixed split" in capsys.readouterr().err


def test_every_command_reads_specs_through_the_one_grammar(tmp_path, capsys):
    """The same bad spec gets the same one-line message from every command that takes one, before any work."""
    from edg.cluster.cli import main
    bad = "rmd17:etanol?root=embedded"
    message = f"spec {bad!r}: unknown rMD17 molecule 'etanol' (did you mean 'ethanol'?)"
    out = str(tmp_path / "out")
    for argv in (["data", "info", bad], ["data", "convert", "--input", bad, "--out", out],
                 ["data", "split", bad, "--out", str(tmp_path / "s.npz")],
                 ["dft", "--input", bad, "--out", out], ["render", "--input", bad, "--out", out],
                 ["distill", "--dataset", bad, "--out", out, "--epochs", "1"],
                 ["benchmark", "--datasets", bad, "--out", out, "--epochs", "1"],
                 ["pipeline", "--config", str(Path(__file__).parent.parent / "configs" / "demo.yaml"),
                  "--input", bad, "--out", out]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"edg {argv[0]}: error: {message}"), (argv, err)
    assert not (tmp_path / "s.npz").exists()


def test_predict_reads_canonical_and_old_specs_alike(tmp_path):
    """edg predict on a trained run: the canonical and the old spelling of one split give the same file."""
    from edg.cluster.cli import main
    runs = tmp_path / "runs"
    assert main(["distill", "--dataset", "rmd17:ethanol?root=embedded&limit=4", "--epochs", "1", "--batch-size", "4",
                 "--out", str(runs)]) == 0
    run = next(runs.iterdir())
    for i, spec in enumerate(("rmd17:ethanol?split=test&root=embedded", "rmd17:ethanol:test?root=embedded")):
        assert main(["predict", "--model", str(run), "--input", spec, "--out", str(tmp_path / f"p{i}.extxyz")]) == 0
    assert (tmp_path / "p0.extxyz").read_text() == (tmp_path / "p1.extxyz").read_text() != ""

"""The paper's pretraining corpus through the pipeline (issue 26 items 1-3): an ``edbench:DIR`` input is rendered
from its cube files without DFT, a list of inputs is their union (cube sets and DFT inputs together), a
``pcqm4mv2`` file on Ray actors is read by the actors, each its own ``?part=k/N``, and configs/paper.yaml's inputs
parse. Data written here: EDBench folders in the set layout (tests/paperdata_fixtures.py) and small
PCQM4Mv2-style SDF files (RDKit conformers)."""
from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from edg.cluster.cli import main
from edg.edg_core.shards import read_samples, shard_keys
from paperdata_fixtures import SMALL, write_edbench, write_pcqm_sdf

DFT = {"backend": "cpu", "basis": "sto-3g", "basis_sulfur": "sto-3g", "grid_level": 1, "conv_tol": 1e-7}
WATER = "3\nid=water\nO 0.0 0.0 0.1173\nH 0.0 0.7572 -0.4692\nH 0.0 -0.7572 -0.4692\n"


def _config(tmp: Path, inputs, **over) -> Path:
    cfg = {"out": str(tmp / "run"), "input": inputs, "dft": DFT, "render": {"image_size": 16, "batch_size": 2},
           "stop_after": "render", "ray": {"enabled": False}, **over}
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ed_samples(run: Path) -> dict:
    return {s["meta"]["id"]: s for s in read_samples(run / "shards" / "ed", torch_tensors=False)}


def test_pipeline_renders_an_edbench_set_from_its_cubes_without_dft(tmp_path, capsys):
    ed5 = write_edbench(tmp_path / "ed_energy_5w")
    assert main(["pipeline", "--config", str(_config(tmp_path, f"edbench:{ed5}"))]) == 0
    out = capsys.readouterr().out
    assert "no DFT for edbench:" in out
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["dft"]["skipped"].startswith("no DFT: every input carries its densities")
    assert not (run / "dft" / "fields").exists()  # nothing computed, nothing written
    samples = _ed_samples(run)
    assert sorted(samples) == [f"edbench:ed_energy_5w:{i}" for i in range(len(SMALL))]
    for i, s in enumerate(sorted(samples)):
        sample = samples[s]
        assert sample["edimg"].shape[:2] == (6, 4) and sample["stimg"].shape[:2] == (4, 3)
        assert sample["labels"] == {f"E{k}": float((i + 1) * k) for k in range(1, 7)}  # ED5-EC's labels kept
    assert manifest["stages"]["render"]["done"] == len(SMALL)
    assert (run / "contact_sheet.png").exists()
    # a rerun finds both stages finished
    assert main(["pipeline", "--config", str(_config(tmp_path, f"edbench:{ed5}"))]) == 0
    assert "[render] finished before" in capsys.readouterr().out


def test_pipeline_input_list_is_the_union_of_cube_sets_and_dft_inputs(tmp_path):
    """Two EDBench sets (cubes) and an XYZ file (DFT): DFT runs for the file only; every molecule of the three
    inputs ends up with ED images in the one shard folder."""
    energy = write_edbench(tmp_path / "ed_energy_5w", SMALL[:2])
    pred = write_edbench(tmp_path / "ed_prediction_5w", SMALL[2:], set_name="ed_prediction_5w")
    (tmp_path / "water.xyz").write_text(WATER)
    inputs = [f"edbench:{energy}", f"edbench:{pred}", str(tmp_path / "water.xyz")]
    assert main(["pipeline", "--config", str(_config(tmp_path, inputs))]) == 0
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    dft = manifest["stages"]["dft"]
    assert dft["done"] == 1 and list(dft["inputs"]) == [str(tmp_path / "water.xyz")]
    assert dft["field_inputs"] == inputs[:2]
    assert [p.stem for p in (run / "dft" / "fields").rglob("*.npz")] == ["water"]
    samples = _ed_samples(run)
    assert set(samples) == {"edbench:ed_energy_5w:0", "edbench:ed_energy_5w:1", "edbench:ed_prediction_5w:0",
                            "water"}
    assert -76.0 < samples["water"]["labels"]["E6"] < -75.0  # our B3LYP/STO-3G energy, Hartree
    assert set(samples["edbench:ed_prediction_5w:0"]["labels"]) == {f"label_{i}" for i in range(6)}  # unnamed
    assert all(s["edimg"].shape[:2] == (6, 4) for s in samples.values())


def test_an_empty_or_bad_input_list_is_refused_before_any_stage(tmp_path, capsys):
    assert main(["pipeline", "--config", str(_config(tmp_path, []))]) == 2
    assert "input is an empty list" in capsys.readouterr().err
    assert main(["pipeline", "--config", str(_config(tmp_path, ["embedded:qm9", "edbench"]))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "edbench" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["paper.yaml", "paper-qm9.yaml"])
def test_paper_configs_inputs_parse(name, tmp_path):
    """configs/paper.yaml pretrains on the six public ED5 sets (cubes, no DFT) plus PCQM4Mv2 through our DFT;
    configs/paper-qm9.yaml on QM9 through our DFT; both run three seeds."""
    from edg.cluster.pipeline import Pipeline, carries_fields, input_specs, load_pipeline_config
    from edg.edg_core.datasets import resolve
    root = Path(__file__).resolve().parent.parent
    cfg = load_pipeline_config(root / "configs" / name, {"out": str(tmp_path / "run"), "ray": {"enabled": False}})
    specs = [resolve(s) for s in input_specs(cfg.input)]
    assert len(cfg.students.seeds) == 3
    pipeline = Pipeline(cfg)
    if name == "paper.yaml":
        assert [s.name for s in specs] == ["edbench"] * 6 + ["pcqm4mv2"]
        assert {s.subset.rsplit("/", 1)[-1] for s in specs[:6]} == {
            "ed_energy_5w", "ed_homo_lumo_5w", "ed_multipole_moments_5w", "ed_open_shell_5w", "ed_retrieval_5w",
            "ed_prediction_5w"}
        assert pipeline.dft_inputs() == [str(specs[6])] and all(carries_fields(str(s)) for s in specs[:6])
    else:
        assert [str(s) for s in specs] == ["qm9?split=train"] and pipeline.field_inputs() == []


# ---------------------------------------------------------------- PCQM4Mv2 parts read by the actors
SMILES = ["O", "N", "C", "F", "CO", "CC", "OO", "C=O", "N#N", "CN", "NO", "C#C"]


@pytest.fixture(scope="module")
def pcqm(tmp_path_factory):
    d = tmp_path_factory.mktemp("pcqm")
    write_pcqm_sdf(d / "pcqm4m-v2-train.sdf", SMILES)
    with gzip.open(d / "data.csv.gz", "wt") as f:
        f.write("idx,smiles,homolumogap\n" + "".join(f"{i},{s},{1.0 + i}\n" for i, s in enumerate(SMILES)))
    return d / "pcqm4m-v2-train.sdf"


def test_parts_cover_the_spec_once_with_split_limit_and_skips(pcqm, tmp_path):
    """The planned parts read (in-process, by PartWorker) exactly what the whole spec reads; a limit is spread
    over them; each part is handed the done keys of its own range."""
    import numpy as np
    from edg.cluster.parts import PartItem, PartWorker, split_skip
    from edg.cluster.stages import ConvertWorker
    from edg.edg_core.readers import open_source
    from edg.edg_core.readers.pcqm4mv2 import plan_parts
    from edg.edg_core.stage import item_key, item_record
    spec = f"pcqm4mv2:{pcqm}"
    parts = plan_parts(spec, records_per_part=5, min_parts=4)  # 12 records: max(4, ceil(12 / 5)) = 4 byte ranges
    assert [p.spec for p in parts] == [f"{spec}?part={k}/4" for k in range(4)]
    assert [p.first for p in parts] == [0] + [p.stop for p in parts[:-1]] and parts[-1].stop == len(SMILES)
    assert [p.count for p in parts] == [p.stop - p.first for p in parts]
    worker = PartWorker(ConvertWorker, {}, 2, "convert", item_key, item_record)
    whole = [m.id for m in open_source(spec).molecules()]
    got = [json.loads(s["meta.json"])["id"] for s in worker.process_batch([PartItem(p) for p in parts]).samples]
    assert got == whole == [f"pcqm4mv2:{i}" for i in range(len(SMILES))]

    limited = plan_parts(f"{spec}?limit=5", records_per_part=5, min_parts=4)  # the first 5 records, in order
    assert sum(p.count for p in limited) == 5 and f"limit={limited[-1].count}&part=" in limited[-1].spec
    assert [m.id for p in limited for m in p.source().molecules()] == whole[:5]

    train = [1, 2, 7, 11]
    np.savez(tmp_path / "split.npz", train=np.array(train), valid=np.array([12]))
    split = plan_parts(f"{spec}?split=train&split_dict={tmp_path / 'split.npz'}", 5, 4)
    assert [p.count for p in split] == [n for n in (sum(p.first <= i < p.stop for i in train) for p in parts) if n]
    assert [m.id for p in split for m in p.source().molecules()] == [f"pcqm4mv2:{i}" for i in train]

    keys = {f"pcqm4mv2:{parts[0].first}", f"pcqm4mv2:{parts[2].stop - 1}", "qm9:3", "pcqm4mv2:99"}
    skips = split_skip(parts, keys)
    assert skips == [frozenset({f"pcqm4mv2:{parts[0].first}"}), frozenset(),
                     frozenset({f"pcqm4mv2:{parts[2].stop - 1}"}), frozenset()]
    res = worker.process_batch([PartItem(parts[0], skips[0])])
    assert [json.loads(s["meta.json"])["id"] for s in res.samples] == whole[parts[0].first + 1:parts[0].stop]


def test_a_part_finds_its_labels_in_the_csv_with_and_without_gaps(pcqm, tmp_path):
    """A part skips the CSV rows before its first record by counting lines (PCQM4Mv2's idx is the row number);
    a CSV whose idx has gaps is read from the top instead, with the same labels."""
    from edg.edg_core.readers.pcqm4mv2 import plan_parts
    for name, rows in (("whole", range(len(SMILES))), ("gaps", [i for i in range(len(SMILES)) if i != 1])):
        csv_path = tmp_path / f"{name}.csv"
        csv_path.write_text("idx,smiles,homolumogap\n" + "".join(f"{i},{SMILES[i]},{1.0 + i}\n" for i in rows))
        parts = plan_parts(f"pcqm4mv2:{pcqm}?csv={csv_path}", 5, 4)
        labels = {m.id: m.labels.get("homolumogap") for p in parts for m in p.source().molecules()}
        assert labels == {f"pcqm4mv2:{i}": (1.0 + i if i in rows else None) for i in range(len(SMILES))}


@pytest.fixture(scope="module")
def ray_head():
    ray = pytest.importorskip("ray")
    from edg.cluster.runtime import ray_session
    tmp = tempfile.mkdtemp(prefix="edgray")  # short: Ray's socket paths must stay under 108 characters
    try:
        with ray_session("local", temp_dir=tmp, num_cpus=2):
            yield ray
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def driver_reads_no_record(monkeypatch):
    """In this (the driver's) process parsing a PCQM4Mv2 record fails; the actors' processes import the reader
    afresh and parse normally. A stage that still read records in the driver would fail every one."""
    import edg.edg_core.readers.pcqm4mv2 as reader

    def refuse(*args, **kwargs):
        raise AssertionError("the driver parsed a PCQM4Mv2 record")
    monkeypatch.setattr(reader, "_molecule", refuse)


@pytest.mark.ray
def test_edg_data_convert_on_two_actors_reads_the_sdf_in_parts_and_resumes(pcqm, tmp_path, ray_head,
                                                                          driver_reads_no_record, capsys):
    out = tmp_path / "shards"
    args = ["data", "convert", "--input", f"pcqm4mv2:{pcqm}", "--out", str(out), "--actors", "2",
            "--cpus-per-actor", "1", "--maxcount", "5"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"parts of pcqm4mv2:{pcqm} read by 2 actors (12 records" in printed
    assert "convert: done 12, skipped 0, failed 0" in printed
    samples = {s["meta"]["id"]: s for s in read_samples(out, torch_tensors=False)}
    assert sorted(samples, key=lambda i: int(i.split(":")[1])) == [f"pcqm4mv2:{i}" for i in range(len(SMILES))]
    assert all(samples[f"pcqm4mv2:{i}"]["labels"] == {"homolumogap": 1.0 + i} for i in range(len(SMILES)))
    assert all(samples[f"pcqm4mv2:{i}"]["meta"]["smiles"] == s for i, s in enumerate(SMILES))
    assert main(args) == 0  # a rerun: every record done, each part told so
    assert "convert: done 0, skipped 12, failed 0" in capsys.readouterr().out
    assert len(shard_keys(out)) == len(SMILES)


@pytest.mark.ray
def test_dft_stage_on_two_actors_reads_its_own_parts(pcqm, tmp_path, ray_head, driver_reads_no_record):
    """The DFT stage's actor pool (run_dft, as edg dft and the pipeline's DFT step call it) on a 4-record file:
    each actor reads its own parts; one result file per molecule, the driver parsing none."""
    from edg.cluster.stages import Workers, run_dft
    from edg.dft.config import DFTConfig
    from edg.dft.worker import done_keys
    from edg.edg_core.readers import open_source
    small = pcqm.parent / "small.sdf"
    write_pcqm_sdf(small, SMILES[:4])
    src = open_source(f"pcqm4mv2:{small}")
    s = run_dft(src, tmp_path / "dft", DFTConfig(**DFT, fields=False), Workers(actors=2, cpus=1), total=4)
    assert (s.done, s.failed, s.actors) == (4, 0, 2)
    assert done_keys(tmp_path / "dft") == {f"pcqm4mv2:{i}" for i in range(4)}


"""The one stage driver (cluster.engine.run_stage) in this process: batching, typed failures, one manifest entry
per failed key across resumes, compaction when a retried key succeeds, and the extract stage over damaged shards."""
from __future__ import annotations

import json

import numpy as np
from edg.cluster.engine import Shards, Stage, Workers, run_stage
from edg.edg_core.errors import InvalidRecord
from edg.edg_core.io import read_jsonl
from edg.edg_core.molecule import Molecule
from edg.edg_core.shards import encode_sample, read_samples, sample_key
from edg.edg_core.stage import BatchResult, Failure


class Squares:
    """A stage worker: a molecule's sample, a Failure for ids listed in ``refuse``, and a crash (a worker bug)
    for a batch holding an id in ``crash``."""

    def __init__(self, refuse=(), crash=()):
        self.refuse, self.crash = set(refuse), set(crash)

    def process_batch(self, mols):
        if any(m.id in self.crash for m in mols):
            raise RuntimeError("worker bug")
        res = BatchResult()
        for m in mols:
            if m.id in self.refuse:
                res.failures.append(Failure.of(m.id, "squares", "refused"))
            else:
                res.samples.append(encode_sample(m))
        return res


def mols(n):
    return [Molecule(z=[1, 1], pos=[[0, 0, 0], [0, 0, 0.7 + 0.01 * i]], id=f"m{i}") for i in range(n)]


def stage(**args):
    return Stage("squares", Squares, args, Shards("s", maxcount=4), key=lambda m: sample_key(m.id),
                 record=lambda m: m.id, batch_size=3)


def test_failures_are_typed_isolated_and_recorded_once_across_resumes(tmp_path):
    items = mols(9) + [InvalidRecord("in.xyz:frame 9", "unknown element 'Zz'")]
    s = run_stage(stage(refuse={"m1"}, crash={"m7"}), items, tmp_path, Workers())
    # m6..m8 share a batch with the crash: the bug costs that batch only
    assert (s.done, s.failed, s.skipped) == (5, 5, 0)
    entries = read_jsonl(tmp_path / "failures.jsonl")
    by = {e["record"]: e for e in entries}
    assert by["m1"]["reason"] == "refused" and by["m7"]["reason"] == "error: RuntimeError: worker bug"
    assert by["in.xyz:frame 9"]["stage"] == "read" and len(entries) == 5
    assert sorted(d["meta"]["id"] for d in read_samples(tmp_path)) == ["m0", "m2", "m3", "m4", "m5"]
    again = run_stage(stage(refuse={"m1"}, crash={"m7"}), items, tmp_path, Workers())
    assert (again.done, again.failed, again.skipped) == (0, 0, 9)  # failed keys are skipped too
    for _ in range(2):  # retried twice: batches [m1 m6 m7] (crash) and [m8] (now alone: succeeds)
        run_stage(stage(refuse={"m1"}, crash={"m7"}), items, tmp_path, Workers(), retry_failed=True)
    # one entry per key still failing; m8 succeeded on the first retry and left the manifest
    assert sorted(e["record"] for e in read_jsonl(tmp_path / "failures.jsonl")) == \
        ["in.xyz:frame 9", "m1", "m6", "m7"]
    fixed = run_stage(stage(), items, tmp_path, Workers(), retry_failed=True)  # the bug is fixed
    assert (fixed.done, fixed.failed) == (3, 1)  # m1, m6, m7 now succeed; the unreadable record stays
    assert [e["record"] for e in read_jsonl(tmp_path / "failures.jsonl")] == ["in.xyz:frame 9"]
    assert len(list(read_samples(tmp_path))) == 9 and json.loads((tmp_path / "progress.json").read_text())


def test_extract_keeps_good_samples_around_a_damaged_one(tmp_path):
    import torch
    from edg.cluster.stages import run_extract
    from edg.train.data.shards import write_synthetic_shards
    from edg.train.models.imageed import ImageED, imageed_preset
    write_synthetic_shards(tmp_path / "img", size=32, maxcount=100, limit=6)
    # damage one sample's ED images: a copy of the shards with that member's bytes cut
    from edg.edg_core.shards import ShardWriter, iter_shard, shard_paths
    with ShardWriter(tmp_path / "bad", "shard") as w:
        for raw in (r for p in shard_paths(tmp_path / "img") for r in iter_shard(p)):
            enc = next(k for k in raw if k.startswith("edimg"))
            if raw["__key__"] == "qm9:3":
                raw[enc] = raw[enc][:50]
            w.write({k: v for k, v in raw.items() if k == "__key__" or not k.startswith("__")})
    torch.manual_seed(0)
    s = run_extract("imageed", ImageED(imageed_preset("tiny")), tmp_path / "bad", tmp_path / "fu.npz", batch_size=4)
    assert (s.done, s.failed) == (5, 1)
    z = np.load(tmp_path / "fu.npz")
    assert "qm9:3" not in list(z["ids"]) and z["fu"].shape == (5, 64)
    (fail,) = read_jsonl(tmp_path / "fu.npz.failures.jsonl")
    assert fail["key"] == "qm9:3" and fail["stage"] == "extract" and "cannot be decoded" in fail["reason"]
    assert "shard-000000.tar:qm9:3" in fail["record"]


def test_pipeline_student_images_cover_every_conformation_spec(tmp_path):
    """The paper config lists one conformation spec per data set: structure images are made for all of them."""
    from edg.cluster.pipeline import Pipeline, load_pipeline_config
    cfg = load_pipeline_config(None, {"out": str(tmp_path / "run"), "render": {"image_size": 16},
                                      "students": {"conformations": ["embedded:qm9?limit=3",
                                                                     "embedded:rmd17?limit=2"]}})
    summary = Pipeline(cfg).student_images()
    assert (summary["done"], summary["failed"], summary["total"]) == (5, 0, 5)
    ids = [d["meta"]["id"] for d in read_samples(tmp_path / "run" / "shards" / "student")]
    assert len(ids) == 5 and sum(i.startswith("qm9:") for i in ids) == 3


def test_data_info_counts_a_damaged_sample_and_goes_on(tmp_path, capsys):
    from edg.cluster.cli import main
    from edg.edg_core.shards import ShardWriter
    with ShardWriter(tmp_path / "s", "s") as w:
        for i, m in enumerate(mols(4)):
            sample = encode_sample(m)
            if i == 1:
                del sample["meta.json"]  # a sample without its metadata
            w.write(sample)
    assert main(["data", "info", str(tmp_path / "s"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["molecules"], info["invalid"]) == (3, 1) and "no meta.json" in info["first_invalid"][0]


def test_fused_stage_without_fields_makes_structure_images_instead_of_stopping(tmp_path):
    """`dft.fields: false` leaves no grids for the DLPack hand-off: the fused stage still writes the DFT
    scalars and a structure-image sample per molecule."""
    from edg.cluster.stages import run_fused
    from edg.dft.config import DFTConfig
    from edg.dft.worker import done_keys
    from edg.edg_core.readers import open_source
    from edg.render.config import RenderConfig
    mols = [m for m in open_source("embedded:qm9").molecules() if m.formula in ("H2O", "CH4")]
    s = run_fused(mols, tmp_path / "shards", tmp_path / "dft", DFTConfig(basis="sto-3g", fields=False),
                  RenderConfig(image_size=16), Workers())
    assert (s.done, s.failed) == (2, 0)
    samples = list(read_samples(tmp_path / "shards"))
    assert all("edimg" not in d and d["stimg"].shape == (4, 3, 16, 16) for d in samples)
    assert {d["meta"]["labels"]["E6"] < 0 for d in samples} == {True}
    assert done_keys(tmp_path / "dft") == {sample_key(m.id) for m in mols}


def test_a_shard_stage_at_a_url_resumes_from_the_key_indexes_and_its_mirror_leaves_shards_alone(tmp_path,
                                                                                                 monkeypatch):
    """Out is a ``local://`` URL (the object-store code path): each shard goes up with its key index, the
    resume reads the indexes instead of the tar headers, and the driver's mirror never fetches either."""
    import edg.edg_core.shards as shards
    from edg.edg_core.storage import Mirror
    bucket = tmp_path / "bucket" / "out"
    url = f"local://{bucket}"
    first = run_stage(stage(refuse={"m2"}), mols(10), url)
    assert (first.done, first.failed) == (9, 1)
    shard_files = [f"s-00000{i}.tar{x}" for i in range(3) for x in ("", ".keys")]
    assert sorted(p.name for p in bucket.iterdir()) == ["edg-run.json", "failures.jsonl", "progress.json",
                                                        *shard_files]
    opened, real = [], shards.open_read
    monkeypatch.setattr(shards, "open_read", lambda p: opened.append(str(p)) or real(p))
    again = run_stage(stage(), mols(12), url)
    assert (again.done, again.skipped, again.failed) == (2, 10, 0)
    assert len(opened) == 3 and all(p.endswith(".tar.keys") for p in opened)  # no tar header read
    assert [s["meta"]["id"] for s in read_samples(url, torch_tensors=False)] == \
        [f"m{i}" for i in range(12) if i != 2]
    wc = tmp_path / "wc"
    assert Mirror(url, local=wc, exclude=Shards.bulky).pull() == 3
    assert sorted(p.name for p in wc.iterdir()) == [".edg-mirror.json", "edg-run.json", "failures.jsonl",
                                                    "progress.json"]


def test_failure_manifest_at_a_url_is_uploaded_at_most_every_interval_and_at_the_end(tmp_path):
    """With 1 % failures at 2 M molecules, uploading the manifest after every batch would send ~26 GB: the log
    uploads it only once ``upload_every_s`` has passed since the last upload, and always when compacted."""
    from edg.cluster.engine import FailureLog
    from edg.edg_core.storage import Mirror
    bucket = tmp_path / "bucket"
    remote = bucket / "failures.jsonl"

    def failures(i):
        return [Failure.of(f"m{i}", "dft", "SCF not converged", f"k{i}")]

    slow = FailureLog(Mirror(f"local://{bucket}", local=tmp_path / "wc1"), upload_every_s=3600)
    for i in range(5):
        assert slow.add(failures(i)) == 1
    assert not remote.exists()  # five batches with failures, no upload yet
    slow.compact(succeeded={"k1"})
    assert [e["key"] for e in read_jsonl(remote)] == ["k0", "k2", "k3", "k4"]
    remote.unlink()
    eager = FailureLog(Mirror(f"local://{bucket}", local=tmp_path / "wc2"), upload_every_s=0)
    for i in range(3):
        eager.add(failures(i))
        assert [e["key"] for e in read_jsonl(remote)] == [f"k{j}" for j in range(i + 1)]


class Counting(Squares):
    """Squares that counts the molecules it was given, per id, across runs."""
    calls: dict = {}

    def process_batch(self, mols):
        for m in mols:
            Counting.calls[m.id] = Counting.calls.get(m.id, 0) + 1
        return super().process_batch(mols)


def test_a_repeated_key_is_one_read_failure_naming_both_and_never_processed_twice(tmp_path):
    """The driver owns the keys: a plain list (no reader in between) with an id twice gives one result and one
    ``read`` failure naming the repeat and the first record; a rerun processes neither again."""
    Counting.calls = {}
    a, b = mols(2)
    twin = Molecule(z=[1, 1], pos=[[0, 0, 0], [0, 0, 0.9]], id="m0")  # other positions, the same id
    counting = Stage("squares", Counting, {}, Shards("s", maxcount=4), key=lambda m: sample_key(m.id),
                     record=lambda m: m.id, batch_size=3)
    items = [a, b, twin]
    s = run_stage(counting, items, tmp_path, Workers())
    assert (s.done, s.failed) == (2, 1) and Counting.calls == {"m0": 1, "m1": 1}
    [entry] = read_jsonl(tmp_path / "failures.jsonl")
    assert entry["stage"] == "read" and entry["record"] == "m0#record2"
    assert "record 2 repeats the id 'm0' of record 0" in entry["reason"]
    assert [d["meta"]["id"] for d in read_samples(tmp_path)].count("m0") == 1
    again = run_stage(counting, items, tmp_path, Workers())
    assert (again.done, again.failed, again.skipped) == (0, 0, 2) and Counting.calls == {"m0": 1, "m1": 1}
    assert len(read_jsonl(tmp_path / "failures.jsonl")) == 1

    # records that differ but share a key (e.g. two result files with one stem): both are named
    by_stem = Stage("squares", Counting, {}, Shards("s", maxcount=4), key=lambda m: m.id.split("@")[0],
                    record=lambda m: m.id)
    twins = [Molecule(z=[1, 1], pos=[[0, 0, 0], [0, 0, 0.7]], id=f"x@{n}") for n in (1, 2)]
    s = run_stage(by_stem, twins, tmp_path / "stem", Workers())
    assert (s.done, s.failed) == (1, 1) and Counting.calls["x@1"] == 1 and "x@2" not in Counting.calls
    [entry] = read_jsonl(tmp_path / "stem" / "failures.jsonl")
    assert "'x@2'" in entry["reason"] and "'x@1'" in entry["reason"] and "record 1" in entry["reason"]
    assert "of record 0" in entry["reason"] and entry["record"] == "x@2#record1"


def test_a_source_leaves_repeated_ids_to_the_driver(tmp_path):
    """A Source yields every record it reads; the refusal of the repeat, with the source named, is the
    driver's."""
    from edg.edg_core.readers import open_source
    frame = "2\nid=dup\nH 0 0 0\nH 0 0 0.74\n"
    (tmp_path / "a.xyz").write_text(frame * 2)
    src = open_source(str(tmp_path / "a.xyz"))
    assert [m.id for m in src] == ["dup", "dup"]
    s = run_stage(stage(), src, tmp_path / "out", Workers())
    assert (s.done, s.failed) == (1, 1)
    [entry] = read_jsonl(tmp_path / "out" / "failures.jsonl")
    assert entry["reason"] == f"{tmp_path / 'a.xyz'}: record 1 repeats the id 'dup' of record 0; ids must be unique"

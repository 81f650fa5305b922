"""DFT worker and `edg dft` (in-process): result files, failure manifest, resume, fields storage, hand-off.

Mechanics tests use STO-3G and a 0.8-bohr grid to stay fast; the paper settings are tested in test_dft_scf.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from edg.cluster.stages import Workers, run_dft
from edg.dft.config import DFTConfig
from edg.dft.handoff import cupy_to_torch
from edg.dft.worker import DFTWorker, done_keys, load_result, result_path
from edg.edg_core.errors import InvalidRecord
from edg.edg_core.io import read_jsonl
from edg.edg_core.molecule import Molecule
from edg.edg_core.shards import sample_key

FAST = dict(backend="cpu", basis="sto-3g", grid_spacing=0.8)
H2 = Molecule(z=[1, 1], pos=[[0, 0, 0], [0, 0, 0.74]], id="h2/a")  # '/' is sanitised in the key
H2_KEY = sample_key("h2/a")  # h2_a~<hash of the id>: one key per id
WATER = Molecule(z=[8, 1, 1], pos=[[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]],
                 id="water")
COLLAPSED = Molecule(z=[8, 1], pos=[[0, 0, 0], [0, 0, 0.01]], id="collapsed")


def result_of(status: dict):
    """The ``DFTResult`` of a ``process`` status, after checking the molecule did not fail (showing why)."""
    assert status["status"] == "done", f"{status['id']}: {status.get('reason')}"
    return status["result"]


def test_result_file_round_trip(tmp_path):
    w = DFTWorker(DFTConfig(**FAST, field_dtype="float16"), out=tmp_path)
    st = w.process(WATER)
    assert st["status"] == "done"
    r = load_result(result_path(tmp_path, "water"))
    assert r.id == "water" and r.converged and r.method.startswith("RKS b3lyp/sto-3g")
    assert set(r.energies) == {f"E{i}" for i in range(1, 7)} and r.energies["E6"] == pytest.approx(st["E6"])
    assert r.homo < r.lumo and r.dipole.shape == (3,)
    assert r.ed.shape == r.esp.shape == r.grid.shape and r.ed.dtype == np.float32
    assert r.grid.spacing == (0.8, 0.8, 0.8)
    with np.load(result_path(tmp_path, "water")) as f:
        assert f["ed"].dtype == np.float16  # compact storage
    # the stored grid is the same computation as in memory (up to float16 rounding)
    mem = result_of(DFTWorker(DFTConfig(**FAST), out=None).process(WATER))
    np.testing.assert_allclose(r.ed, mem.ed, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(r.esp, mem.esp, rtol=1e-3, atol=1e-3)
    assert (r.ed >= 0).all() and r.ed.max() > 1  # peaked near the oxygen nucleus
    np.testing.assert_allclose(r.pos, WATER.pos)
    assert {"scf_s", "ed_s", "esp_s"} <= set(r.timings)


def failed_keys(out) -> set[str]:
    return {e["key"] for e in read_jsonl(out / "failures.jsonl")}


def test_failures_go_to_the_manifest_and_the_run_continues(tmp_path):
    unreadable = InvalidRecord("input.xyz:frame 3", "unknown element 'Xx'")
    s = run_dft([H2, COLLAPSED, unreadable, WATER], tmp_path, DFTConfig(**FAST, fields=False), Workers())
    assert (s.done, s.failed, s.skipped) == (2, 2, 0)
    entries = read_jsonl(tmp_path / "failures.jsonl")
    by_record = {e["record"]: e for e in entries}
    assert by_record["collapsed"]["stage"] == "dft" and "bad geometry" in by_record["collapsed"]["reason"]
    assert by_record["input.xyz:frame 3"]["stage"] == "read"
    assert done_keys(tmp_path) == {H2_KEY, "water"}
    r = load_result(result_path(tmp_path, H2_KEY))
    assert r.id == "h2/a" and r.grid is None and r.ed is None


def test_a_failed_molecule_is_one_failure_in_process_and_process_batch():
    """``process`` builds a failed molecule's ``Failure`` once (status ``failure``; ``id``/``key``/``stage``/
    ``reason`` are its fields) and ``process_batch`` hands that very object to the driver. A worker that built a
    second one from the status dict could disagree with it (a read failure recorded as stage ``dft``, the key
    recomputed from the record, a multi-line reason kept whole in one and cut in the other)."""
    from edg.edg_core.stage import Failure
    w = DFTWorker(DFTConfig(**FAST, max_atoms=2))
    unreadable = InvalidRecord("input.xyz:frame 3", "unknown element 'Xx'\nsecond line")
    statuses = [w.process(m) for m in (unreadable, WATER)]
    assert [st["failure"] for st in statuses] == [
        Failure("input.xyz:frame 3", sample_key("input.xyz:frame 3"), "read", "unknown element 'Xx'"),
        Failure("water", "water", "dft", "invalid input: too large for the DFT budget: 3 atoms > max_atoms 2")]
    for st in statuses:
        f = st["failure"]
        assert st["status"] == "failed" and (st["id"], st["key"], st["stage"], st["reason"]) == (
            f.record, f.key, f.stage, f.reason)
    res = w.process_batch([unreadable, WATER])
    assert res.failures == [st["failure"] for st in statuses] and res.done == [] and res.samples == []


def test_timeout_and_non_convergence_are_recorded(tmp_path):
    s = run_dft([WATER], tmp_path, DFTConfig(**FAST, timeout_s=1e-6), Workers())
    s2 = run_dft([H2], tmp_path, DFTConfig(**FAST, max_cycle=1, retries=False), Workers())
    assert (s.failed, s2.failed, s.done + s2.done) == (1, 1, 0)
    reasons = {e["record"]: e["reason"] for e in read_jsonl(tmp_path / "failures.jsonl")}
    assert reasons["water"].startswith("timeout")
    assert reasons["h2/a"].startswith("not converged") and "diis" in reasons["h2/a"]
    assert failed_keys(tmp_path) == {"water", H2_KEY}


def test_resume_skips_finished_and_failed_molecules(tmp_path):
    cfg = DFTConfig(**FAST, fields=False)
    first = run_dft([H2, COLLAPSED], tmp_path, cfg, Workers())
    assert (first.done, first.failed) == (1, 1)
    stamp = result_path(tmp_path, H2_KEY).stat().st_mtime_ns
    again = run_dft([H2, COLLAPSED, WATER], tmp_path, cfg, Workers())
    assert (again.done, again.skipped, again.failed) == (1, 2, 0)
    assert result_path(tmp_path, H2_KEY).stat().st_mtime_ns == stamp  # not recomputed
    for _ in range(2):  # retried twice, failed twice: still one manifest entry
        retried = run_dft([COLLAPSED], tmp_path, cfg, Workers(), retry_failed=True)
        assert (retried.done, retried.failed, retried.skipped) == (0, 1, 0)
    assert [e["key"] for e in read_jsonl(tmp_path / "failures.jsonl")] == ["collapsed"]


def test_results_fan_out_into_prefix_folders_and_flat_results_of_older_runs_still_resume(tmp_path):
    from edg.dft.worker import find_result, result_files, result_rel
    rels = {result_rel(f"mol{i}") for i in range(2000)}
    folders = {r.split("/")[1] for r in rels}
    assert len(rels) == 2000 and len(folders) == 256  # ~8 files per folder here, ~8k at 2 M molecules
    assert all(re.fullmatch("[0-9a-f]{2}", f) for f in folders)
    assert result_rel("a") == f"fields/{hashlib.sha1(b'a').hexdigest()[:2]}/a.npz"  # stable across processes
    cfg = DFTConfig(**FAST, fields=False)
    run_dft([H2], tmp_path, cfg, Workers())
    nested = result_path(tmp_path, H2_KEY)
    assert nested.parent.parent == tmp_path / "fields" and nested.exists()
    flat = tmp_path / "fields" / f"{H2_KEY}.npz"  # the layout of runs before the prefix folders
    nested.rename(flat)
    assert done_keys(tmp_path) == {H2_KEY} and find_result(tmp_path, H2_KEY) == flat
    again = run_dft([H2, WATER], tmp_path, cfg, Workers())
    assert (again.done, again.skipped) == (1, 1) and not nested.exists()  # the flat result is not recomputed
    assert sorted(Path(p).name for p in result_files(tmp_path)) == [f"{H2_KEY}.npz", "water.npz"]
    assert find_result(tmp_path, "water") == result_path(tmp_path, "water") and find_result(tmp_path, "x") is None
    # the resume scan's cheap whole-file check (the zip's end record and its directory offset) refuses a file
    # that is not a whole .npz: garbage, or one whose last 22 bytes were cut (its end record gone)
    junk = result_path(tmp_path, "junk")
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"PK\x05\x06" + bytes(200))
    whole = result_path(tmp_path, "water").read_bytes()
    result_path(tmp_path, "cut").parent.mkdir(parents=True, exist_ok=True)
    result_path(tmp_path, "cut").write_bytes(whole[:-22])
    assert done_keys(tmp_path) == {H2_KEY, "water"}


def test_band_mode_records_its_exact_fraction(tmp_path):
    r = result_of(DFTWorker(DFTConfig(**FAST, esp_mode="band"), out=None).process(WATER))
    full = result_of(DFTWorker(DFTConfig(**FAST), out=None).process(WATER))
    assert 0 < r.esp_exact_fraction < 1 and full.esp_exact_fraction == 1.0
    from edg.dft.esp_band import band_mask
    m = band_mask(r.ed)
    np.testing.assert_allclose(r.esp[m], full.esp[m], rtol=1e-10, atol=1e-10)


def test_cupy_to_torch_accepts_host_arrays_and_rejects_others():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = cupy_to_torch(a)
    assert tuple(t.shape) == (2, 3) and float(t[1, 2]) == 5.0
    with pytest.raises(TypeError):
        cupy_to_torch([1, 2, 3])


@pytest.mark.gpu
def test_gpu_fields_match_cpu_and_stay_on_device():
    cupy = pytest.importorskip("cupy")
    pytest.importorskip("gpu4pyscf")
    cfg = DFTConfig(backend="gpu", grid_spacing=0.4)
    gpu = result_of(DFTWorker(cfg, out=None, keep_on_gpu=True).process(WATER))
    cpu = result_of(DFTWorker(DFTConfig(backend="cpu", density_fit=True), out=None).process(WATER))
    assert isinstance(gpu.ed, cupy.ndarray)
    t = cupy_to_torch(gpu.esp)
    assert t.is_cuda and t.data_ptr() == gpu.esp.data.ptr  # no copy
    assert abs(gpu.energies["E6"] - cpu.energies["E6"]) < 1e-5
    np.testing.assert_allclose(gpu.ed.get(), cpu.ed, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(gpu.esp.get(), cpu.esp, atol=1e-4, rtol=1e-4)


def test_cli_local_run_and_resume(tmp_path, capsys):
    from edg.cluster.cli import main
    out = tmp_path / "run"
    argv = ["dft", "--input", "embedded:qm9?limit=2", "--out", str(out), "--actors", "0", "--basis", "sto-3g",
            "--grid-level", "1", "--grid-spacing", "1.0", "--save-cubes", "--esp-band", "0.02", "0.2"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "done 2, skipped 0, failed 0" in text
    assert done_keys(out) == {"qm9:1", "qm9:2"} and result_path(out, "qm9:1").exists()
    assert (out / "cubes" / "qm9:1.esp.cube").exists()
    cfg = (out / "dft_config.yaml").read_text()
    assert "basis: sto-3g" in cfg and "esp_band:\n- 0.02\n- 0.2" in cfg
    assert main(argv) == 0
    assert "done 0, skipped 2, failed 0" in capsys.readouterr().out
    meta = json.loads(str(np.load(result_path(out, "qm9:1"))["meta"]))
    assert meta["id"] == "qm9:1" and meta["method"].startswith("RKS b3lyp/sto-3g")


def test_result_goes_into_a_shard_sample(tmp_path):
    from edg.dft.result import result_sample
    from edg.edg_core.shards import ShardWriter, read_samples
    mol = Molecule(z=WATER.z, pos=WATER.pos, id="water", labels={"U0": -76.4})
    r = result_of(DFTWorker(DFTConfig(**FAST), out=None).process(mol))
    with ShardWriter(tmp_path, "dft") as w:
        w.write(result_sample(r, mol))
    (d,) = list(read_samples(tmp_path, torch_tensors=False))
    assert d["grid"] == r.grid and d["ed"].shape == r.grid.shape
    np.testing.assert_allclose(d["esp"], r.esp, rtol=1e-3, atol=1e-3)  # float16 in the shard
    assert d["labels"]["U0"] == -76.4 and d["labels"]["E6"] == pytest.approx(r.energies["E6"])
    np.testing.assert_allclose(d["labels"]["dft_dipole"], r.dipole)


def test_out_of_memory_is_recognised_on_host_and_device():
    from edg.dft.backend import is_out_of_memory

    class OutOfMemoryError(Exception):  # the name CuPy's device allocator raises
        pass
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(OutOfMemoryError("Out of memory allocating 1,073,741,824 bytes"))
    assert not is_out_of_memory(ValueError("memory layout"))


def test_edg_dft_reproduces_plain_pyscf_cartesian_b3lyp_631gss(tmp_path):
    """`edg dft` with its defaults on a QM9 molecule (water, qm9:3) gives plain PySCF's Cartesian-d
    B3LYP/6-31G** energy, and the convention is written into the result."""
    from edg.cluster.cli import main
    from edg.edg_core.readers import open_source
    from pyscf import dft, gto
    out = tmp_path / "dft"
    argv = ["dft", "--input", "embedded:qm9?limit=3", "--out", str(out), "--actors", "0", "--no-fields"]
    assert main(argv) == 0
    mol = {m.id: m for m in open_source("embedded:qm9?limit=3").molecules()}["qm9:3"]
    from edg.edg_core.shards import sample_key
    r = load_result(result_path(out, sample_key(mol.id)))
    assert r.basis_functions == "cartesian" and "6-31g** cartesian" in r.method
    m = gto.M(atom=[(int(z), tuple(p)) for z, p in zip(mol.z, mol.pos)], basis="6-31g**", cart=True, verbose=0)
    mf = dft.RKS(m)
    mf.xc, mf.grids.level, mf.conv_tol = "b3lyp", 3, 1e-10
    assert abs(r.energies["E6"] - mf.kernel()) < 1e-6


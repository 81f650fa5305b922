"""The GPU paths before they meet a GPU (issue 16): each test drives a GPU branch on the CPU and fails the way
the first device run would have.

The DFT tests run ``dft/`` against ``gpu_standins`` (CuPy- and GPU4PySCF-like modules with numpy-backed device
arrays that refuse implicit host conversion, asynchronous kernels and counted memory-pool releases; see that
module), the teacher test under CPU bf16 autocast, the benchmark tests on molecules that fail by design, and the
device-check script in its planning and preparing modes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gpu_standins
import numpy as np
import pytest
import torch
from edg.dft.config import DFTConfig
from edg.edg_core.molecule import Molecule

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(basis="sto-3g", grid_level=1, grid_spacing=0.8)
WATER = Molecule(z=[8, 1, 1], pos=[[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]],
                 id="water")
OH = Molecule(z=[8, 1], pos=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.9697]], id="OH")  # doublet: UKS
COLLAPSED = Molecule(z=[8, 1], pos=[[0, 0, 0], [0, 0, 0.01]], id="collapsed")


@pytest.fixture
def gpu(monkeypatch):
    """The stand-in GPU (cupy + gpu4pyscf in sys.modules for this test); yields its FakeDevice."""
    return gpu_standins.install(monkeypatch)


# ---------------------------------------------------------------- 1: gpu4pyscf's arrays are CuPy arrays
def test_array_module_knows_cupy_subclasses_defined_elsewhere(gpu, monkeypatch):
    import cupy
    from edg.dft.backend import array_module
    tagged = gpu_standins.CPArrayWithTag(np.eye(2), mo_occ=None)
    assert type(tagged).__module__ == "gpu4pyscf.lib.cupy_helper"
    assert array_module(tagged) is cupy and array_module(cupy.asarray(np.ones(2))) is cupy
    assert array_module(np.ones(2)) is np
    monkeypatch.delitem(sys.modules, "cupy")
    assert array_module(np.ones(2)) is np and "cupy" not in sys.modules  # no cupy import on CPU machines


@pytest.mark.parametrize("mol", [WATER, OH], ids=["RKS", "UKS"])
def test_gpu_labels_equal_cpu_labels(gpu, mol):
    """The GPU branch of every label on gpu4pyscf-like device arrays (tagged density matrices, device core
    Hamiltonian, device XC results) equals the CPU branch on the same PySCF numbers."""
    from edg.dft.scf import dipole_debye, energy_components, frontier_orbitals, run_scf
    cfg = DFTConfig(backend="cpu", **FAST)
    cpu, dev = run_scf(mol, cfg, "cpu"), run_scf(mol, cfg, "gpu")
    assert isinstance(dev.mf.make_rdm1(), gpu_standins.CPArrayWithTag)
    e_cpu, e_gpu = energy_components(cpu), energy_components(dev)
    for k in e_cpu:
        assert e_gpu[k] == pytest.approx(e_cpu[k], abs=1e-10), k
    np.testing.assert_allclose(frontier_orbitals(dev), frontier_orbitals(cpu), atol=1e-10)
    np.testing.assert_allclose(dipole_debye(dev), dipole_debye(cpu), atol=1e-8)


def test_gpu_worker_fields_equal_cpu_fields_and_stay_on_the_device(gpu):
    from edg.dft.worker import DFTWorker
    cpu = DFTWorker(DFTConfig(backend="cpu", **FAST)).compute(WATER)
    dev = DFTWorker(DFTConfig(backend="gpu", **FAST), keep_on_gpu=True).compute(WATER)
    assert isinstance(dev.ed, gpu_standins.DeviceArray) and isinstance(dev.esp, gpu_standins.DeviceArray)
    assert dev.method.endswith("(gpu)") and cpu.method.endswith("(cpu)")
    assert dev.method.removesuffix("(gpu)") == cpu.method.removesuffix("(cpu)")  # one method on both backends
    np.testing.assert_allclose(dev.ed.get(), cpu.ed, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dev.esp.get(), cpu.esp, rtol=1e-10, atol=1e-10)
    host = DFTWorker(DFTConfig(backend="gpu", **FAST)).compute(WATER)
    assert isinstance(host.ed, np.ndarray) and host.ed.shape == cpu.ed.shape


# ---------------------------------------------------------------- 4: timers wait for the device
def test_gpu_stage_timers_include_the_device_work(gpu):
    from edg.dft.worker import DFTWorker
    gpu.costs.update(eval_ao=0.4, int1e_grids=0.4)  # queued kernel time, paid at the next synchronisation
    r = DFTWorker(DFTConfig(backend="gpu", **FAST), keep_on_gpu=True).compute(WATER)
    assert r.timings["ed_s"] >= 0.4, r.timings  # unsynchronised: only the launch time
    assert r.timings["esp_s"] >= 0.4, r.timings  # ... and the ED's work would land here or nowhere
    assert gpu.pending == 0


# ---------------------------------------------------------------- 5: eval_ao layout and optimiser
def test_gpu_density_asks_for_its_layout_and_builds_the_optimiser_once(gpu):
    import cupy
    from edg.dft import fields
    from edg.dft.scf import run_scf
    cfg = DFTConfig(backend="cpu", **FAST)
    out = run_scf(WATER, cfg, "cpu")
    pmol, dm = out.mol, out.dm
    nao = pmol.nao_nr()
    pts = np.random.default_rng(0).normal(scale=1.5, size=(3 * nao, 3))
    ref = fields.density_cpu(pmol, dm, pts)
    rho = fields.density_gpu(pmol, cupy.asarray(dm), cupy.asarray(pts), chunk=nao)  # chunks of exactly nao points
    np.testing.assert_allclose(rho.get(), ref, rtol=1e-12, atol=1e-14)
    assert gpu.opt_builds == 1  # once per molecule, not once per chunk


# ---------------------------------------------------------------- 6: one density-fitting default
def test_both_backends_fit_densities_with_the_same_auxiliary_basis(gpu):
    from edg.dft.scf import build_pyscf_mol, jk_method, make_scf
    cfg = DFTConfig()
    pmol = build_pyscf_mol(WATER, cfg)
    cpu, dev = make_scf(pmol, cfg, "cpu"), make_scf(pmol, cfg, "gpu")
    assert cpu.with_df.auxbasis == dev.with_df.auxbasis == "cc-pvdz-jkfit"  # Psi4's JKFIT partner of 6-31G**
    assert jk_method(cfg, "6-31+g**") == "DF(heavy-aug-cc-pvdz-jkfit)"
    direct = DFTConfig(density_fit=False)
    assert not hasattr(make_scf(pmol, direct, "cpu"), "with_df") and jk_method(direct, "6-31g**") == "direct"


def test_the_result_method_records_how_j_and_k_were_built():
    from edg.dft.worker import DFTWorker
    fitted = DFTWorker(DFTConfig(backend="cpu", **FAST, fields=False)).compute(WATER)
    direct = DFTWorker(DFTConfig(backend="cpu", **FAST, fields=False, density_fit=False)).compute(WATER)
    assert "DF(def2-universal-jkfit)" in fitted.method and "direct" in direct.method
    assert fitted.energies["E6"] != direct.energies["E6"]  # the fit is part of the label
    assert abs(fitted.energies["E6"] - direct.energies["E6"]) < 1e-3  # STO-3G: 3e-4 Eh; 6-31G**: 1e-7 Eh


# ---------------------------------------------------------------- 9: memory pool between molecules
def test_cupy_memory_pool_is_kept_between_molecules_and_released_on_failure_and_at_the_end(gpu):
    """The pool keeps its blocks from one molecule to the next (a flush per molecule makes every molecule pay
    cudaMalloc again); a failed molecule (an out-of-memory error leaves the pool at its peak) and the end of the
    worker hand them back."""
    import gc

    from edg.dft.worker import DFTWorker
    gc.collect()  # GPU workers of earlier tests hand their pools back now, not in the middle of this test
    base, pinned_base = gpu.pool_frees, gpu.pinned_frees

    def frees():
        assert gpu.pinned_frees - pinned_base == gpu.pool_frees - base  # pinned host blocks go with device ones
        return gpu.pool_frees - base

    w = DFTWorker(DFTConfig(backend="gpu", **FAST, fields=False))
    for _ in range(3):
        assert w.process(WATER)["status"] == "done"
    assert frees() == 0
    st = w.process(COLLAPSED)
    assert st["status"] == "failed" and "bad geometry" in st["reason"]
    assert frees() == 1  # a failed molecule releases
    assert w.process(WATER)["status"] == "done" and frees() == 1
    w.close()
    assert frees() == 2
    del w
    gc.collect()
    assert frees() == 3  # a stage dropping its worker hands the pool back too
    cpu = DFTWorker(DFTConfig(backend="cpu", **FAST, fields=False))
    assert cpu.process(WATER)["status"] == "done" and cpu.pool_cap_bytes == 0
    del cpu
    gc.collect()
    assert frees() == 3  # the CPU backend never touches CuPy


def test_each_dft_process_caps_its_pool_at_its_share_of_the_gpu(gpu, monkeypatch):
    """GPU4PySCF caps every process at 90 % of the card; four actors at 0.25 GPU each could then ask for 3.6
    cards. The worker caps its pool at 0.9 x its Ray GPU share, or at ``gpu_memory_fraction`` when set."""
    import types

    from edg.dft.worker import DFTWorker
    gpu.memory = 80 * 2**30
    w = DFTWorker(DFTConfig(backend="gpu", **FAST, fields=False))
    assert gpu.pool_limit == w.pool_cap_bytes == int(0.9 * gpu.memory)  # outside Ray: the whole card's 90 %

    assigned = {"GPU": 0.25}
    ray = types.ModuleType("ray")  # what a Ray actor's process has loaded (the API dft/backend.py reads)
    ray.is_initialized = lambda: True
    ray.get_runtime_context = lambda: types.SimpleNamespace(get_assigned_resources=lambda: dict(assigned))
    monkeypatch.setitem(sys.modules, "ray", ray)
    DFTWorker(DFTConfig(backend="gpu", **FAST, fields=False))
    assert gpu.pool_limit == int(0.9 * 0.25 * gpu.memory)
    DFTWorker(DFTConfig(backend="gpu", **FAST, fields=False, gpu_memory_fraction=0.3))
    assert gpu.pool_limit == int(0.3 * gpu.memory)  # set by hand: taken as given
    assigned.clear()  # an actor without a GPU resource
    DFTWorker(DFTConfig(backend="gpu", **FAST, fields=False))
    assert gpu.pool_limit == int(0.9 * gpu.memory)


def test_gpu_worker_warm_starts_a_trajectory_on_device_density_matrices(gpu):
    """Frames of one molecule: the second starts from the first's density (a gpu4pyscf tagged device array,
    copied to the host for the guess) and lands on the CPU's cold energy."""
    from edg.dft.worker import DFTWorker
    moved = Molecule(z=WATER.z, pos=WATER.pos + [[0, 0, -0.003], [0, 0.012, 0.01], [0, -0.012, 0.01]], id="water-1")
    dev = DFTWorker(DFTConfig(backend="gpu", **FAST, fields=False))
    first, second = dev.compute(WATER), dev.compute(moved)
    cold = DFTWorker(DFTConfig(backend="cpu", **FAST, fields=False, warm_start=False)).compute(moved)
    assert first.attempts == ["diis"] and second.attempts == ["warm"]
    assert abs(second.energies["E6"] - cold.energies["E6"]) < 1e-8


def test_train_stage_binds_its_cuda_device_before_anything_else(tmp_path, monkeypatch):
    """NCCL barriers and all-reduces run on the current CUDA device, which is cuda:0 for every rank unless the
    rank sets its own: the stage must call ``torch.cuda.set_device`` before it touches the device or the group."""
    from edg.train.configs import ImageEDTrainConfig, imageed_preset
    from edg.train.loops.pretrain import train_imageed

    class Bound(Exception):
        pass

    def set_device(device):
        raise Bound(str(torch.device(device)))
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    with pytest.raises(Bound, match="cuda:1"):
        train_imageed(ImageEDTrainConfig(model=imageed_preset("tiny")), tmp_path / "no-shards", tmp_path / "out",
                      device="cuda:1")


# ---------------------------------------------------------------- 2: augmentation under bf16 autocast
def test_structure_augmentation_runs_in_float32_under_bf16_autocast():
    from edg.train.configs import TeacherConfig
    from edg.train.models.teacher import augment_structure_images
    cfg = TeacherConfig(aug_p=1.0)  # every augmentation on every image, the blur included
    x = torch.rand(2, 4, 3, 32, 32)
    plain = augment_structure_images(x, cfg, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = augment_structure_images(x, cfg, torch.Generator().manual_seed(0))
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, plain)  # float32 work: bit for bit what it is outside autocast
    half = augment_structure_images(x.bfloat16(), cfg, torch.Generator().manual_seed(0))
    assert half.dtype == torch.bfloat16


# ---------------------------------------------------------------- 7: benchmarks do not hide failures
@pytest.fixture
def bench_importable(monkeypatch):
    """``bench`` is a folder of the repository, not part of the installed package."""
    monkeypatch.syspath_prepend(str(ROOT))


def test_bench_dft_prints_no_throughput_when_every_molecule_failed(bench_importable, capsys):
    from bench.dft import per_molecule
    bad = [COLLAPSED, Molecule(z=[6, 6], pos=[[0, 0, 0], [0.1, 0, 0]], id="fused-carbons")]
    r = per_molecule("cpu", bad, dict(FAST))
    out = capsys.readouterr().out
    assert (r["done"], r["failed"]) == (0, 2)
    assert "collapsed: FAILED invalid input: bad geometry" in out and "fused-carbons: FAILED" in out
    assert "mol/s" not in out and "all 2 molecules FAILED" in out


def test_bench_fused_exits_nonzero_and_says_why_when_molecules_fail(bench_importable, tmp_path, capsys):
    from bench.fused import main
    xyz = tmp_path / "bad.xyz"
    xyz.write_text("1\nxenon\nXe 0 0 0\n")  # read fine (atoms 0.01 Å apart would be refused by the reader)
    assert main([f"--input={xyz}", "--n=1"]) == 1
    out = capsys.readouterr().out
    assert "1 of 1 molecules FAILED" in out and "Basis set not found for Xe" in out and "mol/s" not in out


def test_bench_n_beyond_the_embedded_set_says_so(bench_importable, capsys):
    from bench.dft import embedded_qm9
    assert len(embedded_qm9(3)) == 3 and [m.id for m in embedded_qm9(3)] == ["qm9:1", "qm9:8", "qm9:15"]
    mols = embedded_qm9(1000, "bench x")
    assert len(mols) == 40 and "--n=1000 is more than the 40 embedded QM9 molecules" in capsys.readouterr().out


# ---------------------------------------------------------------- 3, 8: the device-check script
def _script(*args, env=None):
    base = {k: v for k, v in os.environ.items() if k != "PYTHON"}  # the plan names the default interpreter (a
    # --dry-run that runs this file is given PYTHON=)
    return subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**base, **(env or {})})


def _device_check_constants(text: str) -> tuple[dict, dict, list, list]:
    """From the script's text: its scalar constants, the per-section timeouts ``LIMIT``, the default sections and
    the sections its device branch runs through ``step`` (which times each out at ``LIMIT[name]``)."""
    import re
    consts = {k: int(v) for k, v in re.findall(r"^([A-Z_]+)=(\d+)\b", text, re.M)}
    limits = {k: int(v) for k, v in re.findall(r"\[(\w+)\]=(\d+)", re.search(r"^declare -A LIMIT=\((.*)\)$",
                                                                          text, re.M).group(1))}
    default = re.search(r'^all="([^"]*)"', text, re.M).group(1).split()
    device_branch = text[text.index("  else\n    case $s in"):]
    stepped = re.findall(r"^\s+\w+\)\s+step (\w+) ", device_branch[:device_branch.index("esac")], re.M)
    return consts, limits, default, stepped


def test_device_check_plan_fits_the_device_time_with_room_for_a_rerun(tmp_path):
    """The plan is recomputed here from the timeouts the device run actually uses (``step`` times each section
    out at ``LIMIT[section]``), not read back from the script's own totals: one worst-case run (start-up, wheel
    pieces, install, every section at its timeout) plus one rerun must fit the script's budget, which must fit a
    task's 15 minutes, and the device call's timeout must cover every section. A section timeout raised past
    the budget, a section run without a ``LIMIT`` entry, a plan that left a section out of its sum or a budget
    raised beyond 15 minutes fails here."""
    text = (ROOT / "bench" / "device_check.sh").read_text()
    consts, limits, default, stepped = _device_check_constants(text)
    assert 'local name=$1 limit=${LIMIT[$1]}' in text and 'timeout "$limit" "$@"' in text  # step's timeout
    assert sorted(stepped) == sorted(default) and set(default) <= set(limits), (stepped, default, limits)
    budget = consts["BUDGET"]
    assert budget <= 15 * 60  # a task's device time (docs of the device tool), everything included
    pieces = len([p for p in ROOT.glob(".devw[0-9]*") if p.is_dir()]) or 5  # as the script counts them
    call = sum(limits[s] for s in default) + consts["CALL_SLACK"]
    once = consts["START"] + pieces * consts["PIECE_CALL"] + consts["INSTALL"] + call
    assert once + call <= budget, f"one run {once} s + a rerun {call} s > {budget} s: shorten the section timeouts"

    p = _script("--plan")
    assert p.returncode == 0, p.stdout + p.stderr
    plan = dict(line.split("=", 1) for line in p.stdout.splitlines() if line.startswith("PLAN_"))
    assert (int(plan["PLAN_BUDGET_S"]), int(plan["PLAN_ONE_RUN_S"]), int(plan["PLAN_RERUN_S"])) == (budget, once, call)
    assert call <= int(plan["PLAN_CALL_TIMEOUT_S"]) <= 600  # every section fits in one device call's limit
    assert "python3" in plan["PLAN_PYTHON"]  # the device image's interpreter, overridable with PYTHON=

    # the script's own gate: a section's timeout raised past the budget makes --plan refuse
    (tmp_path / "bench").mkdir()
    over = text.replace(f"[fused]={limits['fused']}", f"[fused]={budget}")
    assert over != text
    (tmp_path / "bench" / "device_check.sh").write_text(over)
    p = subprocess.run(["bash", str(tmp_path / "bench" / "device_check.sh"), "--plan"], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode != 0 and "over budget" in p.stdout


def test_device_check_prepare_copies_the_rmd17_files_the_benchmarks_read(tmp_path, rmd17_root):
    p = _script("--prepare", env={"EDG_DEVICE_DATA": str(tmp_path / "carry"), "EDG_RMD17_ROOT": str(rmd17_root)})
    assert p.returncode == 0, p.stdout + p.stderr
    copied = tmp_path / "carry" / "rmd17"
    assert sorted(f.name for f in copied.iterdir()) == ["rmd17_aspirin_test_01.npz", "rmd17_aspirin_train_01.npz"]
    code = ("import torch; from bench.students import aspirin_batches; "
            "from edg.train.tasks import build_task; "
            "print(len(aspirin_batches(32, 7, torch.device('cpu'))), len(build_task('rmd17:aspirin').train))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "EDG_RMD17_ROOT": str(copied), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["7", "950"]

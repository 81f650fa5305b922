"""``bench/device_check.sh`` measures or fails (issue 24, item 6): its --dry-run passes on this CPU; in its real
mode every GPU section fails at its start here, with one line; a GPU test that skips fails the tests section;
the fused rate leaves start-up out; the distill benchmark runs where it is told (CUDA on the device)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ["tests", "dft", "render", "pretrain", "students", "distill", "fused"]
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="shows what the real mode does without a GPU")


@pytest.fixture
def bench_importable(monkeypatch):
    """``bench`` is a folder of the repository, not part of the installed package."""
    monkeypatch.syspath_prepend(str(ROOT))


def _script(tmp_path, *args, timeout=900):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "PYTHONPATH": str(ROOT),
           "EDG_DEVICE_DATA": str(tmp_path / "no-data")}
    return subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- the script, both modes
@cpu_only
def test_real_mode_fails_every_gpu_section_at_its_start_without_a_gpu(tmp_path):
    p = _script(tmp_path)
    assert p.returncode == len(SECTIONS), p.stdout + p.stderr  # exit status: the number of failed sections
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert f"failed sections: {len(SECTIONS)}" in summary
    for s in SECTIONS:
        assert f"== {s} (rc 3," in summary, summary  # every section stopped by its gate ...
        log = (tmp_path / "out" / f"{s}.log").read_text()
        assert f"{s}: FAILED at start: " in log, log  # ... saying so in one line
        assert "== bench" not in log and "collected" not in log  # before any benchmark or test started
    assert "render: FAILED at start: torch sees no CUDA device" in summary
    assert "dft: FAILED at start: GPU4PySCF is not usable" in summary
    assert "tests: FAILED at start: torch sees no CUDA device" in summary


def test_dry_run_of_a_section_runs_its_benchmark_on_the_cpu(tmp_path):
    p = _script(tmp_path, "--dry-run", "render")
    assert p.returncode == 0, p.stdout + p.stderr
    log = (tmp_path / "out" / "render.log").read_text()
    assert "render: dry run on the CPU (the GPU gate is off)" in log and "render ed         cpu:" in log


@pytest.mark.slow  # every section on this CPU with small sizes: minutes on 2 loaded cores
def test_dry_run_passes_on_the_cpu(tmp_path):
    p = _script(tmp_path, "--dry-run", timeout=3600)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert p.returncode == 0 and "failed sections: 0" in summary, summary
    for s in SECTIONS:
        assert f"== {s} (rc 0," in summary
    fused = (tmp_path / "out" / "fused.log").read_text()
    assert "mol/s steady (1 molecule after the first 1, start-up excluded)" in fused, fused
    assert "GPU tests skipped (allowed on the CPU)" in (tmp_path / "out" / "tests.log").read_text()


# ---------------------------------------------------------------- the gate of the benchmark sections
@cpu_only
def test_the_gate_stops_a_section_before_its_benchmark_starts(bench_importable, capsys):
    from bench import _cuda
    assert _cuda.main(["render", "--device=cuda"]) == _cuda.START_FAILED
    out = capsys.readouterr().out
    assert out.startswith("render: FAILED at start: torch sees no CUDA device") and "== bench" not in out
    assert _cuda.main(["fused", "--n=1"]) == _cuda.START_FAILED  # torch first, then GPU4PySCF
    assert _cuda.main(["dft", "--gpu-only"]) == _cuda.START_FAILED
    assert "dft: FAILED at start: GPU4PySCF is not usable (cupy and gpu4pyscf not installed)" in \
        capsys.readouterr().out


def test_a_benchmark_that_ran_on_the_cpu_fails_the_section(bench_importable, monkeypatch, capsys):
    """With a GPU visible (patched), a benchmark that quietly ran on the CPU (here: told to) leaves torch's GPU
    memory untouched, and the section fails after it."""
    from bench import _cuda
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # as on the CPU: nothing allocated there
    assert _cuda.missing("render") is None
    assert _cuda.main(["render", "--device=cpu", "--n=1", "--batch=1", "--size=16"]) == 1
    out = capsys.readouterr().out
    assert "render ed         cpu:" in out  # the benchmark ran ...
    assert out.rstrip().endswith("render: FAILED: the benchmark finished without allocating any GPU memory "
                                 "through torch (it ran on the CPU)")  # ... and measured no GPU


# ---------------------------------------------------------------- the tests section: skips fail it
def _pytest_section(tmp_path, test_body: str, visible_gpu: bool):
    """The real mode's tests-section command on one generated GPU test; ``visible_gpu`` patches
    ``torch.cuda.is_available`` in that pytest process (a conftest), so its gate lets it through."""
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a CUDA GPU\n")
    if visible_gpu:
        (tmp_path / "conftest.py").write_text("import torch\ntorch.cuda.is_available = lambda: True\n")
    (tmp_path / "test_generated.py").write_text(textwrap.dedent("""\
        import pathlib
        import pytest

        @pytest.mark.gpu
        def test_kernel():
            pathlib.Path("ran").write_text("1")
        """) + textwrap.indent(textwrap.dedent(test_body), "    "))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "bench._gpu_tests",
                           "-m", "gpu", "test_generated.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_gpu_test_that_skips_fails_the_tests_section(tmp_path):
    p = _pytest_section(tmp_path, 'pytest.skip("needs CUDA")\n', visible_gpu=True)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "tests: FAILED: 1 of 1 GPU tests skipped, so they measured nothing: " \
           "test_generated.py::test_kernel (needs CUDA)" in p.stdout, p.stdout
    assert (tmp_path / "ran").exists()  # the test did start: the skip came from inside it


def test_a_gpu_test_that_passes_passes_the_tests_section(tmp_path):
    p = _pytest_section(tmp_path, "assert pathlib.Path('ran').read_text() == '1'\n", visible_gpu=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "FAILED" not in p.stdout and "1 passed" in p.stdout


@cpu_only
def test_without_cuda_the_tests_section_stops_before_collecting(tmp_path):
    p = _pytest_section(tmp_path, "pass\n", visible_gpu=False)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "tests: FAILED at start: torch sees no CUDA device" in p.stdout
    assert not (tmp_path / "ran").exists()


# ---------------------------------------------------------------- the fused rate
def test_the_fused_rate_leaves_the_start_up_out(bench_importable):
    from bench.fused import steady_rate
    # a clock: 20 s of start-up to the first molecule, then one molecule every 0.5 s
    finished = [20.0, 20.5, 21.0, 21.5, 22.0]
    assert steady_rate(finished) == pytest.approx(2.0)  # 4 molecules in the 2 s after the first
    assert len(finished) / finished[-1] == pytest.approx(0.227, abs=1e-3)  # what start-up-included reads
    assert steady_rate(finished, warm=2) == pytest.approx(3 / 1.5)  # one per actor warms up
    assert steady_rate([20.0]) is None and steady_rate([]) is None and steady_rate([1.0, 1.0]) is None


def test_the_fused_run_times_each_molecule_from_its_result_file(bench_importable):
    """A real fused run (STO-3G, CPU): one finish time per molecule, the rate taken from the ones after the
    first, and the line says so beside the start-up and the end-to-end figure."""
    from bench.dft import QUICK, embedded_qm9
    from bench.fused import describe, run, steady_rate
    r = run(embedded_qm9(3), 0, 0.0, 1.0, QUICK)
    assert (r["done"], r["failed"], r["timed"]) == (3, 0, 2)
    assert len(r["finished"]) == 3 and 0 < r["first_s"] == r["finished"][0] <= r["finished"][-1] <= r["seconds"] + 1
    assert r["steady_mol_per_s"] == steady_rate(r["finished"])
    line = describe(r, gpu=False, n_gpus=0)
    assert f"{r['steady_mol_per_s']:.3f} mol/s steady (2 molecules after the first 1, start-up excluded)" in line
    assert f"first molecule after {r['first_s']:.1f} s" in line and "(start-up included)" in line
    gpu_line = describe(r, gpu=True, n_gpus=1)
    assert "x the 1.3 mol/s anchor" in gpu_line


# ---------------------------------------------------------------- the distill benchmark's device
def test_bench_distill_trains_on_the_device_it_is_given(bench_importable, monkeypatch, rmd17_root):
    from bench import distill
    monkeypatch.setenv("EDG_RMD17_ROOT", str(rmd17_root))
    r = distill.measure(batch_size=2, rounds=1, steps=1, student_args=distill.QUICK_STUDENT, device="cpu")
    assert r["device"] == "cpu" and not r["fused_optimizer"] and r["steps_timed"] == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distill._device([]) == "cuda" and distill._device(["--device=cpu"]) == "cpu"  # auto: CUDA when seen

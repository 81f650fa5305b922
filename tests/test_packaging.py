"""Import names that cannot collide: a non-editable install holds one top-level package, ``edg``, and works from a
folder whose ``train.py``, ``dft.py``, ``render.py``, ``cluster.py``, ``edg_core.py`` and ``serve.py`` each raise on
import; the pre-0.2 names still import from a checkout, as the same modules, with one FutureWarning."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHADOWS = ("train", "dft", "render", "cluster", "edg_core", "serve")


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    """``pip install --no-deps .`` (not editable) into a private folder; the dependencies come from this venv."""
    site = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    src = build / "src"  # a copy, so that setuptools' build/ folder never lands in the checkout
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("edg", *SHADOWS):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(site), str(src)],
                       capture_output=True, text=True, cwd=build,
                       env={**os.environ, "PIP_NO_CACHE_DIR": "1", "TMPDIR": str(build)})
    assert r.returncode == 0, r.stderr[-2000:]
    return site


@pytest.fixture
def hostile_cwd(tmp_path) -> Path:
    """A working folder whose files shadow every old top-level name and raise when imported."""
    for name in SHADOWS:
        (tmp_path / f"{name}.py").write_text(f"raise RuntimeError('the user\\'s own {name}.py was imported')\n")
    return tmp_path


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "EDG_PROGRESS": "0",
           "EDG_CACHE": str(cwd / ".cache"), "HOME": str(cwd)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


def test_the_wheel_installs_one_top_level_package(wheel_site):
    top = sorted(p.name for p in wheel_site.iterdir()
                 if p.is_dir() and not p.name.endswith((".dist-info", ".egg-info")) and p.name != "bin")
    assert top == ["edg"], top  # bin/ holds the `edg` console script
    nested = {p.name for p in (wheel_site / "edg").iterdir() if p.is_dir()}
    assert set(SHADOWS) <= nested
    assert (wheel_site / "edg" / "edg_core" / "data").is_dir()  # the embedded molecules travel too
    assert (wheel_site / "edg" / "serve" / "page.html").is_file()  # and edg serve's page


def test_public_api_imports_beside_shadowing_files(wheel_site, hostile_cwd):
    r = _run(wheel_site, hostile_cwd, "-c",
             "from edg.api import EDGCalculator, load_student, Renderer, DFTWorker, open_source\n"
             "import edg, edg.train\n"
             "print(edg.train.__file__)")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().startswith(str(wheel_site / "edg" / "train"))


def test_edg_dft_runs_beside_shadowing_files(wheel_site, hostile_cwd):
    out = hostile_cwd / "run"
    r = _run(wheel_site, hostile_cwd, "-m", "edg.cluster.cli", "dft", "--input", "embedded:qm9?limit=1",
             "--actors", "0", "--out", str(out), "--basis", "sto-3g", "--grid-level", "1", "--no-fields")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "dft: done 1, skipped 0, failed 0" in r.stdout
    assert len(list(out.glob("fields/*/*.npz"))) == 1


@pytest.mark.slow  # a private Ray runtime and an actor that imports PySCF: about a minute on 2 cores
@pytest.mark.ray
def test_edg_dft_on_an_actor_beside_shadowing_files(wheel_site, hostile_cwd):
    """Ray workers get the driver's folder on sys.path; with one ``edg`` namespace the user's files cannot win."""
    out = hostile_cwd / "run"
    r = _run(wheel_site, hostile_cwd, "-m", "edg.cluster.cli", "dft", "--input", "embedded:qm9?limit=1",
             "--actors", "1", "--out", str(out), "--basis", "sto-3g", "--grid-level", "1", "--no-fields")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "dft: done 1, skipped 0, failed 0" in r.stdout


def test_old_import_names_alias_the_new_modules_with_one_warning():
    code = ("import warnings, sys\n"
            "warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    from train.ase_calculator import EDGCalculator\n"
            "    import train.students\n"
            "import edg.train.ase_calculator as new, edg.train.students as students\n"
            "assert EDGCalculator is new.EDGCalculator and sys.modules['train.students'] is students\n"
            "assert students.__spec__.name == 'edg.train.students'\n"
            "msgs = [str(x.message) for x in w\n"
            "        if issubclass(x.category, FutureWarning) and 'edg.train' in str(x.message)]\n"
            "assert len(msgs) == 2, msgs  # the old top-level name, and the module's old path in train/\n"
            "print('\\n'.join(msgs))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "`import train` is deprecated" in r.stdout and "import `edg.train`" in r.stdout
    assert "`edg.train.ase_calculator` moved to `edg.train.io.ase_calculator`" in r.stdout


def test_edg_api_is_lazy_and_complete():
    code = ("import sys, edg.api as api\n"
            "assert 'torch' not in sys.modules and 'pyscf' not in sys.modules\n"
            "missing = [n for n in api.__all__ if getattr(api, n, None) is None]\n"
            "assert not missing, missing\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RMD17 = (ROOT.parent / "shared" / "data" / "rmd17").resolve()


@pytest.fixture(scope="session")
def rmd17_root() -> Path:
    """The pre-split rMD17 files shipped beside the repository (../shared/data/rmd17)."""
    root = Path(os.environ.get("EDG_RMD17_ROOT", RMD17))
    if not (root / "rmd17_aspirin_train_01.npz").exists():
        pytest.skip(f"rMD17 files not found at {root}")
    return root


HOME_PATHS = (Path.home() / ".ray", Path.home() / ".cache" / "matplotlib")
"""What Ray (``~/.ray/auth_token``) and matplotlib (its font cache) would write into the home folder."""


@pytest.fixture(autouse=True, scope="session")
def _edg_cache(tmp_path_factory):
    """Keep the parsed-QM9 cache and matplotlib's cache out of the home folder (unless the user chose where), and
    check at the end that the suite created nothing there (``HOME_PATHS``)."""
    if "EDG_CACHE" not in os.environ:
        os.environ["EDG_CACHE"] = str(ROOT / ".cache")
    if "MPLCONFIGDIR" not in os.environ:
        os.environ["MPLCONFIGDIR"] = str(tmp_path_factory.mktemp("matplotlib"))
    before = {p for p in HOME_PATHS if p.exists()}
    yield
    created = sorted(str(p) for p in HOME_PATHS if p.exists() and p not in before)
    assert not created, f"the test suite wrote into the home folder: {created}"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tests run tiny models on a shared 2-core machine, where one intra-op thread is fastest
    (measured: a tiny Equiformer energy + forces call, 0.59 s with 2 threads, 0.07 s with 1)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

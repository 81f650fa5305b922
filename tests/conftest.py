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


@pytest.fixture(autouse=True, scope="session")
def _edg_cache(tmp_path_factory):
    """Keep the parsed-QM9 cache out of the home folder when the user has not chosen one."""
    if "EDG_CACHE" not in os.environ:
        os.environ["EDG_CACHE"] = str(ROOT / ".cache")
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tests run tiny models on a shared 2-core machine, where one intra-op thread is fastest
    (measured: a tiny Equiformer energy + forces call, 0.59 s with 2 threads, 0.07 s with 1)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

"""The DFT stage: B3LYP/6-31G** single points (PySCF on CPU, GPU4PySCF on GPU), energy labels E1..E6,
ED and ESP on cube grids, cube files, and a worker that writes one result per molecule.

Public entry: ``DFTWorker`` (dft.worker), ``DFTConfig`` (dft.config), ``load_result`` (dft.result).
Nothing here imports ray, cupy or gpu4pyscf at import time.
"""
if not __name__.startswith("edg."):  # the pre-0.2 name `dft`: alias it to edg.dft, once, with a warning
    from edg._legacy import redirect
    redirect(__name__)

from .config import DFTConfig
from .result import DFTResult, load_result, save_result
from .worker import DFTWorker

__all__ = ["DFTConfig", "DFTResult", "DFTWorker", "load_result", "save_result"]

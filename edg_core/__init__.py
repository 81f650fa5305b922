"""EDG core: molecule records, units, configs, dataset readers, splits and the shard schema.

Imports only numpy and the standard library at module load; torch, webdataset and RDKit are imported
by the functions that need them.
"""
if not __name__.startswith("edg."):  # the pre-0.2 name `edg_core`: alias it to edg.edg_core, once, with a warning
    from edg._legacy import redirect
    redirect(__name__)

from .errors import DataSourceError, EDGError, InvalidRecord, ShardError
from .grid import CubeGrid, grid_for_positions
from .molecule import Molecule

__all__ = ["Molecule", "CubeGrid", "grid_for_positions", "EDGError", "InvalidRecord", "DataSourceError",
           "ShardError"]
__version__ = "0.1.0"

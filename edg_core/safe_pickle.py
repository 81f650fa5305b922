"""Reading pickles from elsewhere without running them: a restricted unpickler for plain data.

Python's ``pickle`` calls whatever callable the file names, so a hostile file can run code while it is read.
``safe_load`` admits only plain containers (dict, list, tuple, set, frozenset, ``OrderedDict``), strings,
bytes, numbers, None, booleans and numpy arrays and scalars (numpy's array/scalar reconstruction functions
``_reconstruct``, ``scalar`` and ``_frombuffer``, ``ndarray`` and ``dtype``, plus ``_codecs.encode``, which
protocol-2 pickles use for raw bytes). Any other global a file names is refused with ``UnsafePickleError``
before it is called, so nothing in the file runs. Object arrays are fine: their elements go through the same
filter.

``safe_load_npz`` reads an ``.npz`` the same way: ordinary arrays as ``np.load(allow_pickle=False)`` does, and
object arrays (stored as a pickle inside the member) through ``safe_load``.
"""
from __future__ import annotations

import _compat_pickle
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from .errors import EDGError

_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
ALLOWED = {
    **{(m, name): None for m in _NUMPY_CORE for name in ("_reconstruct", "scalar")},
    ("numpy.core.numeric", "_frombuffer"): None,  # protocol 5
    ("numpy._core.numeric", "_frombuffer"): None,
    ("numpy", "ndarray"): None, ("numpy", "dtype"): None,
    ("builtins", "set"): None, ("builtins", "frozenset"): None, ("builtins", "complex"): None,
    ("builtins", "bytearray"): None, ("collections", "OrderedDict"): None, ("_codecs", "encode"): None,
}
_NUMPY_DTYPES = {"numpy.dtypes", "numpy"}  # numpy >= 1.25 pickles dtypes as numpy.dtypes.<Kind>DType classes


class UnsafePickleError(EDGError, pickle.UnpicklingError):
    """The pickle names something other than plain data: refused before it was called."""


class _PlainUnpickler(pickle.Unpickler):
    def __init__(self, f, where: str):
        super().__init__(f)
        self.where = where

    def find_class(self, module: str, name: str):
        # Python 2 names (protocol 2 writes __builtin__.set) as pickle's fix_imports maps them; no Python 3
        # name is in these tables
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in ALLOWED or (module in _NUMPY_DTYPES and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafePickleError(f"{self.where}: the pickle refers to {module}.{name}, which is not plain data "
                                f"(containers, numbers, strings, numpy arrays); refused without running it")


def safe_load(src, where: str = "pickle"):
    """Unpickle plain data from a path, bytes or a binary file object (see the module docstring)."""
    if isinstance(src, (bytes, bytearray)):
        return _PlainUnpickler(io.BytesIO(src), where).load()
    if isinstance(src, (str, Path)):
        with open(src, "rb") as f:
            return _PlainUnpickler(f, str(src)).load()
    return _PlainUnpickler(src, where).load()


def safe_load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file; object arrays are unpickled with ``safe_load``."""
    from numpy.lib import format as npf
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    with np.load(path, allow_pickle=False) as d, zipfile.ZipFile(path) as z:
        for name in d.files:
            try:
                out[name] = d[name]
                continue
            except ValueError:  # an object array: numpy would need pickle
                pass
            with z.open(name + ".npy") as f:
                version = npf.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = npf.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = npf.read_array_header_2_0(f)
                else:
                    raise EDGError(f"{path}:{name}: .npy format version {version} is not supported here")
                arr = safe_load(f, f"{path}:{name}")
            if not isinstance(arr, np.ndarray) or arr.shape != tuple(shape):
                raise EDGError(f"{path}:{name}: object array member does not hold an array of shape {shape}")
            out[name] = arr
    return out

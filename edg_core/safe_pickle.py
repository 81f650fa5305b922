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

Allowed constructors are also capped in what they may allocate beyond the bytes the file carries: a 59-byte
pickle can otherwise ask ``bytearray(4 GiB)`` or ``numpy.ndarray((200000, 100000))``. Sizes are computed from
the arguments before anything is allocated and compared with ``max_alloc_bytes`` (default ``MAX_ALLOC_BYTES``,
1 GiB, raised by the environment variable ``EDG_PICKLE_MAX_BYTES`` or the parameter). Data a file really holds
(an array's bytes, a string) is not counted: reading it cost the file's own size. Every refusal is one
``UnsafePickleError`` line naming the file and the global.
"""
from __future__ import annotations

import _compat_pickle
import io
import math
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .errors import EDGError

MAX_ALLOC_BYTES = 1 << 30  # what one allowed constructor may allocate beyond the file's own bytes
MAX_ALLOC_ENV = "EDG_PICKLE_MAX_BYTES"
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
_NUMPY_DTYPES = {"numpy.dtypes", "numpy"}  # numpy >= 1.25 pickles dtypes as numpy.dtypes.<Kind>DType classes
_LATIN1 = {"latin1", "latin-1", "latin_1"}  # what pickle protocol 2 passes to _codecs.encode for raw bytes


class UnsafePickleError(EDGError, pickle.UnpicklingError):
    """The pickle names something other than plain data, or asks an allowed constructor for more memory than
    the limit: refused before it was called."""


def max_alloc_bytes() -> int:
    """The allocation limit in bytes: ``$EDG_PICKLE_MAX_BYTES`` when set (a plain integer), else 1 GiB."""
    raw = os.environ.get(MAX_ALLOC_ENV, "").strip()
    if not raw:
        return MAX_ALLOC_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise EDGError(f"{MAX_ALLOC_ENV}={raw[:40]!r} is not a whole number of bytes") from None
    if value < 0:
        raise EDGError(f"{MAX_ALLOC_ENV}={value} must be >= 0")
    return value


def _elements(shape) -> int:
    """The element count of a numpy shape argument (an int or a sequence of ints), in Python integers."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise ValueError(f"shape {shape!r} is not made of integers")
    if any(d < 0 for d in dims):
        raise ValueError(f"shape {dims} has a negative dimension")
    return math.prod(dims)


class _CheckedArray(np.ndarray):
    """The arrays ``_reconstruct`` makes while a pickle loads: ``__setstate__`` (the BUILD that fills them)
    checks the announced shape before numpy allocates. ``_plain`` turns them back into ``np.ndarray``."""
    _guard: _Guard

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise self._guard.refuse("numpy.ndarray.__setstate__", f"a state of type {type(state).__name__}")
        shape, dtype, data = state[-4], state[-3], state[-1]
        if isinstance(data, list):  # object arrays: numpy allocates the shape, then fills it from the list
            n = self._guard.check_shape("numpy.ndarray.__setstate__", shape, np.dtype(dtype))
            if n != len(data):
                raise self._guard.refuse("numpy.ndarray.__setstate__",
                                         f"shape {tuple(shape)} ({n} elements) with {len(data)} elements of data")
        elif not isinstance(data, (bytes, bytearray, memoryview)):
            raise self._guard.refuse("numpy.ndarray.__setstate__", f"array data of type {type(data).__name__}")
        super().__setstate__(state)  # byte data: numpy checks that its length is the shape's


class _Guard:
    """The allowed constructors of one load, wrapped so that each checks its size before allocating."""

    def __init__(self, where: str, limit: int):
        self.where, self.limit = where, limit
        checked = type("_CheckedArray", (_CheckedArray,), {"_guard": self})
        self.array_type = checked
        self.ndarray = _NdarrayCall(self)
        self.arrays_made = 0  # _CheckedArray instances this load made (none: no walk to undo them)

    def refuse(self, name: str, what: str) -> UnsafePickleError:
        return UnsafePickleError(f"{self.where}: the pickle calls {name} with {what}; refused before allocating")

    def check_bytes(self, name: str, nbytes: int, what: str) -> None:
        if nbytes > self.limit:
            raise UnsafePickleError(
                f"{self.where}: the pickle asks {name} for {nbytes} bytes ({what}), over the limit of {self.limit} "
                f"bytes (raise it with {MAX_ALLOC_ENV}); refused before allocating")

    def check_shape(self, name: str, shape, dtype: np.dtype) -> int:
        try:
            n = _elements(shape)
        except (TypeError, ValueError) as e:
            raise self.refuse(name, str(e)) from None
        self.check_bytes(name, n * dtype.itemsize, f"shape {shape!r} of {dtype}")
        return n

    def dtype_of(self, name: str, dtype) -> np.dtype:
        try:
            return np.dtype(dtype)
        except Exception as e:
            raise self.refuse(name, f"dtype {str(dtype)[:60]!r} ({type(e).__name__})") from None

    def bytearray(self, *args):
        if args and isinstance(args[0], int):
            self.check_bytes("builtins.bytearray", args[0], "a zero-filled buffer")
        return bytearray(*args)

    def reconstruct(self, subtype, shape, dtype):
        if subtype is not self.ndarray:
            raise self.refuse("numpy._core.multiarray._reconstruct", f"the type {str(subtype)[:60]}")
        self.check_shape("numpy._core.multiarray._reconstruct", shape, self.dtype_of("_reconstruct", dtype))
        from numpy._core.multiarray import _reconstruct
        self.arrays_made += 1
        return _reconstruct(self.array_type, shape, dtype)

    def scalar(self, dtype, *args):
        dtype = self.dtype_of("numpy._core.multiarray.scalar", dtype)
        self.check_bytes("numpy._core.multiarray.scalar", dtype.itemsize, f"a scalar of {dtype}")
        from numpy._core.multiarray import scalar
        return scalar(dtype, *args)

    def codecs_encode(self, obj, encoding="utf-8", errors="strict"):
        if encoding not in _LATIN1 or not isinstance(obj, str):
            raise self.refuse("_codecs.encode", f"encoding {str(encoding)[:40]!r} (only latin1 for raw bytes)")
        return obj.encode("latin1", errors)


class _NdarrayCall:
    """What the global ``numpy.ndarray`` stands for while loading: as ``_reconstruct``'s type argument it is
    the plain array type; called (REDUCE) it is ``np.ndarray(shape, dtype, buffer, ...)`` with its size checked.
    Not a type, so the NEWOBJ opcode (``cls.__new__``) refuses it."""

    def __init__(self, guard: _Guard):
        self.guard = guard

    def __call__(self, shape, dtype=float, buffer=None, *args, **kwargs):
        dt = self.guard.dtype_of("numpy.ndarray", dtype)
        self.guard.check_shape("numpy.ndarray", shape, dt)
        return np.ndarray(shape, dt, buffer, *args, **kwargs)


def _allowed(guard: _Guard) -> dict[tuple[str, str], object]:
    """(module, name) -> what the pickle gets for that global."""
    from numpy._core.numeric import _frombuffer  # a view of bytes the file holds: no allocation
    return {
        **{(m, "_reconstruct"): guard.reconstruct for m in _NUMPY_CORE},
        **{(m, "scalar"): guard.scalar for m in _NUMPY_CORE},
        **{(m, "_frombuffer"): _frombuffer for m in _NUMPY_NUMERIC},
        ("numpy", "ndarray"): guard.ndarray, ("numpy", "dtype"): np.dtype,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "complex"): complex,
        ("builtins", "bytearray"): guard.bytearray, ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): guard.codecs_encode,
    }


ALLOWED = frozenset(_allowed(_Guard("", 0)))  # the globals a pickle may name


class _PlainUnpickler(pickle.Unpickler):
    def __init__(self, f, where: str, limit: int):
        super().__init__(f)
        self.where = where
        self.guard = _Guard(where, limit)
        self.table = _allowed(self.guard)

    def find_class(self, module: str, name: str):
        # Python 2 names (protocol 2 writes __builtin__.set) as pickle's fix_imports maps them; no Python 3
        # name is in these tables
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in self.table:
            return self.table[(module, name)]
        if module in _NUMPY_DTYPES and name.endswith("DType"):
            return super().find_class(module, name)
        raise UnsafePickleError(f"{self.where}: the pickle refers to {module}.{name}, which is not plain data "
                                f"(containers, numbers, strings, numpy arrays); refused without running it")


def _plain(obj, seen: dict[int, object]):
    """``obj`` with every ``_CheckedArray`` in it (in containers and object arrays, cycles included) replaced
    by a plain ``np.ndarray`` view of the same data."""
    key = id(obj)
    if key in seen:
        return seen[key]
    if isinstance(obj, _CheckedArray):
        out = obj.view(np.ndarray)
        seen[key] = out
        if out.dtype == object:
            for i, v in enumerate(out.flat):
                out.flat[i] = _plain(v, seen)
        return out
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        seen[key] = obj
        for i, v in enumerate(obj.flat):
            obj.flat[i] = _plain(v, seen)
    elif isinstance(obj, list):
        seen[key] = obj
        obj[:] = [_plain(v, seen) for v in obj]
    elif isinstance(obj, dict):
        seen[key] = obj
        for k, v in obj.items():
            obj[k] = _plain(v, seen)
    elif isinstance(obj, tuple):
        seen[key] = obj  # a tuple that contains itself is rebuilt once
        items = tuple(_plain(v, seen) for v in obj)
        if any(a is not b for a, b in zip(items, obj)):
            seen[key] = obj = items
    return obj


def safe_load(src, where: str = "pickle", max_alloc: int | None = None):
    """Unpickle plain data from a path, bytes or a binary file object (see the module docstring).
    ``max_alloc``: bytes one allowed constructor may allocate (default ``max_alloc_bytes()``)."""
    limit = max_alloc_bytes() if max_alloc is None else max_alloc
    if isinstance(src, (str, Path)):
        with open(src, "rb") as f:
            return _load(f, str(src), limit)
    return _load(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src, where, limit)


def _load(f, where: str, limit: int):
    u = _PlainUnpickler(f, where, limit)
    try:
        obj = u.load()
    except (UnsafePickleError, EDGError):
        raise
    except Exception as e:  # damaged or lying data that got past the table: a malformed pickle
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UnsafePickleError(f"{where}: not a readable pickle of plain data ({type(e).__name__}: {first})") from None
    if not u.guard.arrays_made:
        return obj
    try:
        return _plain(obj, {})
    except RecursionError:
        raise UnsafePickleError(f"{where}: the pickle nests arrays in containers too deep to read") from None


def safe_load_npz(path: str | Path, max_alloc: int | None = None) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file; object arrays are unpickled with ``safe_load``. A member whose header
    announces more bytes than its zip entry holds is refused, and so is one over ``max_alloc`` (default
    ``max_alloc_bytes()``) stored compressed more than ``MAX_NPZ_RATIO``:1 (a few bytes inflating to gigabytes);
    both before numpy allocates the array."""
    from numpy.lib import format as npf
    path = Path(path)
    limit = max_alloc_bytes() if max_alloc is None else max_alloc
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-4]
            with z.open(info) as f:
                version = npf.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = npf.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = npf.read_array_header_2_0(f)
                else:
                    raise EDGError(f"{path}:{name}: .npy format version {version} is not supported here")
                if dtype.hasobject:
                    arr = safe_load(f, f"{path}:{name}", limit)
                    if not isinstance(arr, np.ndarray) or arr.shape != tuple(shape):
                        raise EDGError(f"{path}:{name}: object array member does not hold an array of shape {shape}")
                else:
                    nbytes = math.prod(shape) * dtype.itemsize
                    _check_npz_member(path, name, info, f.tell(), nbytes, limit)
                    arr = _read_npy_data(f, shape, fortran, dtype, f"{path}:{name}")
            out[name] = arr
    return out


MAX_NPZ_RATIO = 16  # compression ratio past which a member over the limit is taken for a bomb


def _check_npz_member(path, name: str, info: zipfile.ZipInfo, header: int, nbytes: int, limit: int) -> None:
    if header + nbytes != info.file_size:
        raise EDGError(f"{path}:{name}: the .npy header announces {nbytes} bytes of data but the zip entry holds "
                       f"{info.file_size - header}")
    if nbytes > limit and nbytes > MAX_NPZ_RATIO * max(info.compress_size, 1):
        raise UnsafePickleError(f"{path}:{name}: {info.compress_size} compressed bytes would inflate to an array of "
                                f"{nbytes} bytes, over the limit of {limit} bytes (raise it with {MAX_ALLOC_ENV}); "
                                "refused before allocating")


def _read_npy_data(f, shape, fortran: bool, dtype: np.dtype, where: str) -> np.ndarray:
    """The array data after a checked .npy header, read in one piece (its size is known and checked)."""
    arr = np.empty(math.prod(shape), dtype=dtype)
    view, got = memoryview(arr.view(np.uint8)), 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise EDGError(f"{where}: the member ends after {got} of {len(view)} bytes of array data")
        got += n
    return arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TORCH_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_TORCH_REASON = re.compile(r"WeightsUnpickler error: ([^\n]+)")


def torch_refusal(path, e: Exception) -> str:
    """One line for a ``torch.load(weights_only=True)`` failure of ``path``: the refused global when torch names
    one, else torch's own reason, never its multi-line advice or terminal colour codes."""
    text = _ANSI.sub("", str(e))
    m = _TORCH_GLOBAL.search(text)
    if m:
        return (f"{path}: the file refers to {m.group(1)}, which is not plain data (tensors, containers, "
                "numbers); refused without running it")
    m = _TORCH_REASON.search(text)
    first = m.group(1) if m else next((ln for ln in text.splitlines() if ln.strip()), type(e).__name__)
    return f"{path}: cannot be read as plain data ({type(e).__name__}: {first.strip()[:200]})"


MAX_CHECKPOINT_PICKLE_BYTES = 256 << 20  # a checkpoint's data.pkl (structure only; tensors are separate records)


def _checkpoint_refused() -> set[str]:
    """Globals torch's weights-only loader allows but a checkpoint of tensors never needs, and that allocate what
    their arguments ask: ``bytearray(n)`` and the legacy tensor classes (``torch.FloatTensor(200000, 100000)``)."""
    import torch
    return {"builtins.bytearray", "__builtin__.bytearray"} | {
        f"{c.__module__}.{c.__name__}" for c in torch._tensor_classes}


def check_torch_checkpoint(path) -> None:
    """Read the pickle of a zip-format torch checkpoint opcode by opcode, without running anything, and refuse
    one that names a global of ``_checkpoint_refused`` (``UnsafePickleError``, one line naming it). Torch's
    weights-only unpickler resolves globals only through the ``GLOBAL`` opcode, so this sees every one it would
    call. A legacy (non-zip) checkpoint is left to torch's own checks."""
    import pickletools
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return
    refused = _checkpoint_refused()
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if info.filename.rsplit("/", 1)[-1] != "data.pkl":
                continue
            if info.file_size > MAX_CHECKPOINT_PICKLE_BYTES:
                raise UnsafePickleError(f"{path}: its pickle {info.filename} has {info.file_size} bytes, over the "
                                        f"{MAX_CHECKPOINT_PICKLE_BYTES} a checkpoint's structure needs; refused")
            try:
                for op, arg, _ in pickletools.genops(z.read(info)):
                    if op.name == "GLOBAL" and arg.replace(" ", ".", 1) in refused:
                        raise UnsafePickleError(
                            f"{path}: the checkpoint calls {arg.replace(' ', '.', 1)}, which allocates what its "
                            "arguments ask and which a checkpoint of tensors never needs; refused without running it")
            except UnsafePickleError:
                raise
            except Exception as e:  # genops on a malformed pickle; torch would fail on it too
                raise UnsafePickleError(f"{path}: its pickle {info.filename} is malformed ({type(e).__name__}: "
                                        f"{_one_line(e)})") from None


def safe_torch_load(path, allowed_globals=()):
    """``torch.load(path, weights_only=True)`` on the CPU, after ``check_torch_checkpoint``; any failure is one
    ``UnsafePickleError`` line (``torch_refusal``: the refused global, never torch's advice or colour codes).
    ``allowed_globals``: extra classes torch may rebuild (e.g. ``argparse.Namespace``)."""
    import torch
    check_torch_checkpoint(path)
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UnsafePickleError(torch_refusal(path, e)) from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__

"""CPU stand-ins for CuPy and GPU4PySCF, so that the GPU branches of ``dft/`` run (and fail) in the CPU suite.

They model the behaviour our code relies on, checked against CuPy 14 and gpu4pyscf 1.9's source, not the
libraries' internals:

* ``DeviceArray`` plays ``cupy.ndarray``: numpy-backed; numpy's functions and operators dispatch to it and
  return device arrays (CuPy's ``__array_ufunc__``/``__array_function__``); implicit conversion to numpy
  raises ``TypeError`` (CuPy's ``__array__``); ``.get()`` copies to the host.
* Kernels are asynchronous: the stand-in kernels queue their cost (``FakeDevice.costs``, seconds) and return at
  once; ``cupy.cuda.Device().synchronize()``, ``.get()`` and ``float()`` wait for the queue, as CUDA does.
* ``CPArrayWithTag`` plays gpu4pyscf's tagged density matrices: a ``cupy.ndarray`` subclass defined in
  another module (``gpu4pyscf.lib.cupy_helper``).
* ``gpu4pyscf.dft.RKS/UKS`` wrap PySCF's SCF and hand back device arrays where gpu4pyscf does (density
  matrices, core Hamiltonian, orbital energies, ``_numint`` results); ``dip_moment`` copies the density matrix
  to the host as gpu4pyscf does. ``dft.numint.eval_ao`` has gpu4pyscf >= 1.2's signature and layouts
  (``transpose=True``, the default: (npts, nao); ``False``: (nao, npts)) and builds a ``_GDFTOpt`` when none is
  given (builds are counted); ``gto.int3c1e.int1e_grids(mol, grids, dm=...)`` contracts PySCF's integrals.
* ``cupy.get_default_memory_pool()`` / ``get_default_pinned_memory_pool()`` count ``free_all_blocks`` calls; the
  device pool keeps the limit ``set_limit(size=...)`` gave it (``FakeDevice.pool_limit``; CuPy's signature), and
  ``cupy.cuda.runtime.memGetInfo()`` reports ``FakeDevice.memory`` bytes (free, total).

``install(monkeypatch)`` puts them in ``sys.modules`` as ``cupy`` and ``gpu4pyscf.*`` for one test and returns
the ``FakeDevice`` (kernel costs, synchronisations, pool releases, optimiser builds).
"""
from __future__ import annotations

import sys
import time
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin


class FakeDevice:
    """Queued kernel time, synchronisations and memory-pool releases of the one stand-in GPU."""

    def __init__(self):
        self.costs = {"eval_ao": 0.0, "int1e_grids": 0.0}
        self.pending = 0.0
        self.syncs = 0
        self.pool_frees = 0
        self.pinned_frees = 0
        self.opt_builds = 0
        self.memory = 80 * 2**30   # bytes of device memory (an H100)
        self.pool_limit = 0        # CuPy's pool limit in bytes (0: none)

    def launch(self, kernel: str) -> None:
        self.pending += self.costs.get(kernel, 0.0)

    def synchronize(self) -> None:
        self.syncs += 1
        if self.pending > 0:
            time.sleep(self.pending)
        self.pending = 0.0


DEVICE = FakeDevice()
IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy "
            "array explicitly.")


def _host(x):
    """The numpy data behind device arrays (in tuples and lists too), without waiting for the device."""
    if isinstance(x, DeviceArray):
        return x._data
    if isinstance(x, (tuple, list)):
        return type(x)(_host(v) for v in x)
    if isinstance(x, dict):
        return {k: _host(v) for k, v in x.items()}
    return x


def _wrap(x):
    if isinstance(x, np.ndarray):
        return DeviceArray(x)
    if isinstance(x, np.generic):
        return DeviceArray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    return x


class DeviceArray(NDArrayOperatorsMixin):
    """``cupy.ndarray`` stand-in (see the module docstring)."""
    __module__ = "cupy"  # what type(cupy_array).__module__ says for CuPy's own arrays

    def __init__(self, data):
        if isinstance(data, DeviceArray):
            data = data._data
        self._data = np.asarray(data)

    # -- what CuPy refuses or does explicitly
    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT)

    def get(self) -> np.ndarray:
        DEVICE.synchronize()
        return self._data.copy()

    def __float__(self) -> float:
        DEVICE.synchronize()
        return float(self._data)

    # -- numpy protocol: results stay on the device
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.pop("out", None)
        if out is not None:
            kwargs["out"] = tuple(_host(o) for o in out)
        result = getattr(ufunc, method)(*_host(inputs), **_host(kwargs))
        return out[0] if out is not None and len(out) == 1 else _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_host(args), **_host(kwargs)))

    # -- the ndarray surface the code under test uses
    shape = property(lambda self: self._data.shape)
    ndim = property(lambda self: self._data.ndim)
    dtype = property(lambda self: self._data.dtype)
    size = property(lambda self: self._data.size)
    T = property(lambda self: DeviceArray(self._data.T))

    def __len__(self):
        return len(self._data)

    def __getitem__(self, key):
        return _wrap(self._data[_host(key)])

    def __setitem__(self, key, value):
        self._data[_host(key)] = _host(value)

    def reshape(self, *shape, **kw):
        return DeviceArray(self._data.reshape(*shape, **kw))

    def transpose(self, *axes):
        return DeviceArray(self._data.transpose(*axes))

    def ravel(self):
        return DeviceArray(self._data.ravel())

    def copy(self):
        return DeviceArray(self._data.copy())

    def astype(self, dtype):
        return DeviceArray(self._data.astype(dtype))

    def sum(self, *a, **k):
        return _wrap(self._data.sum(*a, **k))

    def max(self, *a, **k):
        return _wrap(self._data.max(*a, **k))

    def min(self, *a, **k):
        return _wrap(self._data.min(*a, **k))

    def mean(self, *a, **k):
        return _wrap(self._data.mean(*a, **k))

    def dot(self, other):
        return _wrap(self._data.dot(_host(other)))

    def __repr__(self):
        return f"DeviceArray({self._data!r})"


class CPArrayWithTag(DeviceArray):
    """gpu4pyscf's tagged array: a ``cupy.ndarray`` subclass whose class lives outside the ``cupy`` package."""
    __module__ = "gpu4pyscf.lib.cupy_helper"

    def __init__(self, data, **tags):
        super().__init__(data)
        self.__dict__.update(tags)


# ---------------------------------------------------------------- cupy
class _Pool:
    def __init__(self, attr: str):
        self.attr = attr

    def free_all_blocks(self):
        setattr(DEVICE, self.attr, getattr(DEVICE, self.attr) + 1)

    def set_limit(self, size=None, fraction=None):
        if size is not None and fraction is not None:
            raise ValueError("size and fraction cannot be specified at one time")
        DEVICE.pool_limit = int(fraction * DEVICE.memory) if fraction is not None else int(size or 0)

    def get_limit(self):
        return DEVICE.pool_limit


def _cupy_module() -> types.ModuleType:
    m = types.ModuleType("cupy")
    m.ndarray = DeviceArray
    m.float64, m.float32, m.float16 = np.float64, np.float32, np.float16
    m.asarray = lambda a, dtype=None, order=None: (
        a if isinstance(a, DeviceArray) and dtype is None else DeviceArray(np.asarray(_host(a), dtype=dtype)))
    m.asnumpy = lambda a: a.get() if isinstance(a, DeviceArray) else np.asarray(a)
    m.empty = lambda shape, dtype=np.float64: DeviceArray(np.empty(shape, dtype=dtype))
    m.zeros = lambda shape, dtype=np.float64: DeviceArray(np.zeros(shape, dtype=dtype))
    m.maximum = np.maximum          # ufuncs dispatch to DeviceArray
    m.linalg = np.linalg            # so do numpy's functions
    m.get_array_module = lambda *arrays: m if any(isinstance(a, DeviceArray) for a in arrays) else np
    device = types.SimpleNamespace(synchronize=DEVICE.synchronize)
    m.cuda = types.SimpleNamespace(
        Device=lambda *a: device,
        get_current_stream=lambda: device,
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, memGetInfo=lambda: (DEVICE.memory, DEVICE.memory)))
    pool, pinned = _Pool("pool_frees"), _Pool("pinned_frees")
    m.get_default_memory_pool = lambda: pool
    m.get_default_pinned_memory_pool = lambda: pinned
    return m


# ---------------------------------------------------------------- gpu4pyscf
class _NumInt:
    """gpu4pyscf's NumInt as energy_components uses it: device density matrices in, device results out."""

    def __init__(self, ni):
        self._ni = ni

    def _call(self, name, mol, grids, xc_code, dms, *a, **k):
        if not isinstance(dms, DeviceArray):
            raise TypeError(f"stand-in {name}: expected a device density matrix, got {type(dms).__name__}")
        n, exc, vmat = getattr(self._ni, name)(mol, grids, xc_code, _host(dms), *a, **k)
        return n, DeviceArray(np.asarray(exc)), DeviceArray(vmat)

    def nr_rks(self, *a, **k):
        return self._call("nr_rks", *a, **k)

    def nr_uks(self, *a, **k):
        return self._call("nr_uks", *a, **k)


class _SCF:
    """gpu4pyscf's RKS/UKS as dft/scf.py uses them: PySCF underneath, matrices handed back on the device."""

    def __init__(self, mf):
        object.__setattr__(self, "_mf", mf)

    def __getattr__(self, name):
        return getattr(self._mf, name)

    def __setattr__(self, name, value):
        setattr(self._mf, name, value)

    def kernel(self, dm0=None):
        return self._mf.kernel(dm0=None if dm0 is None else _host(dm0))

    def density_fit(self, auxbasis=None, **kw):
        return _SCF(self._mf.density_fit(auxbasis=auxbasis, **kw))

    def newton(self):
        return _SCF(self._mf.newton())

    def make_rdm1(self, *a, **k):
        return CPArrayWithTag(self._mf.make_rdm1(*a, **k), mo_coeff=DeviceArray(self._mf.mo_coeff),
                              mo_occ=DeviceArray(self._mf.mo_occ))

    def get_hcore(self, *a):
        return DeviceArray(self._mf.get_hcore(*a))

    mo_energy = property(lambda self: DeviceArray(self._mf.mo_energy))
    mo_occ = property(lambda self: DeviceArray(self._mf.mo_occ))
    mo_coeff = property(lambda self: DeviceArray(self._mf.mo_coeff))
    _numint = property(lambda self: _NumInt(self._mf._numint))

    def dip_moment(self, mol=None, dm=None, unit="Debye", origin=None, verbose=3):
        dm = self.make_rdm1() if dm is None else dm
        return self._mf.dip_moment(mol or self._mf.mol, dm.get(), unit=unit, origin=origin, verbose=verbose)


def _rks(mol, xc="LDA,VWN"):
    from pyscf import dft
    mf = dft.RKS(mol)
    mf.xc = xc
    return _SCF(mf)


def _uks(mol, xc="LDA,VWN"):
    from pyscf import dft
    mf = dft.UKS(mol)
    mf.xc = xc
    return _SCF(mf)


class _GDFTOpt:
    def __init__(self, mol):
        self.mol = mol
        self._sorted_mol = mol

    @classmethod
    def from_mol(cls, mol):
        DEVICE.opt_builds += 1
        return cls(mol)


def _eval_ao(mol, coords, deriv=0, shls_slice=None, nao_slice=None, ao_loc_slice=None, non0tab=None, out=None,
             verbose=None, ctr_offsets_slice=None, gdftopt=None, transpose=True, screening_info=None):
    from pyscf.dft import numint
    if gdftopt is None:
        gdftopt = _GDFTOpt.from_mol(mol)
    if mol not in (gdftopt.mol, gdftopt._sorted_mol):
        raise RuntimeError("mol object is not compatible with gdftopt.")
    ao = numint.eval_ao(mol, _host(coords), deriv=deriv)  # (npts, nao): PySCF's layout
    DEVICE.launch("eval_ao")
    return DeviceArray(ao if transpose else np.ascontiguousarray(ao.T))


def _int1e_grids(mol, grids, charge_exponents=None, dm=None, charges=None, direct_scf_tol=1e-13, intopt=None):
    ints = mol.intor("int1e_grids", grids=_host(grids))  # (npts, nao, nao)
    DEVICE.launch("int1e_grids")
    return DeviceArray(np.einsum("gij,ij->g", ints, _host(dm)))


def _gpu4pyscf_modules() -> dict[str, types.ModuleType]:
    mods = {name: types.ModuleType(name) for name in (
        "gpu4pyscf", "gpu4pyscf.lib", "gpu4pyscf.lib.cupy_helper", "gpu4pyscf.dft", "gpu4pyscf.dft.numint",
        "gpu4pyscf.gto", "gpu4pyscf.gto.int3c1e")}
    mods["gpu4pyscf"].__version__ = "stand-in"
    mods["gpu4pyscf.lib.cupy_helper"].CPArrayWithTag = CPArrayWithTag
    mods["gpu4pyscf.dft"].RKS, mods["gpu4pyscf.dft"].UKS = _rks, _uks
    mods["gpu4pyscf.dft.numint"].eval_ao = _eval_ao
    mods["gpu4pyscf.dft.numint"]._GDFTOpt = _GDFTOpt
    mods["gpu4pyscf.gto.int3c1e"].int1e_grids = _int1e_grids
    for name, mod in mods.items():  # parent.child attributes, as an import would set them
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(mods[parent], child, mod)
    return mods


def install(monkeypatch) -> FakeDevice:
    """Put the stand-ins in ``sys.modules`` for one test (monkeypatch undoes it) and return the fresh device."""
    global DEVICE
    from edg.dft import backend
    DEVICE = FakeDevice()
    monkeypatch.setitem(sys.modules, "cupy", _cupy_module())
    for name, mod in _gpu4pyscf_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    # the real check without its process-wide cache, so the stand-ins' answer never outlives the test
    monkeypatch.setattr(backend, "gpu_usable", backend.gpu_usable.__wrapped__)
    return DEVICE

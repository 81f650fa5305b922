"""``DFTWorker``: one molecule in, one result file out; a bad molecule is a ``Failure``, never an exception.

A plain class (no Ray): the stage driver (``cluster.engine.run_stage``, declared in ``dft/stage.py``) runs
it in this process or on Ray actors and owns resume and the failure manifest. The worker writes through a
``RunWriter`` bound to the run folder (``edg_core.run_folder``), whose ``DFTLayout`` spells the output::

    <run>/fields/<pp>/<key>.npz one DFTResult per molecule (``load_result``), key = sample_key(mol.id),
                                pp = 2 hex digits of the key's SHA-1 (256 folders: ~8k files each at
                                2 M molecules); results of older runs in <run>/fields/<key>.npz are
                                still found (``done_keys``, ``result_files``, ``find_result``)
    <run>/cubes/<key>.ed.cube   optional Gaussian cubes (``save_cubes``)
    <run>/failures.jsonl        {record, key, stage, reason} per failed molecule (the driver's)

For a URL run (``s3://bucket/run/dft``) each file is staged locally and uploaded whole by the writer.
The functions ``result_files``, ``find_result`` and ``done_keys`` read a DFT output (a path or a URL) as input.
"""
from __future__ import annotations

import logging
import time
import weakref
from pathlib import Path

from edg.edg_core.cube import write_cube
from edg.edg_core.errors import DiskFullError, InvalidRecord
from edg.edg_core.grid import grid_for_positions
from edg.edg_core.molecule import Molecule
from edg.edg_core.run_folder import DFTLayout, RunWriter
from edg.edg_core.shards import sample_key
from edg.edg_core.stage import BatchResult, Failure
from edg.edg_core.storage import exists, is_remote, join, list_files

from . import fields
from .backend import (
    cap_memory_pool,
    is_out_of_memory,
    pool_fraction,
    release_memory_pool,
    resolve_backend,
    synchronize,
    to_numpy,
)
from .budget import check_size
from .config import DFTConfig
from .result import DFTResult, load_result, save_result
from .scf import SCFTimeout, basis_convention, dipole_debye, energy_components, frontier_orbitals, jk_method, run_scf
from .warm import WarmStart

__all__ = ["DFTWorker", "load_result", "done_keys", "find_result", "result_files",
           "result_path", "result_rel"]

log = logging.getLogger(__name__)
STAGE = "dft"


class SCFNotConverged(RuntimeError):
    pass


def result_rel(key: str) -> str:
    """The result file of ``key`` relative to the run: ``fields/<pp>/<key>.npz`` (``DFTLayout``): no folder
    holds more than ~1/256 of the results (directories and object-store listings stay small)."""
    return DFTLayout.result_rel(key)


def result_path(out: str | Path, key: str):
    """Where the result file of ``key`` is written: a ``Path``, or a URL string for a remote ``out``."""
    return join(out, *result_rel(key).split("/"))


def result_files(out: str | Path) -> list[str]:
    """Paths (or URLs) of every result file in ``out``: the nested layout and the flat one of older runs."""
    folder = join(out, DFTLayout.FIELDS)
    return list_files(folder, "*/*.npz") + list_files(folder, "*.npz")


def find_result(out: str | Path, key: str):
    """The existing result file of ``key`` (nested layout, else the flat one of older runs), or None."""
    for p in (result_path(out, key), join(out, *DFTLayout.flat_result_rel(key).split("/"))):
        if exists(p):
            return p
    return None


def remove_interrupted_writes(out: str | Path) -> None:
    """Remove the temp files that writers killed mid-write left in a local DFT output (``fields/`` and the
    folder itself; only those of dead processes). The DFT stage does this through its run folder
    (``RunFolder.remove_interrupted_writes``) before it looks at what is done."""
    from edg.edg_core.io import remove_stale_temps
    if not is_remote(out):
        for p in remove_stale_temps(join(out, DFTLayout.FIELDS)) + remove_stale_temps(out, recursive=False):
            log.info("removed %s (left by an interrupted write)", p)


def done_keys(out: str | Path) -> set[str]:
    """Keys with a finished result file in ``out`` (a folder or a URL), in either layout.

    Read-only. In a local folder a result file that is not a whole ``.npz`` (cut short by a copy, damaged on
    disk) is not done: it is logged and computed again (the new file replaces it). Remote result files are
    uploaded whole, so their listing is trusted."""
    keys = set()
    for p in result_files(out):
        if not is_remote(p) and not _whole_npz(p):
            log.warning("%s is truncated or unreadable: its molecule will be computed again", p)
            continue
        keys.add(p.rsplit("/", 1)[-1][:-4])
    return keys


def _whole_npz(path) -> bool:
    """Whether ``path`` ends in the end-of-central-directory record of a whole zip (``.npz``) whose directory
    sits right before it: one 22-byte read, 4x cheaper than opening it with ``zipfile`` (26 -> 6.6 us per file;
    a resume scan of 2 M results). A file cut short, empty or not a zip fails; ZIP64 archives (over 4 GB or
    65,535 members; not written here) are checked by ``zipfile``."""
    import struct
    import zipfile
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < 22:
                return False
            f.seek(size - 22)
            eocd = f.read(22)
    except OSError:
        return False
    sig, cd_size, cd_offset = eocd[:4], *struct.unpack("<II", eocd[12:20])
    if sig != b"PK\x05\x06":
        return False
    if cd_offset == 0xFFFFFFFF or cd_size == 0xFFFFFFFF:
        try:
            with zipfile.ZipFile(path) as z:
                return "meta.npy" in z.namelist()
        except (OSError, zipfile.BadZipFile, ValueError):
            return False
    return cd_offset + cd_size == size - 22


def check_budget(mol: Molecule, cfg: DFTConfig) -> None:
    """Raise ``InvalidRecord`` naming the size when ``mol`` exceeds ``cfg.max_atoms`` or its cube grid exceeds
    ``cfg.max_grid_points``, before any SCF (``dft.budget.check_size``; the basis-function budget and the time
    limit are checked inside ``run_scf``)."""
    check_size(mol, cfg)


class DFTWorker:
    """Runs DFT (+ ED/ESP fields) for one molecule at a time with a fixed ``DFTConfig``.

    ``out``: a ``RunWriter`` bound to the run folder (``RunFolder.writer()``; a plain path or URL is taken as
    one), or None: compute only, nothing written. ``keep_on_gpu`` leaves ED/ESP
    as CuPy arrays in the returned ``DFTResult`` (hand them to torch with ``dft.handoff.cupy_to_torch``).
    The worker writes result files only; the stage driver (``cluster.engine.run_stage``) owns the failure
    manifest, resume and batching (``process_batch``).

    Along a trajectory (consecutive molecules with the same atoms that moved little) the SCF starts from the
    previous frames' densities (``cfg.warm_start``, ``dft.warm.WarmStart``). On the GPU, CuPy's pool is capped
    at this process's share of the card (``cfg.gpu_memory_fraction``, else 0.9 x the Ray actor's GPU share:
    ``backend.pool_fraction``) and keeps its blocks from one molecule to the next; it is emptied after a
    failed molecule and when the worker is closed (``close``, or when it is garbage-collected).
    """

    def __init__(self, cfg: DFTConfig | None = None, out: RunWriter | str | Path | None = None,
                 keep_on_gpu: bool = False):
        self.cfg = cfg or DFTConfig()
        self.backend = resolve_backend(self.cfg.backend)
        self.out = out if out is None or isinstance(out, RunWriter) else RunWriter(str(out))
        self.keep_on_gpu = keep_on_gpu and self.backend == "gpu"
        self.warm = WarmStart(self.cfg.warm_start_max_shift) if self.cfg.warm_start else None
        self.pool_cap_bytes = 0
        if self.backend == "gpu":
            fraction = pool_fraction(self.cfg.gpu_memory_fraction)
            self.pool_cap_bytes = cap_memory_pool(self.backend, fraction)
            log.info("DFT worker: CuPy memory pool capped at %.1f GiB (%.3f of the GPU)",
                     self.pool_cap_bytes / 2**30, fraction)
        weakref.finalize(self, release_memory_pool, self.backend)

    def close(self) -> None:
        """Hand the GPU memory this worker's pool holds back to the driver (at the end of a stage; also done
        when the worker is garbage-collected). The worker stays usable."""
        release_memory_pool(self.backend)

    # ------------------------------------------------------------ pure computation
    def compute(self, mol: Molecule) -> DFTResult:
        """SCF + labels + fields for ``mol``; raises on failure (``SCFNotConverged``, ``SCFTimeout``, ...).

        After a failure the warm-start chain ends and, on the GPU, CuPy's cached blocks go back to the driver
        (an out-of-memory error leaves the pool at its peak); after a success they stay for the next molecule,
        within the pool's cap."""
        try:
            check_budget(mol, self.cfg)
            return self._compute(mol)
        except BaseException:
            if self.warm is not None:
                self.warm.forget()
            release_memory_pool(self.backend)
            raise

    def _compute(self, mol: Molecule) -> DFTResult:
        cfg, t0 = self.cfg, time.monotonic()
        out = run_scf(mol, cfg, self.backend, warm=self.warm)
        if not out.converged:
            raise SCFNotConverged(f"SCF not converged after attempts {out.attempts} "
                                  f"(last E = {float(out.mf.e_tot):.8f} Eh)")
        if self.warm is not None:
            self.warm.remember(mol, out.mol, out.mf.make_rdm1())
        timings = {"scf_s": out.wall_s}
        energies = energy_components(out)
        homo, lumo = frontier_orbitals(out)
        kind = "RKS" if out.mol.spin == 0 else "UKS"
        basis = out.mol.basis
        r = DFTResult(id=mol.id, energies=energies, homo=homo, lumo=lumo, dipole=dipole_debye(out),
                      converged=True, wall_s=0.0, z=mol.z, pos=mol.pos, charge=mol.charge,
                      multiplicity=mol.multiplicity, attempts=out.attempts, scf_cycles=out.cycles,
                      basis_functions=basis_convention(out.mol),
                      method=f"{kind} {cfg.xc}/{basis} {basis_convention(out.mol)} {jk_method(cfg, basis)} "
                             f"({self.backend})")
        if cfg.fields:
            self._fields(mol, out, r, timings)
        r.timings = timings
        r.wall_s = time.monotonic() - t0
        return r

    def _fields(self, mol: Molecule, out, r: DFTResult, timings: dict) -> None:
        """ED and ESP on the molecule's cube grid into ``r``; ``timings`` gets ``ed_s``/``esp_s`` measured
        after the device has finished each (CuPy kernels are asynchronous)."""
        cfg = self.cfg
        grid = grid_for_positions(mol.pos, cfg.grid_spacing, cfg.grid_padding)
        pts = fields.grid_points(grid, self.backend)
        dm = out.dm
        synchronize(self.backend)  # the SCF's and the grid upload's queued work is not the ED's
        t = time.monotonic()
        ed = fields.density(out.mol, dm, pts, self.backend).reshape(grid.shape)
        synchronize(self.backend)
        timings["ed_s"] = time.monotonic() - t
        t = time.monotonic()
        if cfg.esp_mode_for(self.backend) == "band":
            from .esp_band import esp_band_cpu
            esp, exact = esp_band_cpu(out.mol, dm, pts, ed, iso=cfg.iso_value, band=cfg.esp_band,
                                      stride=cfg.esp_stride, chunk=cfg.chunk_points,
                                      max_memory_mb=cfg.max_memory_mb)
            r.esp_exact_fraction = float(exact.mean())
        else:  # the GPU evaluates the full grid in a fraction of a second: no band needed
            esp = fields.esp(out.mol, dm, pts, self.backend, cfg.chunk_points, cfg.max_memory_mb)
        synchronize(self.backend)
        timings["esp_s"] = time.monotonic() - t
        esp = esp.reshape(grid.shape)
        if not self.keep_on_gpu:
            ed, esp = to_numpy(ed), to_numpy(esp)
        r.grid, r.ed, r.esp = grid, ed, esp

    # ------------------------------------------------------------ one molecule with bookkeeping
    def _fail(self, record: str, key: str, reason: str, stage: str = STAGE) -> dict:
        """The status of a molecule given up on: the ``Failure`` the driver records (under ``failure``), built
        once here, and its fields as the status dict's ``id``/``key``/``stage``/``reason``."""
        log.warning("%s: %s failed: %s", record, stage, reason)
        f = Failure.of(record, stage, reason, key)
        return {"key": f.key, "id": f.record, "status": "failed", "reason": f.reason, "stage": f.stage, "failure": f}

    def process(self, mol: Molecule | InvalidRecord, write: bool = True) -> dict:
        """Compute and write one molecule; never raises for a bad molecule. Returns a small status dict
        ``{key, id, status: done|failed, reason?, stage?, failure?, wall_s?}``: a failed molecule's ``Failure``
        under ``failure`` (``reason``/``stage`` are its fields), the ``DFTResult`` under ``result`` when ``out``
        is None or not ``write``."""
        if isinstance(mol, InvalidRecord):
            return self._fail(mol.record, sample_key(mol.record), mol.problem, stage="read")
        key = sample_key(mol.id)
        try:
            r = self.compute(mol)
        except InvalidRecord as e:
            return self._fail(mol.id, key, f"invalid input: {e.problem}")
        except SCFNotConverged as e:
            return self._fail(mol.id, key, f"not converged: {e}")
        except SCFTimeout as e:  # budget.TimeLimitExceeded: the time, the limit, the attempt and cycle
            return self._fail(mol.id, key, f"timeout: {e}")
        except Exception as e:  # one bad molecule never stops the run
            if is_out_of_memory(e):
                return self._fail(mol.id, key, f"out of memory ({type(e).__name__})")
            log.debug("%s: unexpected DFT error", mol.id, exc_info=True)
            return self._fail(mol.id, key, f"error: {type(e).__name__}: {e}")
        status = {"key": key, "id": mol.id, "status": "done", "wall_s": r.wall_s, "E6": r.energies["E6"]}
        if self.out is None or not write:
            status["result"] = r
            return status
        self.write(key, r)
        return status

    def write(self, key: str, r: DFTResult):
        """Write the result file (and cubes when configured) into the run; returns where the result file is."""
        if self.cfg.save_cubes and r.ed is not None:
            for name, values, what in (("ed", r.ed, "electron density e/bohr^3"), ("esp", r.esp, "ESP Hartree/e")):
                with self.out.file(DFTLayout.cube_rel(key, name)) as path:
                    write_cube(path, r.grid, values, r.z, r.pos, f"{r.id} {what}")
        rel = DFTLayout.result_rel(key)
        try:
            with self.out.file(rel) as path:
                save_result(path, r, self.cfg.field_dtype)
        except DiskFullError as e:
            raise DiskFullError(e.errno, f"molecule {r.id}: {e.strerror}", e.filename) from e
        return self.out.where(rel)

    __call__ = process

    # ------------------------------------------------------------ a batch, for the stage driver
    def process_batch(self, mols: list[Molecule]) -> BatchResult:
        """Compute and write every molecule of ``mols``: keys written, and a ``Failure`` per molecule that
        failed (``cluster.engine.run_stage`` records them)."""
        res = BatchResult()
        for mol in mols:
            st = self.process(mol)
            if st["status"] == "done":
                res.done.append(st["key"])
            else:
                res.failures.append(st["failure"])
        return res

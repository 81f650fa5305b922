"""``DFTWorker``: one molecule in, one result file out; failures go to a manifest and the run goes on.

A plain class (no Ray): the CLI runs it in-process with ``--workers 0`` and ``cluster/pool.py`` wraps it in
Ray actors. Output folder layout::

    <out>/fields/<pp>/<key>.npz one DFTResult per molecule (``load_result``), key = sample_key(mol.id),
                                pp = 2 hex digits of the key's SHA-1 (256 folders: ~8k files each at
                                2 M molecules); results of older runs in <out>/fields/<key>.npz are
                                still found (``done_keys``, ``result_files``, ``find_result``)
    <out>/cubes/<key>.ed.cube   optional Gaussian cubes (``save_cubes``)
    <out>/failures.jsonl        {record, key, stage, reason} per failed molecule

``out`` may be an fsspec URL (``s3://bucket/run/dft``): each file is written to a local staging folder and
uploaded whole (``edg_core.storage.Mirror``). Reruns skip molecules whose file exists, and (unless
``retry_failed``) those already in the manifest.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edg_core.cube import write_cube
from edg_core.errors import InvalidRecord
from edg_core.grid import grid_for_positions
from edg_core.io import append_jsonl, progress, read_jsonl
from edg_core.molecule import Molecule
from edg_core.shards import sample_key
from edg_core.storage import Mirror, exists, join, list_files

from . import fields
from .backend import is_out_of_memory, resolve_backend, to_numpy
from .config import DFTConfig
from .result import DFTResult, load_result, save_result
from .scf import SCFTimeout, basis_convention, dipole_debye, energy_components, frontier_orbitals, run_scf

__all__ = ["DFTWorker", "RunSummary", "load_result", "done_keys", "failed_keys", "find_result", "result_files",
           "result_path", "result_rel"]

log = logging.getLogger(__name__)
STAGE = "dft"


class SCFNotConverged(RuntimeError):
    pass


def result_rel(key: str) -> str:
    """The result file of ``key`` relative to ``out``: ``fields/<pp>/<key>.npz``, ``pp`` = the first two hex
    digits of SHA-1(key), so no folder holds more than ~1/256 of the results (POSIX directories and object-store
    listings stay small at millions of molecules)."""
    return f"fields/{hashlib.sha1(key.encode()).hexdigest()[:2]}/{key}.npz"


def result_path(out: str | Path, key: str):
    """Where the result file of ``key`` is written: a ``Path``, or a URL string for a remote ``out``."""
    return join(out, *result_rel(key).split("/"))


def result_files(out: str | Path) -> list[str]:
    """Paths (or URLs) of every result file in ``out``: the nested layout and the flat one of older runs."""
    folder = join(out, "fields")
    return list_files(folder, "*/*.npz") + list_files(folder, "*.npz")


def find_result(out: str | Path, key: str):
    """The existing result file of ``key`` (nested layout, else the flat one of older runs), or None."""
    for p in (result_path(out, key), join(out, "fields", f"{key}.npz")):
        if exists(p):
            return p
    return None


def done_keys(out: str | Path) -> set[str]:
    """Keys with a finished result file in ``out`` (a folder or a URL), in either layout."""
    return {p.rsplit("/", 1)[-1][:-4] for p in result_files(out)}


def failed_keys(out: str | Path) -> set[str]:
    """Keys recorded as failed by this stage in ``<out>/failures.jsonl``."""
    return {e["key"] for e in read_jsonl(join(out, "failures.jsonl")) if e.get("stage") == STAGE and "key" in e}


@dataclass
class RunSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    wall_s: float = 0.0
    failures_path: str = ""

    @property
    def mol_per_s(self) -> float:
        return self.done / self.wall_s if self.wall_s > 0 else 0.0

    def line(self) -> str:
        return (f"done {self.done}, skipped {self.skipped}, failed {self.failed} in {self.wall_s:.1f} s "
                f"({self.mol_per_s:.3f} mol/s)")


class DFTWorker:
    """Runs DFT (+ ED/ESP fields) for one molecule at a time with a fixed ``DFTConfig``.

    ``out`` is the output folder or URL (None: compute only, nothing written). ``keep_on_gpu`` leaves ED/ESP
    as CuPy arrays in the returned ``DFTResult`` (hand them to torch with ``dft.handoff.cupy_to_torch``).
    ``record_failures=False`` leaves ``failures.jsonl`` to the caller (a Ray driver, the file's one writer).
    """

    def __init__(self, cfg: DFTConfig | None = None, out: str | Path | None = None, keep_on_gpu: bool = False,
                 record_failures: bool = True):
        self.cfg = cfg or DFTConfig()
        self.backend = resolve_backend(self.cfg.backend)
        self.store = None if out is None else Mirror(out, exclude=("fields/*", "cubes/*"), temporary=True)
        self.out = None if out is None else self.store.url
        self.record_failures = record_failures and out is not None
        if self.record_failures:
            self.store.pull()  # a remote failures.jsonl, to append to
        self.keep_on_gpu = keep_on_gpu and self.backend == "gpu"

    # ------------------------------------------------------------ pure computation
    def compute(self, mol: Molecule) -> DFTResult:
        """SCF + labels + fields for ``mol``; raises on failure (``SCFNotConverged``, ``SCFTimeout``, ...)."""
        cfg, t0 = self.cfg, time.monotonic()
        out = run_scf(mol, cfg, self.backend)
        if not out.converged:
            raise SCFNotConverged(f"SCF not converged after attempts {out.attempts} "
                                  f"(last E = {float(out.mf.e_tot):.8f} Eh)")
        timings = {"scf_s": out.wall_s}
        energies = energy_components(out)
        homo, lumo = frontier_orbitals(out)
        kind = "RKS" if out.mol.spin == 0 else "UKS"
        r = DFTResult(id=mol.id, energies=energies, homo=homo, lumo=lumo, dipole=dipole_debye(out),
                      converged=True, wall_s=0.0, z=mol.z, pos=mol.pos, charge=mol.charge,
                      multiplicity=mol.multiplicity, attempts=out.attempts, basis_functions=basis_convention(out.mol),
                      method=f"{kind} {cfg.xc}/{out.mol.basis} {basis_convention(out.mol)} ({self.backend})")
        if cfg.fields:
            self._fields(mol, out, r, timings)
        r.timings = timings
        r.wall_s = time.monotonic() - t0
        return r

    def _fields(self, mol: Molecule, out, r: DFTResult, timings: dict) -> None:
        cfg = self.cfg
        grid = grid_for_positions(mol.pos, cfg.grid_spacing, cfg.grid_padding)
        pts = fields.grid_points(grid, self.backend)
        dm = out.dm
        t = time.monotonic()
        ed = fields.density(out.mol, dm, pts, self.backend).reshape(grid.shape)
        timings["ed_s"] = time.monotonic() - t
        t = time.monotonic()
        if cfg.esp_mode == "band" and self.backend == "cpu":
            from .esp_band import esp_band_cpu
            esp, exact = esp_band_cpu(out.mol, dm, pts, ed, iso=cfg.iso_value, band=cfg.esp_band,
                                      stride=cfg.esp_stride, chunk=cfg.chunk_points,
                                      max_memory_mb=cfg.max_memory_mb)
            r.esp_exact_fraction = float(exact.mean())
        else:  # the GPU evaluates the full grid in a fraction of a second: no band needed
            esp = fields.esp(out.mol, dm, pts, self.backend, cfg.chunk_points, cfg.max_memory_mb)
        timings["esp_s"] = time.monotonic() - t
        esp = esp.reshape(grid.shape)
        if not self.keep_on_gpu:
            ed, esp = to_numpy(ed), to_numpy(esp)
        r.grid, r.ed, r.esp = grid, ed, esp

    # ------------------------------------------------------------ one molecule with bookkeeping
    def _fail(self, record: str, key: str, reason: str, stage: str = STAGE) -> dict:
        log.warning("%s: %s failed: %s", record, stage, reason)
        if self.record_failures:
            append_jsonl(self.store.local / "failures.jsonl", {"record": record, "key": key, "stage": stage,
                                                               "reason": reason, "time": time.time()})
            self.store.commit("failures.jsonl")
        return {"key": key, "id": record, "status": "failed", "reason": reason}

    def process(self, mol: Molecule | InvalidRecord, write: bool = True) -> dict:
        """Compute and write one molecule; never raises for a bad molecule. Returns a small status dict
        ``{key, id, status: done|failed, reason?, wall_s?}`` (and the ``DFTResult`` under ``result`` when
        ``out`` is None or not ``write``)."""
        if isinstance(mol, InvalidRecord):
            return self._fail(mol.record, sample_key(mol.record), mol.problem, stage="read")
        key = sample_key(mol.id)
        try:
            r = self.compute(mol)
        except InvalidRecord as e:
            return self._fail(mol.id, key, f"invalid input: {e.problem}")
        except SCFNotConverged as e:
            return self._fail(mol.id, key, f"not converged: {e}")
        except SCFTimeout:
            return self._fail(mol.id, key, f"timeout: SCF ran past {self.cfg.timeout_s} s")
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
        """Write the result file (and cubes when configured); returns where the result file is."""
        local = self.store.local
        if self.cfg.save_cubes and r.ed is not None:
            for name, values, what in (("ed", r.ed, "electron density e/bohr^3"), ("esp", r.esp, "ESP Hartree/e")):
                rel = f"cubes/{key}.{name}.cube"
                write_cube(local / rel, r.grid, values, r.z, r.pos, f"{r.id} {what}")
                self.store.commit(rel, keep=self.store.remote is None)
        rel = result_rel(key)
        save_result(local / rel, r, self.cfg.field_dtype)
        self.store.commit(rel, keep=self.store.remote is None)  # remote: uploaded, the staged copy goes
        return result_path(self.out, key)

    __call__ = process

    # ------------------------------------------------------------ in-process loop (no Ray)
    def run(self, records: Iterable[Molecule | InvalidRecord], total: int | None = None,
            retry_failed: bool = False) -> RunSummary:
        """Process every record not finished yet (and not failed before, unless ``retry_failed``)."""
        if self.out is None:
            raise ValueError("DFTWorker.run needs an output folder")
        skip = done_keys(self.out) | (set() if retry_failed else failed_keys(self.out))
        s = RunSummary(failures_path=str(join(self.out, "failures.jsonl")))
        t0 = time.monotonic()
        for rec in progress(records, f"dft ({self.backend})", total=total):
            key = sample_key(rec.record if isinstance(rec, InvalidRecord) else rec.id)
            if key in skip:
                s.skipped += 1
                continue
            st = self.process(rec)
            if st["status"] == "done":
                s.done += 1
            else:
                s.failed += 1
        s.wall_s = time.monotonic() - t0
        return s

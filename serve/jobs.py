"""Render jobs: one molecule -> DFT -> 6 ED views + 4 structure views (+ the teacher's targets), cached by content.

No Ray here: ``RenderRunner`` is a plain class that a Ray actor wraps (``serve.app``), like the stage workers.

* ``RenderSpec`` is what a job computes: the molecule, the ``DFTConfig`` and the ``RenderConfig`` (and the
  teacher's digest). Its ``job_id`` is a SHA-256 over those (positions rounded to 1e-5 Å; settings that do
  not change the result, such as the backend, budgets and progress lines, left out), so the same molecule with
  the same method and render settings is one job, and a finished one is found in the cache.
* ``RenderRunner.run`` does what ``edg dft`` + ``edg render`` do for one molecule, with the same workers:
  ``DFTWorker.process`` (E1..E6, ED and ESP), the fields rounded to the DFT result file's ``field_dtype`` as
  ``edg render`` reads them back, ``RenderWorker.render``, and, with a teacher, ``TargetExtractor`` on the
  structure images (F_S and EDP(F_S), as ``edg extract`` stores them). ``progress()`` says which step runs
  and the DFT's last SCF line (attempt, cycle, energy).
* ``ResultCache`` keeps each finished result as one JSON file, ``<cache>/<id[:2]>/<id>.json``, in a folder or
  any fsspec URL (written whole: a temp file and a rename, or one upload).
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from edg.dft.config import DFTConfig
from edg.edg_core.errors import EDGError
from edg.edg_core.molecule import Molecule
from edg.render.config import RenderConfig

log = logging.getLogger(__name__)
SCHEMA = "edg-serve-render/1"
POSITION_DECIMALS = 5
"""Positions enter the job id rounded to 1e-5 Å."""
DFT_OPERATIONAL = ("backend", "progress_s", "time_limit_s", "timeout_s", "max_memory_mb", "verbose", "save_cubes",
                   "chunk_points", "max_atoms", "max_grid_points", "max_basis_functions")
RENDER_OPERATIONAL = ("batch_size", "samples_per_chunk", "max_atoms", "max_grid_points")
"""Settings that change how a result is computed, not what it is: not part of the job id."""


class JobFailed(EDGError):
    """A render job that cannot give a result (SCF not converged, over the time limit, a render failure)."""


@dataclass
class RenderSpec:
    """One render job: the molecule, the DFT and render settings, and the teacher's digest (None: no teacher)."""
    molecule: Molecule
    dft: DFTConfig
    render: RenderConfig
    teacher_digest: str | None = None

    def job_id(self) -> str:
        m = self.molecule
        content = {
            "schema": SCHEMA, "z": m.z.tolist(), "charge": m.charge, "multiplicity": m.multiplicity,
            "pos": [f"{x:.{POSITION_DECIMALS}f}" for x in np.asarray(m.pos, np.float64).ravel() + 0.0],
            "dft": {k: v for k, v in dataclasses.asdict(self.dft).items() if k not in DFT_OPERATIONAL},
            "render": {k: v for k, v in dataclasses.asdict(self.render).items() if k not in RENDER_OPERATIONAL},
            "teacher": self.teacher_digest}
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=list).encode()).hexdigest()[:32]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder's ``teacher.pt`` (what identifies a teacher in job ids)."""
    from edg.edg_core.download import file_digests
    p = Path(path)
    return file_digests(p / "teacher.pt" if p.is_dir() else p).sha256


def basis_problem(basis: str, z) -> str | None:
    """Why the DFT cannot run ``basis`` on atoms ``z`` (an element the basis set lacks), or None."""
    import warnings

    from edg.edg_core.units import z_to_symbol
    from pyscf import gto
    for symbol in sorted({z_to_symbol(int(a)) for a in z}):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PySCF's hint to install basis-set-exchange
                gto.basis.load(basis, symbol)
        except Exception:  # noqa: BLE001 (PySCF raises several kinds for a missing element)
            return f"basis {basis} has no functions for {symbol}: this service cannot compute its density"
    return None


def png_b64(image: np.ndarray) -> str:
    """A (C, H, W) or (H, W) uint8 image as base64 PNG text."""
    from PIL import Image
    a = np.asarray(image, np.uint8)
    a = a if a.ndim == 2 else np.ascontiguousarray(a.transpose(1, 2, 0))
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=6)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def png_array(text: str) -> np.ndarray:
    """The uint8 array of ``png_b64`` text: (H, W) grey or (H, W, C)."""
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


class _SCFLines(logging.Handler):
    """Keeps the last SCF progress line the DFT logs (``dft.budget.SCFWatch``) for one molecule id."""

    def __init__(self, mol_id: str, sink):
        super().__init__(logging.INFO)
        self.mol_id, self.sink = mol_id, sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 (a bad log call must not fail the job)
            return
        if msg.startswith(f"{self.mol_id}: SCF"):
            self.sink(msg[len(self.mol_id) + 2:])


class RenderRunner:
    """Runs render jobs one at a time on this process's device; ``progress()`` may be called from another
    thread while ``run`` works. ``teacher``: a teacher checkpoint or run folder (None: no targets)."""

    def __init__(self, teacher: str | None = None, device: str | None = None):
        self.device = device
        self.teacher = None
        if teacher:
            from edg.train.extract import TargetExtractor
            self.teacher = TargetExtractor(teacher, device=device)
        self._lock = threading.Lock()
        self._state = {"job": None, "phase": "idle", "detail": "", "since": time.time()}

    def progress(self) -> dict:
        with self._lock:
            return dict(self._state)

    def _set(self, **kw) -> None:
        with self._lock:
            if "phase" in kw:
                kw.setdefault("detail", "")
                kw["since"] = time.time()
            self._state.update(kw)

    def run(self, spec: RenderSpec) -> dict:
        """The result of ``spec`` (see ``result_document``); ``JobFailed`` with one line when there is none."""
        jid = spec.job_id()
        self._set(job=jid, phase="dft", detail=f"SCF {spec.dft.xc.upper()}/{spec.dft.basis_for(spec.molecule.z)}")
        try:
            return self._run(spec, jid)
        finally:
            self._set(job=None, phase="idle")

    def _run(self, spec: RenderSpec, jid: str) -> dict:
        from edg.dft.backend import to_numpy
        from edg.dft.worker import DFTWorker
        from edg.render.worker import Fields, RenderWorker
        mol = spec.molecule
        timings = {}
        handler = _SCFLines(mol.id, lambda line: self._set(detail=line))
        dft_log = logging.getLogger("edg.dft")
        dft_log.addHandler(handler)
        saved_level = dft_log.level
        if dft_log.getEffectiveLevel() > logging.INFO:
            dft_log.setLevel(logging.INFO)
        t = time.monotonic()
        try:
            status = DFTWorker(spec.dft).process(mol, write=False)
        finally:
            dft_log.removeHandler(handler)
            dft_log.setLevel(saved_level)
        timings["dft_s"] = round(time.monotonic() - t, 3)
        if status["status"] != "done":
            raise JobFailed(f"DFT failed: {status['reason']}")
        r = status["result"]
        fields = None
        if r.ed is not None and r.esp is not None:  # as edg render reads them from the DFT result file
            dtype = spec.dft.field_dtype
            fields = Fields(r.grid, to_numpy(r.ed).astype(dtype).astype(np.float32),
                            to_numpy(r.esp).astype(dtype).astype(np.float32))
        self._set(phase="render", detail=f"{len(spec.render.ed_views)} ED + {len(spec.render.structure_views)} "
                                         f"structure views, {spec.render.image_size} px")
        t = time.monotonic()
        labels = {**r.energies, "dft_homo": float(r.homo), "dft_lumo": float(r.lumo)}
        res = RenderWorker(spec.render, device=self.device).render([dataclasses.replace(mol, labels=labels)],
                                                                   [fields])
        if res.failures or not res.samples:
            raise JobFailed(f"render failed: {res.failures[0].reason if res.failures else 'no images'}")
        sample = res.samples[0]
        timings["render_s"] = round(time.monotonic() - t, 3)
        targets = None
        if self.teacher is not None:
            self._set(phase="teacher", detail="F_S and EDP(F_S) from the structure images")
            t = time.monotonic()
            out = self.teacher.process_batch([sample])
            if out.failures:
                raise JobFailed(f"teacher failed: {out.failures[0].reason}")
            from edg.edg_core.shards import from_npy_bytes
            targets = {k: from_npy_bytes(out.samples[0][f"{k}.npy"]).astype(float).tolist() for k in ("fs", "edp")}
            timings["teacher_s"] = round(time.monotonic() - t, 3)
        return result_document(jid, spec, r, sample, targets, timings)


def result_document(jid: str, spec: RenderSpec, r, sample: dict, targets: dict | None, timings: dict) -> dict:
    """The JSON result of a job: molecule, method, E1..E6 (Hartree), HOMO/LUMO, the views as base64 PNG (ED
    views: RGB and their depth channel as grey, 255 = background), the teacher's targets, timings."""
    from edg.dft.scf import ENERGY_LABELS
    from edg.edg_core.shards import decode_images_u8
    from edg.edg_core.units import z_to_symbol
    mol = spec.molecule
    views = {}
    for member, names, kind in (("edimg", spec.render.ed_views, "ed"),
                                ("stimg", spec.render.structure_views, "structure")):
        enc = next((k for k in sample if k.split(".")[0] == member), None)
        if enc is None:
            views[kind] = []
            continue
        imgs = decode_images_u8(sample[enc], enc.split(".", 1)[1])  # (V, C, H, W)
        views[kind] = [{"view": name, "png": png_b64(img[:3]),
                        **({"fourth_png": png_b64(img[3])} if img.shape[0] == 4 else {})}
                       for name, img in zip(names, imgs)]
    return {
        "id": jid, "schema": SCHEMA,
        "molecule": {"id": mol.id, "formula": mol.formula, "n_atoms": mol.n_atoms,
                     "symbols": [z_to_symbol(int(z)) for z in mol.z], "positions_angstrom": mol.pos.tolist(),
                     "charge": mol.charge, "multiplicity": mol.multiplicity, "smiles": mol.smiles},
        "method": r.method, "basis": spec.dft.basis_for(mol.z), "xc": spec.dft.xc,
        "energies": {k: float(v) for k, v in r.energies.items()}, "energy_labels": ENERGY_LABELS,
        "homo": float(r.homo), "lumo": float(r.lumo), "dipole_debye": np.asarray(r.dipole, float).tolist(),
        "units": {"energies": "Hartree", "homo": "Hartree", "lumo": "Hartree", "positions": "Å"},
        "render": {"image_size": spec.render.image_size, "fourth_channel": spec.render.fourth_channel,
                   "iso": spec.render.iso},
        "images": views,
        "teacher": targets,
        "timings": timings,
    }


class ResultCache:
    """Finished results by job id in a folder or an fsspec URL (``None``: ``$EDG_CACHE/serve``)."""

    def __init__(self, root: str | Path | None = None):
        from edg.edg_core.storage import cache_root, check_location
        self.root = check_location(str(root), persistent=True) if root else str(cache_root() / "serve")

    def where(self, jid: str):
        from edg.edg_core.storage import join
        return join(self.root, jid[:2], f"{jid}.json")

    def get(self, jid: str) -> dict | None:
        """The cached result of ``jid``, or None (absent, or unreadable: logged, computed again)."""
        from edg.edg_core.storage import exists, read_bytes
        if not is_job_id(jid):
            return None
        path = self.where(jid)
        try:
            if not exists(path):
                return None
            doc = json.loads(read_bytes(path))
        except (OSError, ValueError) as e:
            log.warning("cached result %s cannot be read (%s); it will be computed again", path, e)
            return None
        return doc if isinstance(doc, dict) and doc.get("id") == jid else None

    def put(self, jid: str, doc: dict) -> None:
        from edg.edg_core.io import write_bytes_atomic
        from edg.edg_core.storage import is_remote, upload
        data = json.dumps(doc).encode()
        path = self.where(jid)
        if not is_remote(path):
            write_bytes_atomic(path, data)
            return
        with tempfile.TemporaryDirectory(prefix="edg-serve-") as folder:
            local = Path(folder) / f"{jid}.json"
            local.write_bytes(data)
            upload(local, str(path))


def is_job_id(text: str) -> bool:
    """Whether ``text`` has the form of a job id (32 lower-case hex digits)."""
    return isinstance(text, str) and len(text) == 32 and all(c in "0123456789abcdef" for c in text)

"""Exported students: one self-contained model file that predicts without the run folder or the training code.

``export_run(run, out)`` turns a finished ``edg distill`` run (an energy student: rMD17-style energy + forces)
into one file; ``load_exported(path)`` reads it back as an ``ExportedModel`` whose ``predict(structures)``
answers energies (eV), forces (eV/Å) and a verdict on whether each structure lies in the training domain.

The file (``.pt2``, a zip written by ``torch.export``'s PT2 archive writer) holds:

* one ``torch.export`` program per range of molecule sizes (``models/atoms<lo>to<hi>.json`` and its weights):
  ``(z (A,) long, pos (A, 3) Å, batch (A,) long, graphs (B,), atoms (n_max,)) -> output (B,)``, the student's
  standardised energy. The atom count A, the molecule count B and the size of the largest molecule n_max are
  dynamic (``torch.export.Dim``); ``graphs`` and ``atoms`` are zero tensors whose lengths carry B and n_max into
  the program (the radius graph is built inside it, from a dense (B, n_max, n_max) distance matrix). One program
  covers a range of n_max because the traced code branches on it (``torch.cdist`` switches algorithm above 25
  rows; a neighbour limit of k prunes only when n_max > k + 1): each program holds exactly the code eager
  PyTorch runs for those sizes;
* ``extra/edg/model.json``: the metadata: student name and config, units, cutoff, precision, the output scale
  (energy = offset + scale * output, eV), the programs and their size ranges, the run it came from, the
  SHA-256 of every program member, and the model card (``train.io.model_card``: elements, compositions, energy
  and force ranges of the training data, and the training data spec).

Forces are -dE/dpos by autograd through the loaded program (``ExportedProgram.module()`` keeps autograd; an
``autograd.grad`` inside ``torch.export`` is not supported in torch 2.14), in the loader, which is EDG code.

Loading runs no code the file carries beyond the exported graph: ``train.io.pt2_guard`` reads the zip, checks
every member, the graph (only admitted ATen operators, plain symbolic expressions, no pickled payloads, tensor
sizes within the bytes present) and the metadata, and hands ``torch.export.load`` a rebuilt archive holding only
what it checked (the file's pickled sample inputs are never read). Importing this module imports neither the
students nor the training loops (``export_run`` does, when called).
"""
from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from edg.edg_core.errors import EDGError
from edg.edg_core.units import KCAL_PER_MOL_IN_EV
from edg.train.io.model_card import ModelCard, Verdict

FORMAT = "edg-model/1"
META_MEMBER = "edg/model.json"  # under the archive's extra/ folder
DEFAULT_MAX_ATOMS = 500  # the largest molecule an exported file accepts (dense n_max^2 graph per molecule)
MAX_BATCH_PAIRS = 1 << 22  # B * n_max^2 per forward pass; larger requests are split
BATCH_ATOMS_PER_MAX_ATOMS = 4096  # a program takes at most max_atoms * this many atoms per call


class ExportError(EDGError, ValueError):
    """A run that cannot be exported, or a model file that cannot be used: one line naming it and why."""


@dataclass
class ExportConfig:
    """How ``export_run`` writes a model file.

    ``dtype``: ``float32`` or ``float64`` (the precision of the exported programs; float64 for MD and tight
    optimisations); ``max_atoms``: the largest molecule the file accepts; ``verify``: how many training structures
    the written file is checked on against the run's own model (energy within 1e-4 eV or 1e-5 relative)."""
    dtype: str = "float32"
    max_atoms: int = DEFAULT_MAX_ATOMS
    verify: int = 8

    def __post_init__(self):
        if self.dtype not in ("float32", "float64"):
            raise ExportError(f"dtype {self.dtype!r}: use float32 or float64")
        if not 3 <= self.max_atoms <= 100_000:
            raise ExportError(f"max_atoms {self.max_atoms}: use 3..100000")


@dataclass
class ExportedPrediction:
    """One structure's answer: ``energy`` (eV) and ``forces`` (n, 3) eV/Å, both None when the structure was
    refused; ``verdict``: is it in the training domain (``status`` in/warn/refused, ``reasons``)."""
    energy: float | None
    forces: np.ndarray | None
    verdict: Verdict = field(default_factory=Verdict)

    def to_dict(self) -> dict:
        """JSON-ready: ``{"energy": float|None, "forces": [[fx, fy, fz], ...]|None, "verdict": {...}}``."""
        return {"energy": self.energy,
                "forces": None if self.forces is None else np.asarray(self.forces, dtype=float).tolist(),
                "verdict": self.verdict.to_dict()}


@dataclass
class Program:
    """One exported program and the molecule sizes (largest molecule of a batch, atoms) it covers; torch reads
    it on first use (``module``) from the checked archive ``load`` returns."""
    name: str
    min_atoms: int
    max_atoms: int
    load: object = None  # () -> io.BytesIO, the rebuilt archive of this program (``pt2_guard.checked_programs``)
    where: str = "model file"
    device: str = "cpu"
    _module: object = None

    @property
    def module(self):
        """The program's ``ExportedProgram.module()`` on ``device`` (loaded once)."""
        if self._module is None:
            import torch
            quiet = logging.getLogger("torch._export.serde.serialize")
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # "Symbol u1 did not appear in the graph": unbacked sizes, harmless
            try:
                ep = torch.export.load(self.load())
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise ExportError(f"{self.where}: program {self.name} cannot be loaded ({type(e).__name__}: "
                                  f"{first})") from None
            finally:
                quiet.setLevel(level)
            if str(self.device) != "cpu":  # the programs were traced on the CPU: move their device arguments too
                from torch.export.passes import move_to_device_pass
                ep = move_to_device_pass(ep, str(self.device))
            self._module = ep.module()
        return self._module


class ExportedModel:
    """A model file loaded for inference (``load_exported``). ``card``: the training domain (``ModelCard``);
    ``units``: ``{"energy": "eV", "forces": "eV/Å", "positions": "Å"}``; ``meta``: the file's metadata."""

    def __init__(self, path: Path, meta: dict, card: ModelCard, programs: list[Program], device: str = "cpu"):
        import torch
        self.path, self.meta, self.card, self.programs = Path(path), meta, card, programs
        self.units = dict(meta["units"])
        self.student = meta["student"]
        self.cutoff = float(meta["cutoff"])
        self.dtype = getattr(torch, meta["dtype"])
        self.offset = float(meta["output"]["offset"])
        self.scale = float(meta["output"]["scale"])
        self.max_atoms = max(p.max_atoms for p in programs)
        self.device = torch.device(device)

    @property
    def name(self) -> str:
        return self.path.name

    def program_for(self, n_max: int) -> Program:
        for p in self.programs:
            if p.min_atoms <= n_max <= p.max_atoms:
                return p
        raise ExportError(f"{self.path}: no program for molecules of {n_max} atoms")

    def energy_forces(self, z, pos, counts) -> tuple[np.ndarray, np.ndarray]:
        """Energies (B,) eV and forces (A, 3) eV/Å of molecules already checked against the card: ``z`` (A,),
        ``pos`` (A, 3) Å, ``counts`` (B,) atoms per molecule (each 2..max_atoms), one program call per chunk."""
        counts = [int(c) for c in counts]
        energies, forces = [], []
        start, first = 0, 0
        while first < len(counts):
            last, n_max = first, counts[first]
            while last + 1 < len(counts):
                m = max(n_max, counts[last + 1])
                atoms = sum(counts[first:last + 2])
                if (last + 2 - first) * m * m > MAX_BATCH_PAIRS or atoms > self.max_atoms * BATCH_ATOMS_PER_MAX_ATOMS:
                    break
                last, n_max = last + 1, m
            n_atoms = sum(counts[first:last + 1])
            e, f = self._call(z[start:start + n_atoms], pos[start:start + n_atoms], counts[first:last + 1], n_max)
            energies.append(e)
            forces.append(f)
            start, first = start + n_atoms, last + 1
        return np.concatenate(energies), np.concatenate(forces)

    def _call(self, z, pos, counts: list[int], n_max: int) -> tuple[np.ndarray, np.ndarray]:
        import torch
        prog = self.program_for(n_max)
        dev = self.device
        zt = torch.as_tensor(np.asarray(z), dtype=torch.long, device=dev)
        p = torch.as_tensor(np.asarray(pos, dtype=np.float64), device=dev).to(self.dtype).requires_grad_(True)
        batch = torch.repeat_interleave(torch.arange(len(counts), device=dev),
                                        torch.as_tensor(counts, device=dev))
        graphs = torch.zeros(len(counts), device=dev)
        atoms = torch.zeros(n_max, device=dev)
        with torch.enable_grad():
            out = prog.module(zt, p, batch, graphs, atoms)
            (grad,) = torch.autograd.grad(out.sum(), p)
        s = out.detach().double().cpu().numpy()
        g = grad.detach().double().cpu().numpy()
        return self.offset + self.scale * s, -self.scale * g

    def predict(self, structures) -> list[ExportedPrediction]:
        """Predictions for ``structures``, a list of ``(z (n,) int, pos (n, 3) float Å)``, as one batch (split
        only to bound memory). A structure with an element never seen in training (or < 2 atoms, non-finite
        positions, more atoms than the file accepts) is refused: no energy, the verdict says why."""
        verdicts, keep = [], []
        for k, (z, pos) in enumerate(structures):
            z = np.asarray(z).reshape(-1)
            pos = np.asarray(pos, dtype=np.float64)
            if pos.shape != (len(z), 3):
                v = Verdict()
                v.add("refused", f"positions of shape {pos.shape} for {len(z)} atoms (need ({len(z)}, 3))")
            else:
                v = self.card.check_structure(z, pos)
                if len(z) > self.max_atoms:
                    v.add("refused", f"{len(z)} atoms, more than the {self.max_atoms} this file accepts")
            verdicts.append(v)
            if v.status != "refused":
                keep.append((k, z, pos))
        out = [ExportedPrediction(None, None, v) for v in verdicts]
        if keep:
            z = np.concatenate([z for _, z, _ in keep])
            pos = np.concatenate([p for _, _, p in keep])
            counts = [len(z) for _, z, _ in keep]
            energies, forces = self.energy_forces(z, pos, counts)
            parts = np.split(forces, np.cumsum(counts)[:-1])
            for (k, zk, _), e, f in zip(keep, energies, parts):
                self.card.check_prediction(out[k].verdict, zk, float(e), f)
                out[k].energy, out[k].forces = float(e), f
        return out


# ---------------------------------------------------------------- writing
def _training_card(rec: dict, cfg: dict, cutoff: float | None = None) -> tuple[ModelCard, object]:
    """The model card of a run's training structures, rebuilt through its task (the same frames it trained on),
    and the task."""
    from edg.train.tasks import build_task
    dataset, opts = rec["dataset"], dict(cfg.get("task") or {})
    try:
        task = build_task(dataset, **opts)
    except EDGError as e:
        raise ExportError(f"edg export needs the run's training data for the model card: {e}") from None
    train = task.train
    ids = rec.get("split", {}).get("train")
    if ids is not None and list(ids) != list(train.ids):
        raise ExportError(f"the training data of {dataset} ({opts}) no longer matches the run's training split "
                          f"({len(train.ids)} structures now, {len(ids)} recorded); cannot describe its domain")
    offsets = train.offsets.numpy()
    z = train.z.numpy()
    mean = float(task.energy_mean)
    e = (train.mol_labels["energy"].double().numpy() + mean) * KCAL_PER_MOL_IN_EV
    f = train.atom_labels["forces"].double().numpy() * KCAL_PER_MOL_IN_EV
    pos = train.pos.double().numpy()
    zs = [z[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    fs = [f[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    ps = [pos[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    spec = dataset + ("?" + "&".join(f"{k}={v}" for k, v in sorted(opts.items())) if opts else "")
    data = {"spec": spec, "dataset": dataset, "task_options": opts, "split": "train",
            "split_id": rec.get("task_info", {}).get("split_id"), "structures": len(zs)}
    if cutoff is None:
        cutoff = (cfg.get("student_args") or {}).get("cutoff")
    return ModelCard.from_training(zs, e, fs, data, ps, float(cutoff) if cutoff else 5.0), task


def run_card(run: str | Path, cutoff: float | None = None) -> ModelCard:
    """The model card of a finished run's training data (what ``export_run`` writes into the file; ``cutoff``
    Å: the student's, the range of the distance check); an ``ExportError`` when that data cannot be read or no
    longer matches the run's split."""
    from edg.train.io.predict import _run_dir
    run_dir, _ = _run_dir(run)
    rec = json.loads((run_dir / "result.json").read_text())
    return _training_card(rec, rec.get("config", {}), cutoff)[0]


def _size_ranges(model, max_atoms: int) -> list[tuple[int, int]]:
    """The molecule-size ranges (largest molecule of a batch) that need their own program: the traced code
    branches where ``torch.cdist`` changes algorithm (more than 25 rows) and where a neighbour limit k starts to
    prune (more than k + 1 atoms)."""
    cuts = {25}
    k = getattr(getattr(model, "config", None), "max_num_neighbors", None)
    if isinstance(k, int):
        cuts.add(k + 1)
    bounds, lo = [], 2
    for c in sorted(c for c in cuts if 2 <= c < max_atoms):
        bounds.append((lo, c))
        lo = c + 1
    bounds.append((lo, max_atoms))
    return bounds


def _example(elements: list[int], n_big: int, seed: int = 0):
    """Example inputs of a bucket: two molecules of ``n_big`` and 3 atoms, random positions at liquid density."""
    import torch
    g = np.random.default_rng(seed)
    counts = [n_big, 3]
    z = np.array([elements[i % len(elements)] for c in counts for i in range(c)])
    pos = np.concatenate([g.uniform(0, (10.0 * c) ** (1 / 3), (c, 3)) for c in counts])
    batch = np.repeat(np.arange(2), counts)
    return (torch.as_tensor(z), torch.as_tensor(pos), torch.as_tensor(batch), torch.zeros(2), torch.zeros(n_big))


def _trace(model, elements: list[int], lo: int, hi: int, dtype, max_total: int):
    """``torch.export`` (strict, dynamic A, B, n_max in [lo, hi]) of ``model``'s standardised energy."""
    import torch
    from edg.train.io.export_trace import EnergyOutput, plain_torch_graphs
    from torch.export import Dim
    wrapper = EnergyOutput(model).to(dtype)
    n_ex = min(max(lo, 5), hi)
    ex = list(_example(elements, n_ex))
    ex[1] = ex[1].to(dtype)
    atoms, graphs = Dim("atoms", min=2, max=max_total), Dim("graphs", min=1, max=max_total)
    n_max = Dim(f"max_atoms_{lo}", min=lo, max=hi)
    shapes = ({0: atoms}, {0: atoms}, {0: atoms}, {0: graphs}, {0: n_max})
    with plain_torch_graphs():
        return torch.export.export(wrapper, tuple(ex), dynamic_shapes=shapes, strict=True)


def export_run(run: str | Path, out: str | Path, config: ExportConfig | None = None) -> Path:
    """Write the model file ``out`` of the finished distillation run ``run`` (a run folder or its
    ``best_student.pt``); see the module docstring. The file is checked before it is kept: loaded back through
    ``load_exported`` and compared with the run's own model on training structures. Returns ``out``."""
    import torch
    from edg.edg_core.io import write_bytes_atomic
    from edg.train.io.export_trace import strip_metadata
    from edg.train.io.predict import load_student
    from edg.train.io.pt2_guard import digests
    from torch.export.pt2_archive._package import package_pt2
    cfg = config or ExportConfig()
    out = Path(out)
    student = load_student(run, device="cpu", dtype=getattr(torch, cfg.dtype))
    if student.kind != "energy":
        raise ExportError(f"{student.run_dir}: a {student.dataset} model predicts {student.target}; edg export "
                          "writes energy models (energy + forces) only")
    rec = json.loads((student.run_dir / "result.json").read_text())
    run_cfg = rec.get("config", {})
    model = student.model
    cutoff = getattr(getattr(model, "config", None), "cutoff", None)
    card, task = _training_card(rec, run_cfg, cutoff if isinstance(cutoff, (int, float)) else None)
    ranges = _size_ranges(model, cfg.max_atoms)
    max_total = cfg.max_atoms * BATCH_ATOMS_PER_MAX_ATOMS
    programs = {}
    for lo, hi in ranges:
        try:
            ep = _trace(model, card.elements, lo, hi, getattr(torch, cfg.dtype), max_total)
        except Exception as e:  # torch.export's own errors: name the first line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ExportError(f"{student.run_dir}: {student.student} cannot be exported with torch.export for "
                              f"molecules of {lo}..{hi} atoms ({type(e).__name__}: {first})") from None
        programs[f"atoms{lo}to{hi}"] = strip_metadata(ep)
    meta = {
        "format": FORMAT, "student": student.student, "student_args": run_cfg.get("student_args", {}),
        "kind": "energy", "units": {"energy": "eV", "forces": "eV/Å", "positions": "Å"},
        "cutoff": cutoff, "dtype": cfg.dtype,
        "output": {"offset": student.mean * KCAL_PER_MOL_IN_EV, "scale": student.std * KCAL_PER_MOL_IN_EV},
        "inputs": ["z (A,) int64", "pos (A, 3) Å", "batch (A,) int64 sorted", "graphs (B,) zeros",
                   "atoms (n_max,) zeros"],
        "programs": [{"name": f"atoms{lo}to{hi}", "min_atoms": lo, "max_atoms": hi} for lo, hi in ranges],
        "run": {"name": student.run_dir.name, "dataset": rec.get("dataset"), "seed": rec.get("seed"),
                "epochs": rec.get("epochs"), "best_epoch": rec.get("best_epoch"), "lambda_ed": rec.get("lambda_ed"),
                "test": rec.get("test"), "test_units": rec.get("units")},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__,
        "card": card.to_dict(),
    }
    import io
    raw = io.BytesIO()
    package_pt2(raw, exported_programs=programs)
    meta["digests"] = digests(raw.getvalue())
    buf = io.BytesIO()
    package_pt2(buf, exported_programs=programs,
                extra_files={META_MEMBER: json.dumps(meta, sort_keys=True, allow_nan=False)})
    data = buf.getvalue()
    _verify(data, student, task, cfg, out)
    write_bytes_atomic(out, data)
    return out


def _verify(data: bytes, student, task, cfg: ExportConfig, out: Path) -> None:
    """Load the file's bytes as ``load_exported`` would and compare it with the run's model on up to
    ``cfg.verify`` training structures; a mismatch is an ``ExportError`` (nothing is written)."""
    import torch
    if cfg.verify <= 0:
        return
    model = load_exported_bytes(data, out)
    train = task.train
    offsets = train.offsets.numpy()
    n = min(cfg.verify, len(train.ids))
    zs = [train.z.numpy()[a:b] for a, b in zip(offsets[:n], offsets[1:n + 1])]
    ps = [train.pos.double().numpy()[a:b] for a, b in zip(offsets[:n], offsets[1:n + 1])]
    got = model.predict(list(zip(zs, ps)))
    z = torch.as_tensor(np.concatenate(zs))
    pos = torch.as_tensor(np.concatenate(ps))
    batch = torch.repeat_interleave(torch.arange(n), torch.as_tensor([len(a) for a in zs]))
    e_ref, f_ref = student.energy_forces(z, pos, batch)
    e_ref = e_ref.double().numpy() * KCAL_PER_MOL_IN_EV
    f_ref = f_ref.double().numpy() * KCAL_PER_MOL_IN_EV
    e_got = np.array([p.energy for p in got])
    f_got = np.concatenate([p.forces for p in got])
    de = float(np.max(np.abs(e_got - e_ref)))
    df = float(np.max(np.abs(f_got - f_ref)))
    tol_e = max(1e-4, 1e-5 * float(np.max(np.abs(e_ref))))
    tol_f = max(1e-3, 1e-4 * float(np.max(np.abs(f_ref))))
    if not (de <= tol_e and df <= tol_f):
        raise ExportError(f"{out}: the exported {student.student} differs from the run's model on {n} training "
                          f"structures (energy by {de:.3g} eV, forces by {df:.3g} eV/Å); not written")


# ---------------------------------------------------------------- reading
def load_exported_bytes(data: bytes, where: str | Path = "model file", device: str = "cpu") -> ExportedModel:
    """``load_exported`` of a file's bytes (``where`` names it in errors)."""
    from edg.train.io.pt2_guard import checked_programs, read_checked
    checked = read_checked(data, str(where))
    card = ModelCard.from_dict(checked.meta["card"], f"{where}: model card")
    programs = [Program(s["name"], s["min_atoms"], s["max_atoms"],
                        functools.partial(checked_programs, checked, s["name"], _sample_inputs(s, card.elements)),
                        str(where), device)
                for s in checked.meta["programs"]]
    return ExportedModel(Path(str(where)), checked.meta, card, programs, device)


def _sample_inputs(spec: dict, elements: list[int]) -> tuple:
    """The sample inputs EDG writes into the rebuilt archive in place of the file's (which are never read)."""
    n = min(max(spec["min_atoms"], 5), spec["max_atoms"])
    return tuple(_example(elements, n))


def load_exported(path: str | Path, device: str = "cpu") -> ExportedModel:
    """An exported model file (``export_run``), checked member by member before torch reads it (a hostile or
    damaged file is an ``ExportError`` / ``UnsafeModelError`` in one line); runs on ``device``."""
    from edg.train.io.pt2_guard import read_file
    path = Path(path)
    return load_exported_bytes(read_file(path), path, device)


def is_model_file(path: str | Path) -> bool:
    """Whether ``path`` is to be read as a model file of ``edg export`` (not a run folder or its
    ``best_student.pt``): a file named ``*.pt2``, or a zip holding a PT2 archive's ``archive_format`` member."""
    import zipfile
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix == ".pt2":
        return True
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.rpartition("/")[2] == "archive_format" for n in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def describe(model: ExportedModel) -> str:
    """One line about a loaded model: student, file, elements, compositions, energy range."""
    c = model.card
    return (f"{model.student} from {model.meta['run']['name']} ({model.name}); trained on {c.data.get('spec')} "
            f"({c.data.get('structures')} structures): elements {c.element_names()}, "
            f"{len(c.formulas)} composition(s), energies {c.energy.min:.3f}..{c.energy.max:.3f} eV")


"""Use a trained student: load a distillation run's best weights and predict energies and forces.

``load_student(path)`` takes a run folder written by ``run_distill`` (``<out>/<run>/`` with ``result.json`` and
``best_student.pt``) or the ``best_student.pt`` file itself, rebuilds the student from the run's config and
loads its weights with ``torch.load(weights_only=True)``. Only the student is needed: the EDG head (mapper
and ED predictor) is a training-time loss and plays no part at inference.

Units are the task's: an rMD17 student predicts the energy in kcal/mol (the training mean plus the
standardised output times the training std) and forces = -dE/dpos in kcal/mol/Å; a QM9 student predicts its
target in the Geom3D unit (``result.json`` ``units``). ``write_extxyz`` converts energies to eV and forces to
eV/Å (ASE's convention) unless asked to keep kcal/mol.

``predict_file`` (``edg predict``) also takes a model file of ``edg export`` (``train.io.exported``), which
needs neither the run folder nor the training code, and checks every structure against the model's training
domain (``train.io.model_card``): a structure with an element never seen in training is refused (no energy;
one line on stderr and one failure record), an unseen composition or an energy or force far outside the
training range is written with ``domain=warn`` and its reasons. A run folder gets the same checks when its
training data is readable (the card is made from it), else a note that the domain was not checked.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from edg.edg_core.errors import DataSourceError, EDGError
from edg.edg_core.molecule import Molecule
from edg.edg_core.units import KCAL_PER_MOL_IN_EV, z_to_symbol
from edg.train.devices import resolve_device

WEIGHTS = "best_student.pt"


class ModelError(EDGError, ValueError):
    """A model path that is not a finished distillation run, or a model used for what it cannot predict."""


@dataclass
class Prediction:
    """One molecule's prediction: ``energy`` (float, kcal/mol for rMD17 students, the target's unit for QM9)
    and ``forces`` (N, 3) in energy unit per Å (None for a QM9 property model)."""
    id: str
    energy: float
    forces: np.ndarray | None


@dataclass
class TrainedStudent:
    """A student ready for inference. ``kind``: ``"energy"`` (rMD17: energy + forces) or ``"property"``
    (QM9: one target ``target``); prediction = ``mean + std * output`` with the run's training-set ``mean``
    and scale ``std`` (rMD17: the energy std or the force RMS, as the task's ``energy_scale`` says)."""
    model: torch.nn.Module
    student: str
    dataset: str
    kind: str
    mean: float
    std: float
    units: dict[str, str]
    run_dir: Path
    target: str = "energy"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    def energy_forces(self, z: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Energies (B,) and forces (A, 3) (None for a property model) of a batch: z (A,), pos (A, 3) Å."""
        from edg.train.students import energy_and_forces
        self.model.eval()
        z = z.to(self.device)
        pos = pos.to(self.device, self.dtype)
        batch = batch.to(self.device) if batch is not None else torch.zeros_like(z)
        if self.kind == "energy":
            _, s, ds = energy_and_forces(self.model, z, pos, batch, create_graph=False)
            return (self.mean + self.std * s).detach(), (self.std * ds).detach()
        with torch.no_grad():
            _, s = self.model(z, pos, batch)
        return self.mean + self.std * s[:, 0], None

    def predict(self, molecules: Iterable[Molecule], batch_size: int = 32) -> Iterator[Prediction]:
        """Predictions for ``molecules`` in order, ``batch_size`` molecules per forward pass."""
        chunk: list[Molecule] = []
        for m in molecules:
            chunk.append(m)
            if len(chunk) == batch_size:
                yield from self._predict_chunk(chunk)
                chunk = []
        if chunk:
            yield from self._predict_chunk(chunk)

    def _predict_chunk(self, mols: list[Molecule]) -> list[Prediction]:
        counts = [len(m.z) for m in mols]
        z = torch.as_tensor(np.concatenate([m.z for m in mols]), dtype=torch.long)
        pos = torch.as_tensor(np.concatenate([m.pos for m in mols]), dtype=torch.float64)
        batch = torch.repeat_interleave(torch.arange(len(mols)), torch.as_tensor(counts))
        energy, forces = self.energy_forces(z, pos, batch)
        energy = energy.double().cpu().numpy()
        parts = np.split(forces.double().cpu().numpy(), np.cumsum(counts)[:-1]) if forces is not None \
            else [None] * len(mols)
        return [Prediction(m.id, float(e), f) for m, e, f in zip(mols, energy, parts)]


def _run_dir(path: str | Path) -> tuple[Path, Path]:
    """(run folder, weights file) of a finished distillation run given as the folder or its weights file."""
    from edg.train.io.checkpoint import CheckpointError, model_file
    path = Path(path)
    run = path if path.is_dir() else path.parent
    if not (run / "result.json").exists():
        inside = sorted(p.parent.name for p in run.glob(f"*/{WEIGHTS}")) if run.is_dir() else []
        hint = f"; runs inside it: {', '.join(inside[:5])}" if inside else ""
        raise ModelError(f"{path}: not a finished distillation run (no result.json beside {WEIGHTS}); pass "
                         f"<out>/<run> of edg distill or its {WEIGHTS}{hint}")
    try:
        weights = model_file(path, WEIGHTS, "distillation", checkpoints=False)
    except CheckpointError:
        weights = None
    if weights is None or not weights.is_file():
        raise ModelError(f"{run}: finished run without {WEIGHTS} (no epoch improved on validation)")
    return run, weights


def load_student(path: str | Path, device: str = "auto", dtype: torch.dtype = torch.float32) -> TrainedStudent:
    """The trained student of a run folder (or its ``best_student.pt``), in eval mode on ``device``.

    ``dtype=torch.float64`` runs it in double precision (smoother forces for MD and optimisation)."""
    from edg.train.students import build_student
    run, weights = _run_dir(path)
    rec = json.loads((run / "result.json").read_text())
    cfg, info = rec.get("config", {}), rec.get("task_info", {})
    student = rec.get("student") or cfg.get("student")
    model = build_student(student, **{"out_dim": 1, **cfg.get("student_args", {})})
    from edg.train.loops.distill import load_student_state
    state = load_student_state(weights)  # plain data only (torch.load weights_only=True)
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as e:
        raise ModelError(f"{weights}: cannot load as {student} weights ({str(e).splitlines()[0]})") from None
    dev = resolve_device(device)
    model.to(dev, dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dataset = rec["dataset"]
    if "energy_mean_kcal_mol" in info:
        scale = info.get("output_scale")  # RMD17Task.scale, recorded by runs of this version on
        if scale is None:  # an older run: the training energy std or the training force RMS, as the task chose
            scale_kind = info.get("energy_scale", "energy_std")
            scale = info["energy_std_kcal_mol"] if scale_kind == "energy_std" else info["force_rms_kcal_mol_A"]
        return TrainedStudent(model, student, dataset, "energy", float(info["energy_mean_kcal_mol"]), float(scale),
                              {"energy": "kcal/mol", "forces": "kcal/mol/Å"}, run, device=dev, dtype=dtype)
    if "target_mean" in info:
        target = dataset.split(":", 1)[1]
        return TrainedStudent(model, student, dataset, "property", float(info["target_mean"]),
                              float(info["target_std"]), {target: rec.get("units", {}).get("mae", "?")}, run,
                              target=target, device=dev, dtype=dtype)
    raise ModelError(f"{run}/result.json: no output standardisation in task_info (not an rMD17 or QM9 run?)")


def _fmt(x: float) -> str:
    return f"{x:.10g}"


def _quote(text: str) -> str:
    """``text`` as one extended-XYZ value: quoted, without quotes, backslashes or line breaks inside."""
    return '"' + " ".join(text.replace('"', "'").replace("\\", "/").split()) + '"'


def write_extxyz(path: str | Path, molecules: list[Molecule], predictions: list[Prediction],
                 student: TrainedStudent, units: str = "eV", verdicts: list | None = None,
                 model_name: str | None = None) -> None:
    """Write molecules with their predictions as extended XYZ (atomically), readable by ASE and by EDG.

    Energy models: ``energy=`` and a ``forces`` column in eV and eV/Å (``units="eV"``) or in the model's
    kcal/mol and kcal/mol/Å (``units="kcal/mol"``); the comment line names the units and the model. Property
    models: ``<target>=`` in the target's unit. ``verdicts`` (``train.io.model_card.Verdict`` per molecule):
    ``domain=in|warn`` and, when not ``in``, ``domain_reasons="..."``. ``model_name`` defaults to the run's."""
    from edg.edg_core.io import atomic_path
    if units not in ("eV", "kcal/mol"):
        raise ModelError(f"units {units!r}: use eV or kcal/mol")
    scale = KCAL_PER_MOL_IN_EV if (units == "eV" and student.kind == "energy") else 1.0
    name = model_name or student.run_dir.name
    lines = []
    for k, (m, p) in enumerate(zip(molecules, predictions)):
        domain = ""
        if verdicts is not None:
            v = verdicts[k]
            domain = f"domain={v.status} " + (f"domain_reasons={_quote('; '.join(v.reasons))} " if v.reasons else "")
        if p.forces is not None:
            head = (f'id={m.id} energy={_fmt(p.energy * scale)} energy_unit={units} '
                    f'forces_unit={units}/Ang model={name} {domain}'
                    "Properties=species:S:1:pos:R:3:forces:R:3")
        else:
            head = (f"id={m.id} {student.target}={_fmt(p.energy)} {student.target}_unit="
                    f'"{student.units[student.target]}" model={name} {domain}Properties=species:S:1:pos:R:3')
        lines += [str(len(m.z)), head]
        for k, (zk, xyz) in enumerate(zip(m.z, m.pos)):
            cols = [z_to_symbol(int(zk)), *(f"{v:.8f}" for v in xyz)]
            if p.forces is not None:
                cols += [f"{v * scale:.8f}" for v in p.forces[k]]
            lines.append(" ".join(cols))
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


def _labels_in_kcal_mol(source) -> bool:
    """Whether the registry says ``source``'s energy labels are in kcal/mol, the unit students train in."""
    from edg.edg_core.datasets import dataset_of
    ds = dataset_of(source)
    return ds is not None and ds.units.get("energy") == "kcal/mol"


def _run_card(student: TrainedStudent):
    """The model card of a run folder's training data (``train.io.exported.run_card``), or None with the reason
    when that data cannot be read or the model is not an energy model."""
    if student.kind != "energy":
        return None, "a property model has no domain check"
    from edg.train.io.exported import ExportError, run_card
    cutoff = getattr(getattr(student.model, "config", None), "cutoff", None)
    try:
        return run_card(student.run_dir, cutoff if isinstance(cutoff, (int, float)) else None), None
    except (ExportError, DataSourceError) as e:
        return None, str(e)


class _FileStudent:
    """An exported model (``train.io.exported.ExportedModel``) seen as ``predict_file`` sees a run's student:
    ``kind``, ``units``, ``run_dir``, and ``predict`` giving kcal/mol predictions plus the domain verdicts."""
    kind, target = "energy", "energy"
    units = {"energy": "kcal/mol", "forces": "kcal/mol/Å"}

    def __init__(self, model):
        self.model, self.run_dir, self.card = model, model.path, model.card

    def predict_with_verdicts(self, mols: list[Molecule], batch_size: int):
        out = []
        for i in range(0, len(mols), batch_size):
            chunk = mols[i:i + batch_size]
            for m, p in zip(chunk, self.model.predict([(m.z, m.pos) for m in chunk])):
                pred = None if p.energy is None else Prediction(m.id, p.energy / KCAL_PER_MOL_IN_EV,
                                                               p.forces / KCAL_PER_MOL_IN_EV)
                out.append((pred, p.verdict))
        return out


def _predict_checked(student, card, mols: list[Molecule], batch_size: int):
    """(Prediction or None, Verdict or None) per molecule of a run's student, refused ones not predicted."""
    if card is None:
        return [(p, None) for p in student.predict(mols, batch_size)]
    verdicts = [card.check_structure(m.z, m.pos) for m in mols]
    keep = [m for m, v in zip(mols, verdicts) if v.status != "refused"]
    preds = iter(student.predict(keep, batch_size))
    out = []
    for m, v in zip(mols, verdicts):
        if v.status == "refused":
            out.append((None, v))
            continue
        p = next(preds)
        card.check_prediction(v, m.z, p.energy * KCAL_PER_MOL_IN_EV, p.forces * KCAL_PER_MOL_IN_EV)
        out.append((p, v))
    return out


def domain_summary(verdicts: list) -> str | None:
    """``"2 of 5 structures outside the training domain: 1 refused (...), 1 warned (...)"``, or None when all
    are in it. The most frequent reason of each kind is quoted."""
    from collections import Counter
    n = len(verdicts)
    parts = []
    for status, word in (("refused", "refused"), ("warn", "warned")):
        hit = [v for v in verdicts if v.status == status]
        if hit:
            reasons = Counter(r.split(" (")[0] for v in hit for r in v.reasons)
            top, count = reasons.most_common(1)[0]
            more = f"; {len(reasons) - 1} other reason(s)" if len(reasons) > 1 else ""
            parts.append(f"{len(hit)} {word} ({top}{f' x{count}' if count > 1 else ''}{more})")
    if not parts:
        return None
    outside = sum(v.status != "in" for v in verdicts)
    return f"{outside} of {n} structures outside the training domain: {', '.join(parts)}"


def predict_file(model: str | Path, source: str, out: str | Path, units: str = "eV", batch_size: int = 32,
                 device: str = "auto") -> dict:
    """``edg predict``: predictions for every good record of ``source`` (a spec or xyz/extxyz/sdf file)
    written to ``out``; bad records go to ``<out>.failures.jsonl`` (``edg_core.stage.Failure`` lines, stage
    ``read``, as the stages' failure manifests), and so do structures the model refuses (stage ``predict``: an
    element never seen in training). ``model`` is a run folder (or its ``best_student.pt``) or a model file of
    ``edg export``. Returns a summary (counts, units, the domain verdicts, and the MAE against reference labels
    when the source is rMD17 data in kcal/mol)."""
    from edg.edg_core.errors import InvalidRecord
    from edg.edg_core.io import write_bytes_atomic
    from edg.edg_core.readers import open_source
    from edg.edg_core.stage import Failure
    from edg.train.io.exported import is_model_file, load_exported
    if is_model_file(model):
        student = _FileStudent(load_exported(model, device=resolve_device(device).type))
        card, no_card = student.card, None
    else:
        student = load_student(model, device=device)
        card, no_card = _run_card(student)
    good, bad = [], []
    for rec in open_source(source):
        (bad if isinstance(rec, InvalidRecord) else good).append(rec)
    if not good:
        raise DataSourceError(f"{source}: no readable molecule"
                              + (f" ({len(bad)} invalid, first: {bad[0]})" if bad else ""))
    if isinstance(student, _FileStudent):
        results = student.predict_with_verdicts(good, batch_size)
    else:
        results = _predict_checked(student, card, good, batch_size)
    kept = [(m, p, v) for m, (p, v) in zip(good, results) if p is not None]
    refused = [Failure.of(m.id, "predict", f"refused: {'; '.join(v.reasons)}")
               for m, (p, v) in zip(good, results) if p is None]
    if not kept:
        raise ModelError(f"{source}: every structure was refused by the model ({refused[0].reason})")
    verdicts = [v for _, _, v in kept] if card is not None else None
    write_extxyz(out, [m for m, _, _ in kept], [p for _, p, _ in kept], student, units, verdicts,
                 model_name=Path(student.run_dir).name)
    failures = Path(str(out) + ".failures.jsonl")
    if bad or refused:
        write_bytes_atomic(failures, "".join(json.dumps(f.to_json()) + "\n" for f in
                                             [*(Failure.invalid(e) for e in bad), *refused]).encode())
    summary = {"molecules": len(kept), "invalid": len(bad), "refused": len(refused), "out": str(out),
               "model": str(student.run_dir),
               "units": ({"energy": units, "forces": f"{units}/Å"} if student.kind == "energy" else student.units),
               "refusals": [f"{f.record}: {f.reason}" for f in refused]}
    if card is not None:
        all_verdicts = [v for _, v in results]
        summary["domain"] = {s: sum(v.status == s for v in all_verdicts) for s in ("in", "warn", "refused")}
        summary["domain_line"] = domain_summary(all_verdicts)
    else:
        summary["domain_unchecked"] = no_card
    good = [m for m, _, _ in kept]
    preds = [p for _, p, _ in kept]
    if student.kind == "energy" and _labels_in_kcal_mol(source) and all("energy" in m.labels for m in good):
        de = [abs(p.energy - m.labels["energy"]) for m, p in zip(good, preds)]
        df = [float(np.abs(p.forces - m.labels["forces"]).mean()) for m, p in zip(good, preds)
              if m.labels.get("forces") is not None]
        summary["mae_vs_labels"] = {"energy_kcal_mol": float(np.mean(de)),
                                    "forces_kcal_mol_A": float(np.mean(df)) if df else math.nan}
    if bad or refused:
        summary["failures"] = str(failures)
    return summary

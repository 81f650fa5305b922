"""Distillation: a student's steps for the one epoch loop, with or without EDG; one resumable run = one result file.

``train_student`` trains a student on a task through the epoch loop (``train.loops.epoch_loop``; epochs
count from 1): Adam, the task loss (L1 or MSE), the lr schedule of ``train.loops.student_schedule``
(warm-up; cosine, plateau or none), model selection on the validation metric, test errors taken at the best
validation epoch. ``run_distill`` builds task, student and EDG head from a ``DistillConfig`` (fields left
unset take the paper's settings for the student and dataset: ``train.paper_settings``) and writes
``<out>/<run name>/``: config.yaml; metrics.jsonl, metrics.csv and progress.json after every epoch, with a
line per epoch on stderr; ``checkpoint/epoch-NNNNNN.pt`` (``train.loops.run_state``, every
``checkpoint_every`` epochs, newest ``keep_last`` kept); at the end test_errors.npz, best_student.pt (the
student's weights at the best validation epoch) and result.json last, atomically. A run whose result.json
exists is skipped; an interrupted run resumes from its last checkpoint; the checkpoints are removed when the
run is finished.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from edg.edg_core.config import dump_yaml, to_dict
from edg.edg_core.io import atomic_path, write_json_atomic
from edg.train.configs import FitConfig  # noqa: F401 (re-exported)
from edg.train.data.teacher_targets import coulomb_standin_features, load_teacher_targets
from edg.train.devices import resolve_device
from edg.train.io.checkpoint import Checkpoints, load_checkpoint, model_file, save_checkpoint
from edg.train.io.model_files import build_ed_predictor
from edg.train.loops.epoch_loop import LoopConfig, ModelSteps, find_checkpoint, run_epochs
from edg.train.loops.optim import adam_for
from edg.train.loops.run_state import RunState
from edg.train.loops.speed import apply_speed_choices, speed_choices
from edg.train.loops.student_schedule import SANITY_BATCHES, StudentSchedule
from edg.train.models.edg_head import EDGConfig, EDGHead, edg_objective, predictor_dims
from edg.train.tasks import Batch, PackedMolecules, Task, build_task
from edg.train.tasks.base import loss_fn

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    student: str = "schnet"
    dataset: str = "rmd17:aspirin"     # rmd17:<molecule> or qm9:<target>
    out: str = "runs/distill"
    fit: FitConfig = field(default_factory=FitConfig)
    edg: EDGConfig = field(default_factory=EDGConfig)
    task: dict = field(default_factory=dict)             # RMD17Config / QM9Config overrides
    student_args: dict = field(default_factory=dict)     # build_student overrides

    def __post_init__(self):
        # options after the dataset name (rmd17:aspirin?root=DIR) are task options; --task KEY=VALUE wins
        from edg.train.tasks import parse_dataset
        self.dataset, opts = parse_dataset(self.dataset)
        if opts:
            self.task = {**opts, **self.task}

    def resolved(self) -> DistillConfig:
        """This config with the paper's settings for the student and dataset family wherever the user set
        nothing: ``fit`` fields left ``None``, student and task options under the given ones
        (``train.paper_settings``)."""
        from edg.train.paper_settings import resolve
        fit, student_args, task = resolve(self.student, self.dataset, self.fit, self.student_args, self.task)
        return dataclasses.replace(self, fit=fit, student_args=student_args, task=task)

    def validate(self) -> None:
        """Raise an ``EDGError`` naming the valid choices for an unknown student, dataset, molecule, target or
        option, or a missing rMD17 root, before anything is written."""
        from edg.train.students import config_for
        from edg.train.tasks import validate_dataset
        config_for(self.student, **self.student_args)
        validate_dataset(self.dataset, **self.task)

    def run_name(self) -> str:
        lam = f"{self.edg.lambda_ed:g}"
        return f"{self.student}__{self.dataset.replace(':', '-')}__lam{lam}__seed{self.fit.seed}"


# ---------------------------------------------------------------- one step, one evaluation
def train_step(task: Task, model: torch.nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
               lambda_ed: float = 0.0, head: EDGHead | None = None, grad_clip: float | None = None,
               loss: str = "l1") -> dict[str, torch.Tensor]:
    """One optimisation step of L = L_task + lambda * L_ED (batch.labels["edp"] holds EDP(F_S) when lambda > 0;
    L_task with the ``loss`` kind, l1 or mse).
    Returns ``loss``, ``task_loss``, ``ed_loss`` as detached 0-dim tensors on the model's device (reading them
    is a host sync: sum them on the device and read once per epoch)."""
    optimizer.zero_grad(set_to_none=True)
    pred = task.predict(model, batch, training=True)
    l_task = task.loss(pred, batch, kind=loss)
    loss, l_ed = edg_objective(l_task, lambda_ed, head, pred.features, batch.labels.get("edp"))
    loss.backward()
    if grad_clip:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return {"loss": loss.detach(), "task_loss": l_task.detach(),
            "ed_loss": l_ed.detach() if l_ed is not None else torch.zeros((), device=loss.device)}


def evaluate(task: Task, model: torch.nn.Module, data: PackedMolecules, batch_size: int,
             batch_terms: dict[str, list[float]] | None = None, max_batches: int | None = None
             ) -> dict[str, np.ndarray]:
    """Per-molecule absolute errors (M,) for each metric of ``task`` (model in eval mode, no parameter grads).

    ``batch_terms``: filled with the MSE loss terms of every batch, in order (``task.loss_terms``: name -> one
    value per batch), for the ViSNet selection loss. ``max_batches``: only the first batches."""
    model.eval()
    out: dict[str, list[torch.Tensor]] = {}
    terms: dict[str, list[torch.Tensor]] = {}
    ctx = torch.enable_grad() if task.needs_forces else torch.no_grad()
    with ctx:
        for n, batch in enumerate(data.batches(batch_size)):
            if max_batches is not None and n >= max_batches:
                break
            pred = task.predict(model, batch, training=False)
            for k, v in task.abs_errors(pred, batch).items():
                out.setdefault(k, []).append(v.detach().cpu())
            if batch_terms is not None:
                for k, v in task.loss_terms(pred, batch, kind="mse").items():
                    terms.setdefault(k, []).append(v.detach())
    if batch_terms is not None:
        batch_terms.update({k: torch.stack(v).double().cpu().tolist() for k, v in terms.items()})
    return {k: torch.cat(v).double().numpy() for k, v in out.items()}


EMA_LOSS_UNIT = "(validation MSE loss, energy term an EMA over batches)"


def _means(errors: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(v.mean()) for k, v in errors.items()}


# ---------------------------------------------------------------- the loop
@dataclass
class FitResult:
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]
    test_errors: dict[str, np.ndarray]
    history: list[dict]
    seconds: float
    best_state: dict | None = None
    select_metric: str = ""  # the validation column (without "valid_") the best epoch was chosen on


def train_student(task: Task, model: torch.nn.Module, cfg: FitConfig, lambda_ed: float = 0.0,
                  head: EDGHead | None = None, run_dir: Path | None = None, desc: str = "fit",
                  stop_after: int | None = None) -> FitResult:
    """Train ``model`` on ``task.train``; select on ``task.select_metric`` of ``task.valid``; test at the best epoch.

    With ``lambda_ed > 0`` the training set must carry ``edp`` (M, 768) molecule labels and ``head`` is trained
    (its mapper) together with the student. ``run_dir`` enables the per-epoch files and resumable checkpoints
    (see the module docstring); ``stop_after`` ends the call after that many epochs of the schedule (a rerun
    resumes from there).
    """
    cfg = cfg.filled()
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    apply_speed_choices(speed_choices(device, tf32=cfg.tf32, compile=cfg.compile), desc)
    model.to(device)
    fwd = torch.compile(model, dynamic=True) if cfg.compile else model  # training forward only; weights shared
    train, valid, test = task.train.to(device), task.valid.to(device), task.test.to(device)
    if lambda_ed > 0:
        if head is None or "edp" not in train.mol_labels:
            raise ValueError(f"{desc}: lambda_ed={lambda_ed} needs an EDG head and teacher targets on the train set")
        head.to(device)
    params = list(model.parameters()) + (list(head.mapper.parameters()) if lambda_ed > 0 else [])
    optimizer = adam_for(params, cfg.lr, device, cfg.weight_decay)  # fused on CUDA
    loss_fn(cfg.loss)  # an unknown loss name fails here, before any step
    schedule = StudentSchedule(optimizer, cfg)
    if schedule.ema is not None and not hasattr(task, "loss_terms"):
        raise ValueError(f"{desc}: select_ema needs a task whose loss has an energy term (rMD17), not {task.name}")
    state = RunState(model, optimizer, schedule, torch.Generator().manual_seed(cfg.seed),
                     modules={"mapper": head.mapper} if head is not None else {})
    metric = "ema_loss" if schedule.ema is not None else task.select_metric
    units = {**task.units, **({"ema_loss": EMA_LOSS_UNIT} if schedule.ema is not None else {})}
    loop = LoopConfig(desc, cfg.epochs, math.ceil(len(train) / cfg.batch_size), cfg.batch_size, device, run_dir,
                      checkpoints=run_dir is not None, checkpoint_every=cfg.checkpoint_every,
                      keep_last=cfg.keep_last, stop_after=stop_after,
                      units={**units, "loss": "(L_task + lambda L_ED)", "task_loss": "(L_task)",
                             "ed_loss": "(L_ED)"},
                      show=("train_loss", f"valid_{metric}", *(f"valid_{k}" for k in units if k != metric)))
    ck = find_checkpoint(loop)
    if ck is not None:
        state.restore(ck)
    elif schedule.ema is not None:  # Lightning's sanity check seeds the EMA with the untrained model
        terms: dict[str, list[float]] = {}
        evaluate(task, model, valid, cfg.eval_batch_size, terms, max_batches=SANITY_BATCHES)
        schedule.ema.update(terms["energy"])

    def validate(k):
        terms: dict[str, list[float]] | None = {} if schedule.ema is not None else None
        row = {f"valid_{key}": v for key, v in _means(evaluate(task, model, valid, cfg.eval_batch_size,
                                                                terms)).items()}
        if terms is not None:
            others = [sum(v) for v in zip(*(t for name, t in terms.items() if name != "energy"))]
            row["valid_ema_loss"] = schedule.ema_loss(terms["energy"], others)
        return row

    def batches(k):
        if head is not None:
            head.train()
        return train.batches(cfg.batch_size, shuffle=True, generator=state.generator)

    def step(batch):
        state.scheduler.before_step()
        return train_step(task, fwd, batch, optimizer, lambda_ed, head, cfg.grad_clip, cfg.loss), \
            batch.num_molecules

    def on_best(k, row):
        test_err = evaluate(task, model, test, cfg.eval_batch_size)
        best_test = _means(test_err)
        row.update({f"test_{key}": v for key, v in best_test.items()})
        return {"valid": {key[6:]: v for key, v in row.items() if key.startswith("valid_")}, "test": best_test,
                "test_errors": {key: torch.from_numpy(v) for key, v in test_err.items()}}

    def stop(st: RunState) -> bool:
        return schedule.should_stop(st.epoch, st.best.epoch, st.history[-1].get(f"valid_{metric}")
                                    if st.history else None)

    steps = ModelSteps(batches, step, evaluate=validate, select_metric=f"valid_{metric}", keep_best_weights=True,
                       on_best=on_best, end_epoch=lambda row: state.scheduler.end_epoch(row[f"valid_{metric}"]),
                       stop=stop)
    run_epochs(state, steps, loop)
    best = state.best
    return FitResult(best.epoch if best.epoch > 0 else -1, best.extra.get("valid", {}), best.extra.get("test", {}),
                     {key: v.numpy() for key, v in best.extra.get("test_errors", {}).items()}, list(state.history),
                     state.seconds, best.weights, metric)


def load_student_state(path: str | Path, map_location="cpu") -> dict:
    """The student weights of ``best_student.pt`` (or of a run folder holding it), for ``build_student(...)
    .load_state_dict``; plain data only (``train.io.checkpoint.load_checkpoint``). A run folder means its
    ``best_student.pt`` only: its resumable checkpoints hold training state, not the best weights."""
    path = model_file(path, "best_student.pt", "distillation", checkpoints=False)
    return load_checkpoint(path, map_location, "student weights")


# ---------------------------------------------------------------- one run from a config
def prepare_targets(cfg: EDGConfig, task: Task, ed_predictor: torch.nn.Module) -> tuple[PackedMolecules, str]:
    """The training set with its teacher targets ``edp`` (M, 768) attached, and a description of their origin."""
    src = cfg.teacher_targets
    if not src:
        raise ValueError(f"lambda_ed={cfg.lambda_ed} > 0 needs teacher targets (edg.teacher_targets)")
    tr = task.train
    if src == "standin:coulomb":
        with torch.no_grad():
            fs = coulomb_standin_features(tr.z, tr.pos, tr.offsets, dim=predictor_dims(ed_predictor)[0],
                                          seed=cfg.ed_predictor_seed)
            edp = ed_predictor(fs)
        return tr.with_labels(edp=edp), "stand-in: Coulomb-matrix eigenvalues -> fixed random MLP (F_S)"
    return tr.with_labels(edp=load_teacher_targets(src, tr.ids, ed_predictor)), f"file: {src}"


def run_distill(cfg: DistillConfig, force: bool = False) -> dict:
    """Run (or skip, if finished) one student x dataset x lambda x seed; returns the result record."""
    from edg.train.students import build_student

    cfg = cfg.resolved()
    cfg.validate()
    run_dir = Path(cfg.out) / cfg.run_name()
    result_path = run_dir / "result.json"
    if result_path.exists() and not force:
        log.info("%s: finished already, skipped", cfg.run_name())
        return json.loads(result_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, run_dir / "config.yaml")

    task = build_task(cfg.dataset, **cfg.task)
    torch.manual_seed(cfg.fit.seed)
    model = build_student(cfg.student, **{"out_dim": task.out_dim, **cfg.student_args})
    head, targets = None, "none (baseline)"
    if cfg.edg.lambda_ed > 0:
        edp_model = build_ed_predictor(cfg.edg.ed_predictor, cfg.edg.ed_predictor_seed)
        task.train, targets = prepare_targets(cfg.edg, task, edp_model)
        head = EDGHead(model.feature_dim, edp_model, beta=cfg.edg.smooth_l1_beta)
    res = train_student(task, model, cfg.fit, cfg.edg.lambda_ed, head, run_dir, desc=cfg.run_name())

    with atomic_path(run_dir / "test_errors.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=np.array(task.test.ids), **res.test_errors)
    if res.best_state is not None:
        save_checkpoint(res.best_state, run_dir / "best_student.pt")
    record = {"run": cfg.run_name(), "student": cfg.student, "dataset": cfg.dataset,
              "lambda_ed": cfg.edg.lambda_ed, "seed": cfg.fit.seed, "epochs": cfg.fit.epochs,
              "best_epoch": res.best_epoch, "valid": res.valid, "test": res.test,
              "units": {**task.units, **({"ema_loss": EMA_LOSS_UNIT} if res.select_metric == "ema_loss" else {})},
              "select_metric": res.select_metric, "train_seconds": res.seconds,
              "seconds_per_epoch": res.seconds / max(len(res.history), 1),
              "teacher_targets": targets, "task_info": task.describe(), "config": to_dict(cfg),
              "split": {"train": task.train.ids, "valid": task.valid.ids, "test": task.test.ids}
              if len(task.train) + len(task.valid) + len(task.test) <= 5000 else "see task_info"}
    write_json_atomic(result_path, record)
    Checkpoints(run_dir / "checkpoint").clear()
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)  # the one-file layout of earlier EDG versions
    return record


def replace(cfg: DistillConfig, **changes) -> DistillConfig:
    """A copy of ``cfg`` with top-level fields or dotted nested fields (``fit.seed``, ``edg.lambda_ed``) changed."""
    top, nested = {}, {}
    for k, v in changes.items():
        if "." in k:
            outer, inner = k.split(".", 1)
            nested.setdefault(outer, {})[inner] = v
        else:
            top[k] = v
    for outer, inner in nested.items():
        top[outer] = dataclasses.replace(getattr(cfg, outer), **inner)
    return dataclasses.replace(cfg, **top)

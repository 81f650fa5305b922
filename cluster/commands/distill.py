"""``edg distill`` (one student x dataset x lambda x seed) and ``edg benchmark`` (a grid of them + tables).

Runs are resumable: a run whose ``result.json`` exists is skipped, an interrupted one continues from its
last epoch checkpoint. ``edg benchmark --ray`` runs each grid point as a Ray task (one per run, ``--cpus-per-run``
CPUs, ``--gpus-per-run`` GPUs) on a running cluster or a local runtime; otherwise runs go one after another
in this process.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from edg.edg_core.config import ConfigError, add_config_args, apply_args, load_yaml

log = logging.getLogger(__name__)


def _key_values(items: list[str] | None, what: str) -> dict:
    """``["train_size=100", "root=/d"]`` -> ``{"train_size": 100, "root": "/d"}`` (values parsed as YAML scalars)."""
    import yaml
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = yaml.safe_load(value)
    return out


def _common(p: argparse.ArgumentParser) -> None:
    from edg.train.configs import FitConfig
    p.add_argument("--config", help="YAML file with DistillConfig fields (flags override it)")
    p.add_argument("--out", help="output folder of the runs (default: runs/distill)")
    p.add_argument("--teacher-targets", help="EDP(F_S) per molecule id: .npz or shard folder; "
                                             "'standin:coulomb' = geometry-only stand-in teacher (no ED)")
    p.add_argument("--ed-predictor", help="teacher checkpoint with the trained ED predictor "
                                          "(default: a seeded random ED predictor)")
    p.add_argument("--task", action="append", metavar="KEY=VALUE",
                   help="task option, repeatable: train_size, valid_size, test_size, root, split_id, "
                        "select_metric (rMD17); train_size, ... (QM9)")
    p.add_argument("--student-arg", action="append", metavar="KEY=VALUE",
                   help="student config override, repeatable (e.g. hidden_channels=64)")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    add_config_args(p, FitConfig, skip=("seed",))


DISTILL_HELP = """\
Train a geometry student on a task with L = L_task + lambda * L_ED (lambda 0: the baseline). Writes
<out>/<run>/result.json, metrics, test errors, best weights (best_student.pt, for edg predict) and the
resolved config. An unknown student, molecule, QM9 target or option stops before any folder is made.

Examples:
  edg distill --dataset 'rmd17:ethanol?root=embedded' --epochs 3 --batch-size 4 --out runs/quick
  edg distill --student painn --dataset rmd17:aspirin --task root=data/rmd17 --lambda 0.1 \\
      --teacher-targets runs/targets.npz --ed-predictor runs/teacher/teacher.pt
  edg distill --dataset qm9:homo --task train_size=1000 --lambda 0.1 --teacher-targets standin:coulomb
"""

BENCHMARK_HELP = """\
Run every combination of students x datasets x lambdas x seeds (skipping finished runs) and write results.md,
results.csv, lambda_sweep.csv and figures under --out.

Examples:
  edg benchmark --datasets 'rmd17:ethanol?root=embedded' --lambdas 0 0.1 --teacher-targets standin:coulomb \\
      --epochs 3 --batch-size 4 --out runs/bench
  edg benchmark --students schnet visnet --datasets rmd17:aspirin --lambdas 0 0.01 0.1 --seeds 1 2 3 \\
      --teacher-targets runs/targets.npz --ray --ray-address auto --gpus-per-run 1
"""


def register(sub) -> None:
    d = sub.add_parser("distill", help="train one student with or without EDG",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=DISTILL_HELP)
    d.add_argument("--student", help="student name (default: schnet)")
    d.add_argument("--dataset", help="a dataset spec with a task (edg data datasets): rmd17:<molecule> or "
                                     "qm9:<target> (default: rmd17:aspirin); options may follow: "
                                     "rmd17:aspirin?root=DIR&split_id=2&limit=100 (same as --task root=DIR ...)")
    d.add_argument("--lambda", dest="lambda_ed", type=float, help="EDG weight lambda (default: 0 = baseline)")
    d.add_argument("--seed", type=int, help="seed of init, shuffling (default: 42)")
    _common(d)
    d.set_defaults(func=cmd_distill)

    b = sub.add_parser("benchmark", help="grid of students x datasets x lambdas x seeds, then result tables",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=BENCHMARK_HELP)
    b.add_argument("--students", nargs="+", default=["schnet"])
    b.add_argument("--datasets", nargs="+", default=["rmd17:ethanol", "rmd17:aspirin"],
                   help="dataset specs with a task (edg data datasets), each optionally with ?root=DIR&... "
                        "(see edg distill)")
    b.add_argument("--lambdas", nargs="+", type=float, default=[0.0, 0.1])
    b.add_argument("--seeds", nargs="+", type=int, default=[42])
    b.add_argument("--ray", action="store_true", help="run each grid point as a Ray task")
    from edg.cluster.runtime import ADDRESS_HELP
    b.add_argument("--ray-address", help=ADDRESS_HELP)
    b.add_argument("--address", dest="ray_address", help=argparse.SUPPRESS)  # old name of --ray-address
    b.add_argument("--ray-temp-dir", help="session folder of a local Ray runtime")
    b.add_argument("--cpus-per-run", type=float, default=1.0)
    b.add_argument("--gpus-per-run", type=float, default=0.0)
    b.add_argument("--no-plots", action="store_true", help="tables only")
    _common(b)
    b.set_defaults(func=cmd_benchmark)


def check_names(args) -> None:
    """Student names and dataset specs given as flags, checked before torch is imported (a typo answers in
    about a second, not after the heavy imports); the full check (``DistillConfig.validate``) follows."""
    from edg.edg_core.datasets import resolve
    from edg.train.students import check_student_name
    for name in [getattr(args, "student", None), *(getattr(args, "students", None) or [])]:
        if name is not None:
            check_student_name(name)
    for spec in [getattr(args, "dataset", None), *(getattr(args, "datasets", None) or [])]:
        if spec is not None:
            resolve(spec, "task")


def _base_config(args):
    from edg.train.loops.distill import DistillConfig
    cfg = load_yaml(DistillConfig, args.config) if args.config else DistillConfig()
    changes = {}
    for name in ("student", "dataset", "out"):
        if getattr(args, name, None) is not None:
            changes[name] = getattr(args, name)
    if getattr(args, "lambda_ed", None) is not None:
        changes["edg.lambda_ed"] = args.lambda_ed
    if getattr(args, "seed", None) is not None:
        changes["fit.seed"] = args.seed
    if args.teacher_targets is not None:
        changes["edg.teacher_targets"] = args.teacher_targets
    if args.ed_predictor is not None:
        changes["edg.ed_predictor"] = args.ed_predictor
    from edg.train.loops.distill import replace
    cfg = replace(cfg, **changes)
    cfg = replace(cfg, fit=apply_args(cfg.fit, args),
                  task={**cfg.task, **_key_values(args.task, "--task")},
                  student_args={**cfg.student_args, **_key_values(args.student_arg, "--student-arg")})
    if cfg.edg.lambda_ed < 0:
        raise ConfigError(f"lambda must be >= 0, got {cfg.edg.lambda_ed}")
    return cfg


def _check_targets(cfg) -> None:
    cfg.validate()  # unknown student / dataset / molecule / target: one-line error before any run starts
    if cfg.edg.lambda_ed > 0 and not cfg.edg.teacher_targets:
        raise ConfigError(f"lambda {cfg.edg.lambda_ed} > 0 needs --teacher-targets (a .npz / shard folder from the "
                          "teacher stage, or standin:coulomb)")


def _line(r: dict) -> str:
    test = ", ".join(f"{k} {v:.4f} {r.get('units', {}).get(k, '')}".rstrip() for k, v in r["test"].items()
                     if k != "weighted_mae")
    return (f"{r['run']}: best epoch {r['best_epoch']}/{r['epochs']}, test {test} "
            f"({r['seconds_per_epoch']:.1f} s/epoch)")


def run_one(cfg, force: bool = False) -> dict:
    """One distillation run in this process, holding its run folder (see ``distill_runs.distill_task``)."""
    from edg.cluster.distill_runs import distill_task
    return distill_task(cfg, force=force)


def cmd_distill(args) -> int:
    check_names(args)
    cfg = _base_config(args)
    _check_targets(cfg)
    r = run_one(cfg, force=args.force)
    print(_line(r))
    print(f"-> {Path(cfg.out) / cfg.run_name()}")
    return 0


def _run_with_ray(cfgs, args) -> list[dict]:
    from edg.cluster.distill_runs import run_on_ray
    from edg.cluster.runtime import ray_session
    with ray_session(args.ray_address, temp_dir=args.ray_temp_dir):
        return run_on_ray(cfgs, args.cpus_per_run, args.gpus_per_run, args.force,
                          on_result=lambda r: print(_line(r), flush=True))


def cmd_benchmark(args) -> int:
    check_names(args)
    from edg.cluster.distill_runs import grid
    from edg.train.report import write_report
    base = _base_config(args)
    cfgs = grid(base, args.students, args.datasets, args.lambdas, args.seeds)
    for c in cfgs:
        _check_targets(c)
    print(f"benchmark: {len(cfgs)} runs -> {base.out}")
    if args.ray:
        _run_with_ray(cfgs, args)
    else:
        for c in cfgs:
            print(_line(run_one(c, force=args.force)), flush=True)
    wanted = {c.run_name() for c in cfgs}
    from edg.train.report import collect_results
    results = [r for r in collect_results(base.out) if r["run"] in wanted]
    paths = write_report(base.out, results, plots=not args.no_plots)
    print(json.dumps({k: (str(v) if not isinstance(v, list) else [str(x) for x in v]) for k, v in paths.items()},
                     indent=1))
    return 0

"""Distillation runs as units of work: the grid of a benchmark, and each run as a Ray task.

Used by ``edg benchmark`` (``cluster/commands/distill.py``) and the pipeline's distill stage
(``cluster/pipeline.py``); the training itself is ``train.loops.distill.run_distill``.
"""
from __future__ import annotations

import itertools
from pathlib import Path

from edg.edg_core.errors import EDGError


def grid(base, students, datasets, lambdas, seeds) -> list:
    """Every DistillConfig of the grid (students x datasets x lambdas x seeds)."""
    from edg.train.loops.distill import replace
    return [replace(base, student=s, dataset=d, **{"edg.lambda_ed": float(lam), "fit.seed": int(seed)})
            for s, d, lam, seed in itertools.product(students, datasets, lambdas, seeds)]


def check_gpus(gpus_per_run: float, resources: dict) -> None:
    """Asking for GPUs on a cluster that has none would leave every task pending: a one-line error instead."""
    have = float(resources.get("GPU", 0.0))
    if gpus_per_run > 0 and have < gpus_per_run:
        raise EDGError(f"--gpus-per-run {gpus_per_run:g}: the Ray cluster has {have:g} GPUs, so no run could start; "
                       f"use --gpus-per-run 0 (students then train on the CPUs) or a cluster with GPUs")


def run_on_ray(cfgs, cpus: float = 1.0, gpus: float = 0.0, force: bool = False, on_result=None,
               run_url: str | None = None, work_dir: str | None = None) -> list[dict]:
    """Run every DistillConfig as a Ray task (Ray must be initialised); results in finishing order.

    ``run_url``: the runs belong to a pipeline whose ``out`` is that URL and whose local working copy is
    ``work_dir`` (every path in the configs lies under it); each task then fetches its inputs from the URL,
    runs in a temporary folder and uploads its run folder, so it may land on any node."""
    import ray
    check_gpus(gpus, ray.cluster_resources())
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus)(distill_task)
    pending = [remote.options(name=f"distill:{c.run_name()}").remote(c, force, run_url, work_dir) for c in cfgs]
    out = []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        r = ray.get(done[0])
        if on_result is not None:
            on_result(r)
        out.append(r)
    return out


def distill_task(cfg, force: bool = False, run_url: str | None = None, work_dir: str | None = None) -> dict:
    """One distillation run; with ``run_url`` (see ``run_on_ray``) on a node that need not see ``work_dir``.

    A local run holds its run folder (``<out>/<run name>``: refusals and the single-writer lease) wherever it
    runs, in this process or as a Ray task, so two commands never train into one run at once. A run under a
    pipeline's ``run_url`` is covered by the pipeline's lease on that URL."""
    from edg.train.loops.distill import run_distill
    if run_url is None:
        from edg.edg_core.run_folder import RunFolder
        with RunFolder.open(str(Path(cfg.out) / cfg.run_name()), command="edg distill"):
            return run_distill(cfg, force)
    import dataclasses
    import shutil
    import tempfile

    from edg.edg_core.storage import Mirror, download, join
    work, tmp = Path(work_dir).resolve(), Path(tempfile.mkdtemp(prefix="edg-distill-"))

    def rel(path) -> str:
        return Path(path).resolve().relative_to(work).as_posix()

    def fetch(path):
        if path is None or str(path).startswith("standin:"):
            return path
        download(join(run_url, rel(path)), tmp / rel(path))
        return str(tmp / rel(path))
    runs = rel(cfg.out)
    run = Mirror(join(run_url, runs, cfg.run_name()), local=tmp / runs / cfg.run_name())
    run.pull()  # a finished or half-done run resumes
    edg = dataclasses.replace(cfg.edg, ed_predictor=fetch(cfg.edg.ed_predictor),
                              teacher_targets=fetch(cfg.edg.teacher_targets))
    try:
        with run.autosync(60.0):
            return run_distill(dataclasses.replace(cfg, out=str(tmp / runs), edg=edg), force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

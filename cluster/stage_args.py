"""The flags every stage command shares (``edg dft``, ``edg render``, ``edg data convert``, ``edg extract``):
where the stage runs (this process or Ray actors), what each actor holds, and which Ray cluster to use."""
from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from .engine import Workers

OVERWRITE_HELP = ("write into --out even when it is a non-empty folder that is not an EDG run (files there with "
                  "the names EDG writes are replaced); / and the home folder are refused always")

WORKER_FLAGS = ("--actors", "--cpus-per-actor", "--gpus-per-actor", "--max-retries", "--ray-address")


def add_worker_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workers (this process or a pool of Ray actors)")
    g.add_argument("--actors", type=int, default=None,
                   help="Ray actors for this stage; 0 = run in this process. Default: 0, except inside a Ray job "
                        "(`ray job submit`) or with $RAY_ADDRESS set: one actor per GPU share, else per CPU")
    g.add_argument("--workers", dest="actors", type=int, help=argparse.SUPPRESS)  # the earlier name
    g.add_argument("--local", dest="actors", action="store_const", const=0, help="same as --actors 0")
    g.add_argument("--cpus-per-actor", type=float, default=None,
                   help="CPUs reserved by each actor; its threads (PySCF, torch) follow it (default: the cluster's "
                        "CPUs shared among the actors, at least 1 and at most one node's)")
    g.add_argument("--cpus-per-worker", dest="cpus_per_actor", type=float, help=argparse.SUPPRESS)
    g.add_argument("--gpus-per-actor", type=float, default=None,
                   help="GPU share of each actor, e.g. 0.25 = four actors per GPU (default: 0.25 when the "
                        "cluster has GPUs and the stage can use them, else 0)")
    g.add_argument("--gpus-per-worker", dest="gpus_per_actor", type=float, help=argparse.SUPPRESS)
    g.add_argument("--max-retries", type=int, default=2,
                   help="times an item is retried when its actor dies (node lost, OOM kill; default: 2)")
    from .runtime import ADDRESS_HELP
    g.add_argument("--ray-address", default=None, help=ADDRESS_HELP)


@contextlib.contextmanager
def stage_workers(args: argparse.Namespace, what: str, uses_gpu: bool = True,
                  items: int | None = None) -> Iterator[Workers]:
    """``Workers`` from the flags above, inside a Ray session when actors are wanted; prints the choice.
    ``items``: how many items the stage has, so that a small job gets no more actors than items and each actor
    the CPUs the others leave (one molecule on a node gets every core, not one)."""
    from .runtime import ray_session, use_ray
    actors = args.actors
    on_ray, why = use_ray(None if actors is None else actors > 0)
    if not on_ray:
        print(f"{what}: in this process ({why}; --actors N for Ray actors)", flush=True)
        yield Workers(actors=0)
        return
    with ray_session(args.ray_address) as resources:
        gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
        share = args.gpus_per_actor
        if share is None:
            share = 0.25 if gpus > 0 and uses_gpu else 0.0
        n = actors or (int(gpus / share) if share > 0 else max(1, int(cpus // (args.cpus_per_actor or 1))))
        if not actors and items:
            n = max(1, min(n, items))
        per = args.cpus_per_actor or float(max(1, min(cpus // n, _largest_node_cpus())))
        print(f"{what}: {n} Ray actors x {per:g} CPU, {share:g} GPU", flush=True)
        yield Workers(actors=n, cpus=per, gpus=share, max_retries=args.max_retries)


def _largest_node_cpus() -> float:
    import ray
    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)


def add_overwrite_arg(p: argparse.ArgumentParser) -> None:
    """``--overwrite``: see ``OVERWRITE_HELP`` (not ``--force``, which reruns pipeline stages)."""
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


@contextlib.contextmanager
def open_run(args: argparse.Namespace, command: str, out: str | None = None):
    """The command's run folder (``edg_core.run_folder.RunFolder``) at ``--out`` (or ``out``), opened before any
    work: refused locations and a second writer fail here in one line; the lease is released when the block
    ends, however it ends."""
    from edg.edg_core.run_folder import RunFolder
    with RunFolder.open(out or args.out, overwrite=getattr(args, "overwrite", False), command=command) as run:
        yield run

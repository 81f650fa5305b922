"""Fused DFT + rendering end to end (``cluster.stages.run_fused``): molecules in, shard samples out, mol/s.

    python -m bench fused                                # in-process, 2 embedded QM9 molecules (paper settings)
    python -m bench fused --n=64 --actors=1,4,8,16       # Ray actor pools on this machine (GPU: 1/actors each)
    python -m bench fused --input='qm9?split=train&limit=256' --actors=16 --gpus-per-actor=0.0625
    python -m bench fused --quick                        # STO-3G on a 0.6-bohr grid: checks the benchmark only

Two figures per run. The rate is the steady one: molecules finished after the first ``warm`` (1 in-process,
one per actor with actors) divided by the time from the ``warm``-th to the last finish, so start-up is left
out (actor start, the CUDA context, GPU4PySCF's first-call kernel set-up, about 20 s on a GPU). A molecule's
finish is when its DFT result file is written, the last thing ``FusedActor`` does for it. The time to the
first finish, start-up included, is printed beside it, and so is the end-to-end rate an operator sees. On
a GPU the line also gives the anchor: 1.3 mol/s, GPU4PySCF SCF + density + ESP in one process on an H100
(2026-11, ../shared/docs/DESIGN.md "Measured anchors"); the fused figure adds the rendering to that.
"""
from __future__ import annotations

import itertools
import os
import tempfile
import time

ANCHOR_MOL_PER_S = 1.3
ANCHOR = "the 1.3 mol/s anchor (GPU4PySCF SCF + density + ESP, one process, H100, 2026-11; no rendering)"


def _parse(argv):
    opts = {"n": None, "actors": None, "input": None, "gpus_per_actor": None, "cpus_per_actor": 1.0,
            "quick": False}
    for a in argv:
        k, _, v = a.lstrip("-").partition("=")
        if k == "n":
            opts["n"] = int(v)
        elif k == "actors":
            opts["actors"] = [int(x) for x in v.split(",")]
        elif k == "input":
            opts["input"] = v
        elif k == "gpus-per-actor":
            opts["gpus_per_actor"] = float(v)
        elif k == "cpus-per-actor":
            opts["cpus_per_actor"] = float(v)
        elif k == "quick":
            opts["quick"] = True
    return opts


def steady_rate(finished: list[float], warm: int = 1) -> float | None:
    """Molecules per second after start-up: with ``finished`` the times (s, any origin) at which molecules
    finished, the ones after the first ``warm`` divided by the time from the ``warm``-th finish to the last.
    None when fewer than ``warm + 1`` finished (or they finished at the same instant)."""
    t = sorted(finished)
    warm = max(warm, 1)
    if len(t) <= warm or t[-1] <= t[warm - 1]:
        return None
    return (len(t) - warm) / (t[-1] - t[warm - 1])


def finish_times(dft_out: str) -> list[float]:
    """When each molecule finished (``time.time()`` seconds): the modification times of its DFT result file
    in ``dft_out``, which ``FusedActor`` writes after the molecule's rendering."""
    from edg.dft.worker import result_files
    return sorted(os.stat(p).st_mtime_ns / 1e9 for p in result_files(dft_out))


def run(mols, actors: int, gpus_per_actor: float, cpus_per_actor: float, dft_overrides: dict | None = None) -> dict:
    """One end-to-end run into a temporary folder: counts, seconds, the steady and end-to-end mol/s, when each
    molecule finished (``finished``, seconds since the start, sorted; ``first_s`` the first), the first failure
    reasons."""
    from pathlib import Path

    from edg.cluster.stages import Workers, run_fused
    from edg.dft.config import DFTConfig
    from edg.edg_core.io import read_jsonl
    from edg.edg_core.stage import Failure
    from edg.render.config import RenderConfig
    with tempfile.TemporaryDirectory(prefix="edg-bench-fused-") as tmp:
        workers = Workers(actors=actors, cpus=cpus_per_actor, gpus=gpus_per_actor)
        started = time.time()
        t0 = time.perf_counter()
        s = run_fused(mols, f"{tmp}/shards", f"{tmp}/dft", DFTConfig(**(dft_overrides or {})), RenderConfig(),
                      workers, total=len(mols))
        dt = time.perf_counter() - t0
        finished = [t - started for t in finish_times(f"{tmp}/dft")]  # seconds since the run started
        failures = [Failure.from_json(e) for p in sorted(Path(tmp).rglob("failures.jsonl")) for e in read_jsonl(p)]
    warm = max(actors, 1)
    return {"actors": actors, "done": s.done, "failed": s.failed, "seconds": dt, "mol_per_s": s.done / dt,
            "steady_mol_per_s": steady_rate(finished, warm), "warm": warm, "timed": max(len(finished) - warm, 0),
            "finished": finished, "first_s": finished[0] if finished else None,
            "reasons": [f"{f.record}: {f.reason}" for f in failures]}


def describe(r: dict, gpu: bool, n_gpus: int) -> str:
    """The throughput part of the result line: steady rate (beside the anchor on a GPU), start-up, end to end."""
    per = max(n_gpus, 1)
    if r["steady_mol_per_s"] is None:
        steady = f"no steady rate (needs more than {r['warm']} finished molecules)"
    else:
        timed = f"{r['timed']} molecule{'s' if r['timed'] != 1 else ''}"
        steady = f"{r['steady_mol_per_s']:.3f} mol/s steady ({timed} after the first {r['warm']}, start-up excluded)"
        if gpu:
            ratio = r["steady_mol_per_s"] / per / ANCHOR_MOL_PER_S
            steady += f", {r['steady_mol_per_s'] / per:.3f} mol/s per GPU = {ratio:.2f} x {ANCHOR}"
    first = f"first molecule after {r['first_s']:.1f} s" if r["first_s"] is not None else "none finished"
    return (f"{steady}; {first}; end to end {r['done']} in {r['seconds']:.1f} s = {r['mol_per_s']:.3f} mol/s "
            f"(start-up included)")


def main(argv: list[str]) -> int:
    import torch
    from edg.dft.backend import gpu_usable
    from edg.edg_core.readers import open_source

    from .dft import QUICK, embedded_qm9
    opts = _parse(argv)
    gpu = gpu_usable() and torch.cuda.is_available()
    n = opts["n"] or (2 if not gpu else 32)
    if opts["input"]:
        mols = list(itertools.islice(open_source(opts["input"]).molecules(), n))
        if len(mols) < n:
            print(f"fused: --n={n} but {opts['input']} holds {len(mols)} molecules; using {len(mols)}", flush=True)
    else:
        mols = embedded_qm9(n, "bench fused")
    overrides = QUICK if opts["quick"] else None
    recipe = "STO-3G, 0.6-bohr grid (--quick: not the paper's cost)" if opts["quick"] else "B3LYP/6-31G**"
    device = "GPU (gpu4pyscf + torch)" if gpu else "CPU (pyscf + torch)"
    sweeps = opts["actors"] or [0]
    n_gpus = torch.cuda.device_count() if gpu else 0
    rc = 0
    for actors in sweeps:
        gpa = opts["gpus_per_actor"] if opts["gpus_per_actor"] is not None else \
            (n_gpus / actors if gpu and actors else 0.0)
        if actors:
            from edg.cluster.runtime import ray_session
            with ray_session("local"):
                r = run(mols, actors, gpa, opts["cpus_per_actor"], overrides)
        else:
            r = run(mols, 0, 0.0, opts["cpus_per_actor"], overrides)
        where = "in-process" if not actors else f"{actors} Ray actors x {gpa:g} GPU, {opts['cpus_per_actor']:g} CPU"
        if r["failed"]:
            rc = 1
            print(f"fused dft+render {device}, {where}: {r['failed']} of {len(mols)} molecules FAILED", flush=True)
            for line in r["reasons"][:5]:
                print(f"  {line}", flush=True)
        if r["done"] == 0:
            print(f"fused dft+render {device}, {where}: no molecule finished, no throughput", flush=True)
            continue
        print(f"fused dft+render {device}, {where} ({recipe}, 6 ED + 4 structure views at 224 px): "
              f"{describe(r, gpu, n_gpus)}", flush=True)
    return rc

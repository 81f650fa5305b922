"""Fused DFT + rendering end to end (``cluster.stages.run_fused``): molecules in, shard samples out, mol/s.

    python -m bench fused                                # in-process, 2 embedded QM9 molecules (paper settings)
    python -m bench fused --n=64 --actors=1,4,8,16       # Ray actor pools on this machine (GPU: 1/actors each)
    python -m bench fused --input='qm9?split=train&limit=256' --actors=16 --gpus-per-actor=0.0625

The rate is end to end as an operator sees it: actor start-up and the first GPU call's kernel set-up included
(run enough molecules per actor to amortise them). With GPUs, mol/s per GPU = mol/s / GPUs in use.
"""
from __future__ import annotations

import itertools
import tempfile
import time


def _parse(argv):
    opts = {"n": None, "actors": None, "input": None, "gpus_per_actor": None, "cpus_per_actor": 1.0}
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
    return opts


def run(mols, actors: int, gpus_per_actor: float, cpus_per_actor: float) -> dict:
    """One end-to-end run into a temporary folder: counts, seconds, mol/s and the first failure reasons."""
    from pathlib import Path

    from edg.cluster.stages import Workers, run_fused
    from edg.dft.config import DFTConfig
    from edg.edg_core.io import read_jsonl
    from edg.edg_core.stage import Failure
    from edg.render.config import RenderConfig
    with tempfile.TemporaryDirectory(prefix="edg-bench-fused-") as tmp:
        workers = Workers(actors=actors, cpus=cpus_per_actor, gpus=gpus_per_actor)
        t0 = time.perf_counter()
        s = run_fused(mols, f"{tmp}/shards", f"{tmp}/dft", DFTConfig(), RenderConfig(), workers, total=len(mols))
        dt = time.perf_counter() - t0
        failures = [Failure.from_json(e) for p in sorted(Path(tmp).rglob("failures.jsonl")) for e in read_jsonl(p)]
    return {"actors": actors, "done": s.done, "failed": s.failed, "seconds": dt, "mol_per_s": s.done / dt,
            "reasons": [f"{f.record}: {f.reason}" for f in failures]}


def main(argv: list[str]) -> int:
    import torch
    from edg.dft.backend import gpu_usable
    from edg.edg_core.readers import open_source

    from .dft import embedded_qm9
    opts = _parse(argv)
    gpu = gpu_usable() and torch.cuda.is_available()
    n = opts["n"] or (2 if not gpu else 32)
    if opts["input"]:
        mols = list(itertools.islice(open_source(opts["input"]).molecules(), n))
        if len(mols) < n:
            print(f"fused: --n={n} but {opts['input']} holds {len(mols)} molecules; using {len(mols)}", flush=True)
    else:
        mols = embedded_qm9(n, "bench fused")
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
                r = run(mols, actors, gpa, opts["cpus_per_actor"])
        else:
            r = run(mols, 0, 0.0, opts["cpus_per_actor"])
        where = "in-process" if not actors else f"{actors} Ray actors x {gpa:g} GPU, {opts['cpus_per_actor']:g} CPU"
        if r["failed"]:
            rc = 1
            print(f"fused dft+render {device}, {where}: {r['failed']} of {len(mols)} molecules FAILED", flush=True)
            for line in r["reasons"][:5]:
                print(f"  {line}", flush=True)
        if r["done"] == 0:
            print(f"fused dft+render {device}, {where}: no molecule finished, no throughput", flush=True)
            continue
        per_gpu = f", {r['mol_per_s'] / max(n_gpus, 1):.3f} mol/s per GPU" if gpu else ""
        print(f"fused dft+render {device}, {where}: {r['done']} molecules ({r['failed']} failed) in "
              f"{r['seconds']:.1f} s -> {r['mol_per_s']:.3f} mol/s{per_gpu} (B3LYP/6-31G**, 6 ED + 4 structure "
              f"views at 224 px, start-up included)", flush=True)
    return rc

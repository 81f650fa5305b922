"""EDG overhead: time of one SchNet training step on rMD17 with lambda = 0 (baseline) and lambda > 0 (EDG).

Both use ``train.loops.distill.train_step`` with the same model state, batches and optimiser; baseline and EDG steps
alternate so that load from other processes hits both alike. Reported: median process CPU time per step (all
threads; one thread by default, robust on a shared machine) and median wall time, and the relative overhead of each.
``python -m bench distill [--quick]`` (--quick: a smaller SchNet, fewer steps).
"""
from __future__ import annotations

import copy
import statistics
import time

import torch


def measure(molecule: str = "aspirin", batch_size: int = 32, rounds: int = 5, steps: int = 4,
            student_args: dict | None = None, lambda_ed: float = 0.1, threads: int = 1) -> dict:
    from edg.train.io.model_files import build_ed_predictor
    from edg.train.loops.distill import train_step
    from edg.train.models.edg_head import EDGHead
    from edg.train.students import build_student
    from edg.train.tasks import build_task

    torch.set_num_threads(threads)  # one thread: CPU time then measures the step's work, not spinning
    task = build_task(f"rmd17:{molecule}", train_size=batch_size * steps, valid_size=1, test_size=1)
    torch.manual_seed(0)
    base = build_student("schnet", **(student_args or {}))
    head = EDGHead(base.feature_dim, build_ed_predictor(None, seed=0))
    train = task.train.with_labels(edp=torch.randn(len(task.train), 768))
    batches = list(train.batches(batch_size))
    models = {"baseline": copy.deepcopy(base).train(), "edg": copy.deepcopy(base).train()}
    lams = {"baseline": 0.0, "edg": lambda_ed}
    opts = {"baseline": torch.optim.Adam(models["baseline"].parameters(), lr=5e-4),
            "edg": torch.optim.Adam(list(models["edg"].parameters()) + list(head.mapper.parameters()), lr=5e-4)}
    cpu: dict[str, list[float]] = {"baseline": [], "edg": []}
    wall: dict[str, list[float]] = {"baseline": [], "edg": []}
    for r in range(rounds + 1):  # round 0 warms up
        for b in batches:
            for mode in (("baseline", "edg") if r % 2 else ("edg", "baseline")):
                t0, c0 = time.perf_counter(), time.process_time()
                train_step(task, models[mode], b, opts[mode], lams[mode], head if lams[mode] > 0 else None)
                if r > 0:
                    wall[mode].append(time.perf_counter() - t0)
                    cpu[mode].append(time.process_time() - c0)
    c = {k: statistics.median(v) for k, v in cpu.items()}
    w = {k: statistics.median(v) for k, v in wall.items()}
    return {"molecule": molecule, "batch_size": batch_size, "steps_timed": len(cpu["edg"]),
            "baseline_cpu_ms": 1e3 * c["baseline"], "edg_cpu_ms": 1e3 * c["edg"],
            "overhead_cpu_pct": 100.0 * (c["edg"] / c["baseline"] - 1.0),
            "baseline_wall_ms": 1e3 * w["baseline"], "edg_wall_ms": 1e3 * w["edg"],
            "overhead_wall_pct": 100.0 * (w["edg"] / w["baseline"] - 1.0), "threads": torch.get_num_threads()}


QUICK_STUDENT = {"hidden_channels": 64, "num_filters": 64, "num_interactions": 3, "num_gaussians": 25,
                 "cutoff": 5.0}


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    r = measure(rounds=4, steps=2 if quick else 1, student_args=QUICK_STUDENT if quick else None)
    size = "small SchNet (64 hidden, 3 interactions)" if quick else "SchNet (paper size: 128 hidden, 6 interactions)"
    print(f"distill step  {size} rmd17:{r['molecule']} batch {r['batch_size']} ({r['steps_timed']} steps each, "
          f"{r['threads']} threads): CPU time baseline {r['baseline_cpu_ms']:.0f} ms, EDG {r['edg_cpu_ms']:.0f} ms, "
          f"overhead {r['overhead_cpu_pct']:+.1f}%; wall {r['baseline_wall_ms']:.0f} / {r['edg_wall_ms']:.0f} ms "
          f"({r['overhead_wall_pct']:+.1f}%)")

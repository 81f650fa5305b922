"""EDG overhead: time of one SchNet training step on rMD17 with lambda = 0 (baseline) and lambda > 0 (EDG).

Both use ``train.fit.train_step`` with the same model state, batches and optimiser, interleaved in rounds so
that load from other processes hits both alike; reported: median step time and the relative overhead.
``python -m bench distill [--quick]``.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch


def measure(molecule: str = "aspirin", batch_size: int = 32, rounds: int = 5, steps: int = 4,
            student_args: dict | None = None, lambda_ed: float = 0.1) -> dict:
    from train.edg import EDGHead, build_ed_predictor
    from train.fit import train_step
    from train.students import build_student
    from train.tasks import build_task

    task = build_task(f"rmd17:{molecule}", train_size=batch_size * steps, valid_size=1, test_size=1)
    torch.manual_seed(0)
    base = build_student("schnet", **(student_args or {}))
    head = EDGHead(base.feature_dim, build_ed_predictor(None, seed=0))
    train = task.train.with_labels(edp=torch.randn(len(task.train), 768))
    batches = list(train.batches(batch_size))
    times: dict[str, list[float]] = {"baseline": [], "edg": []}
    for r in range(rounds + 1):  # round 0 warms up
        for mode in ("baseline", "edg"):
            model = copy.deepcopy(base).train()
            lam = lambda_ed if mode == "edg" else 0.0
            params = list(model.parameters()) + (list(head.mapper.parameters()) if lam > 0 else [])
            opt = torch.optim.Adam(params, lr=5e-4)
            for b in batches:
                t0 = time.perf_counter()
                train_step(task, model, b, opt, lam, head if lam > 0 else None)
                if r > 0:
                    times[mode].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"molecule": molecule, "batch_size": batch_size, "steps_timed": len(times["edg"]),
            "baseline_ms": 1e3 * med["baseline"], "edg_ms": 1e3 * med["edg"],
            "overhead_pct": 100.0 * (med["edg"] / med["baseline"] - 1.0), "threads": torch.get_num_threads()}


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    r = measure(rounds=2 if quick else 5, steps=2 if quick else 4)
    print(f"distill step  schnet rmd17:{r['molecule']} batch {r['batch_size']} ({r['steps_timed']} steps each, "
          f"{r['threads']} threads): baseline {r['baseline_ms']:.1f} ms, EDG {r['edg_ms']:.1f} ms, "
          f"overhead {r['overhead_pct']:+.1f}%")

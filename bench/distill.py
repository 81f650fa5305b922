"""EDG overhead: time of one SchNet training step on rMD17 with lambda = 0 (baseline) and lambda > 0 (EDG).

Both use ``train.loops.distill.train_step`` with the same model state, batches and optimiser (Adam, fused on
CUDA, as the distillation loop builds it); baseline and EDG steps alternate so that load from other processes
hits both alike. Reported: median wall time per step and its relative overhead, and on the CPU also the median
process CPU time (all threads; one thread by default, robust on a shared machine). On CUDA every timed step
ends with a device synchronisation, so the wall time is the GPU's, and the CPU time is not reported.

``python -m bench distill [--quick] [--device=cuda|cpu]`` (--quick: a smaller SchNet, fewer steps; the
device defaults to CUDA when torch sees one, as the training commands' ``auto``).
"""
from __future__ import annotations

import copy
import statistics
import time

import torch


def measure(molecule: str = "aspirin", batch_size: int = 32, rounds: int = 5, steps: int = 4,
            student_args: dict | None = None, lambda_ed: float = 0.1, threads: int = 1,
            device: str | torch.device = "cpu") -> dict:
    from edg.train.io.model_files import build_ed_predictor
    from edg.train.loops.distill import train_step
    from edg.train.loops.optim import adam_for
    from edg.train.models.edg_head import EDGHead
    from edg.train.students import build_student
    from edg.train.tasks import build_task

    device = torch.device(device)
    cuda = device.type == "cuda"
    torch.set_num_threads(threads)  # one thread: CPU time then measures the step's work, not spinning
    task = build_task(f"rmd17:{molecule}", train_size=batch_size * steps, valid_size=1, test_size=1)
    torch.manual_seed(0)
    base = build_student("schnet", **(student_args or {}))
    head = EDGHead(base.feature_dim, build_ed_predictor(None, seed=0)).to(device)
    train = task.train.with_labels(edp=torch.randn(len(task.train), 768)).to(device)
    batches = list(train.batches(batch_size))
    models = {"baseline": copy.deepcopy(base).to(device).train(), "edg": copy.deepcopy(base).to(device).train()}
    lams = {"baseline": 0.0, "edg": lambda_ed}
    opts = {"baseline": adam_for(models["baseline"].parameters(), 5e-4, device),
            "edg": adam_for(list(models["edg"].parameters()) + list(head.mapper.parameters()), 5e-4, device)}
    cpu: dict[str, list[float]] = {"baseline": [], "edg": []}
    wall: dict[str, list[float]] = {"baseline": [], "edg": []}
    for r in range(rounds + 1):  # round 0 warms up
        for b in batches:
            for mode in (("baseline", "edg") if r % 2 else ("edg", "baseline")):
                if cuda:
                    torch.cuda.synchronize(device)
                t0, c0 = time.perf_counter(), time.process_time()
                train_step(task, models[mode], b, opts[mode], lams[mode], head if lams[mode] > 0 else None)
                if cuda:
                    torch.cuda.synchronize(device)
                if r > 0:
                    wall[mode].append(time.perf_counter() - t0)
                    cpu[mode].append(time.process_time() - c0)
    c = {k: statistics.median(v) for k, v in cpu.items()}
    w = {k: statistics.median(v) for k, v in wall.items()}
    return {"molecule": molecule, "batch_size": batch_size, "steps_timed": len(cpu["edg"]), "device": str(device),
            "fused_optimizer": bool(opts["edg"].defaults.get("fused")),
            "baseline_cpu_ms": 1e3 * c["baseline"], "edg_cpu_ms": 1e3 * c["edg"],
            "overhead_cpu_pct": 100.0 * (c["edg"] / c["baseline"] - 1.0),
            "baseline_wall_ms": 1e3 * w["baseline"], "edg_wall_ms": 1e3 * w["edg"],
            "overhead_wall_pct": 100.0 * (w["edg"] / w["baseline"] - 1.0), "threads": torch.get_num_threads()}


QUICK_STUDENT = {"hidden_channels": 64, "num_filters": 64, "num_interactions": 3, "num_gaussians": 25,
                 "cutoff": 5.0}


def _device(argv: list[str]) -> str:
    for a in argv:
        if a.startswith("--device="):
            return a.split("=", 1)[1]
    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    device = _device(argv)
    r = measure(rounds=4, steps=2 if quick else 1, student_args=QUICK_STUDENT if quick else None, device=device)
    size = "small SchNet (64 hidden, 3 interactions)" if quick else "SchNet (paper size: 128 hidden, 6 interactions)"
    where = f"on {r['device']}" + (" (fused Adam)" if r["fused_optimizer"] else "")
    wall = (f"wall baseline {r['baseline_wall_ms']:.1f} ms, EDG {r['edg_wall_ms']:.1f} ms, "
            f"overhead {r['overhead_wall_pct']:+.1f}%")
    if r["device"].startswith("cuda"):
        times = f"{wall} (synchronised)"
    else:
        times = (f"CPU time baseline {r['baseline_cpu_ms']:.0f} ms, EDG {r['edg_cpu_ms']:.0f} ms, overhead "
                 f"{r['overhead_cpu_pct']:+.1f}%; {wall}")
    print(f"distill step  {size} rmd17:{r['molecule']} batch {r['batch_size']} {where} ({r['steps_timed']} steps "
          f"each, {r['threads']} threads): {times}", flush=True)

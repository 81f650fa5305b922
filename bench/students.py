"""Student training speed: energy + force steps per second on rMD17 aspirin frames (batch 32).

One step = forward, forces by autograd with create_graph, loss 0.05 * L1(E) + 0.95 * L1(F) (the paper's
rMD17 loss), backward and an Adam update, at the paper-default model sizes. Runs on CUDA when available.
``python -m bench students [--quick] [--models=schnet,visnet] [--cpu]``.
"""
from __future__ import annotations

import os
import statistics
import time

import torch


def aspirin_batches(batch_size: int, n_batches: int, device: torch.device) -> list[tuple]:
    """(z, pos Å, batch, energy kcal/mol, forces kcal/mol/Å) for consecutive aspirin training frames."""
    from edg.edg_core.readers import load_rmd17, rmd17_root
    frames = load_rmd17(rmd17_root(), "aspirin", 1)["train"]
    n_atoms = len(frames.z)
    out = []
    for k in range(n_batches):
        sl = slice(k * batch_size, (k + 1) * batch_size)
        z = torch.as_tensor(frames.z, dtype=torch.long).repeat(batch_size)
        pos = torch.as_tensor(frames.pos[sl], dtype=torch.float32).reshape(-1, 3)
        batch = torch.arange(batch_size).repeat_interleave(n_atoms)
        energy = torch.as_tensor(frames.energy[sl], dtype=torch.float32)
        forces = torch.as_tensor(frames.forces[sl], dtype=torch.float32).reshape(-1, 3)
        out.append(tuple(t.to(device) for t in (z, pos, batch, energy, forces)))
    return out


def measure(name: str, batch_size: int = 32, steps: int = 5, warmup: int = 2, device: str | None = None) -> dict:
    from edg.train.students import build_student, energy_and_forces
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = build_student(name).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, fused=dev.type == "cuda")  # as the distill loop
    batches = aspirin_batches(batch_size, steps + warmup, dev)
    mean_e = batches[0][3].mean()
    from edg.train.students.graph import GraphSizes
    z_host = batches[0][0].cpu()  # the host-side sizes a training batch carries (no device read in the step)
    sizes = GraphSizes(batch_size, len(z_host) // batch_size, (int(z_host.min()), int(z_host.max())))
    times = []
    for k, (z, pos, batch, energy, forces) in enumerate(batches):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        _, e_pred, f_pred = energy_and_forces(model, z, pos, batch, sizes=sizes)
        loss = 0.05 * (e_pred - (energy - mean_e)).abs().mean() + 0.95 * (f_pred - forces).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {"model": name, "device": str(dev), "batch_size": batch_size, "steps": len(times),
            "step_ms": 1e3 * step, "steps_per_s": 1.0 / step, "frames_per_s": batch_size / step,
            "threads": torch.get_num_threads(), "loss": float(loss.detach()), "load_avg": os.getloadavg()[0]}


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    models = ["schnet", "visnet"]
    for a in argv:
        if a.startswith("--models="):
            models = a.split("=", 1)[1].split(",")
    device = "cpu" if "--cpu" in argv else None
    for name in models:
        r = measure(name, steps=2 if quick else 5, warmup=1 if quick else 2, device=device)
        print(f"students train step  {r['model']} rmd17:aspirin batch {r['batch_size']} E+F on {r['device']} "
              f"({r['threads']} threads, load avg {r['load_avg']:.1f}, median of {r['steps']}): "
              f"{r['step_ms']:.0f} ms/step, {r['steps_per_s']:.2f} steps/s, {r['frames_per_s']:.0f} frames/s",
              flush=True)

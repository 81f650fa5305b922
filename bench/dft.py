"""DFT stage timings: SCF + density + ESP per molecule (mol/s) for a few embedded QM9 molecules on the CPU
(and the GPU when usable), and the band-ESP option's speed and error against the full ESP.

    python -m bench dft                 # 3 QM9 molecules (paper settings), band study on the largest
    python -m bench dft --aspirin       # + band study on aspirin (rMD17 test frame 0): several minutes
    python -m bench dft --n=5           # more molecules (at most the 40 embedded ones)
    python -m bench dft --gpu-only      # GPU rows only (a lent GPU machine: no CPU rows, no band study)
    python -m bench dft --quick         # STO-3G on a 0.6-bohr grid: checks the benchmark, not the speed

A molecule that fails is printed with its reason; the throughput counts finished molecules only and says how
many failed, and the benchmark then exits non-zero.
"""
from __future__ import annotations

import time

import numpy as np

QUICK = {"basis": "sto-3g", "basis_sulfur": "sto-3g", "grid_spacing": 0.6}


def _parse(argv):
    opts = {"n": 3, "aspirin": False, "gpu_only": False, "quick": False}
    for a in argv:
        if a == "--aspirin":
            opts["aspirin"] = True
        elif a == "--gpu-only":
            opts["gpu_only"] = True
        elif a == "--quick":
            opts["quick"] = True
        elif a.startswith("--n="):
            opts["n"] = int(a.split("=", 1)[1])
    return opts


def embedded_qm9(n: int, what: str = "bench") -> list:
    """``n`` of the embedded QM9 molecules, spread evenly over the set (from CH4 to 6 heavy atoms); says so
    when ``n`` is more than the set holds and returns them all."""
    from edg.edg_core.readers import open_source
    every = list(open_source("embedded:qm9").molecules())
    if n > len(every):
        print(f"{what}: --n={n} is more than the {len(every)} embedded QM9 molecules; using all {len(every)}",
              flush=True)
        return every
    step = max(1, min(7, len(every) // max(n, 1)))  # 3 molecules: qm9:1, qm9:8, qm9:15 (docs/dft.md)
    return every[::step][:n]


def per_molecule(backend: str, mols, overrides: dict | None = None) -> dict:
    """Process ``mols`` on ``backend`` and print one line each plus the throughput of the finished ones.
    Returns ``{"done", "failed", "seconds"}``."""
    from edg.dft.config import DFTConfig
    from edg.dft.worker import DFTWorker
    w = DFTWorker(DFTConfig(backend=backend, **(overrides or {})), out=None)
    if backend == "gpu":  # the first GPU call sets up kernels (about 14 s): keep it out of the timing
        st = w.process(mols[0])
        if st["status"] != "done":
            print(f"dft {backend} warm-up {mols[0].id}: FAILED {st['reason']}", flush=True)
    done = failed = 0
    t0 = time.perf_counter()
    for m in mols:
        st = w.process(m)
        if st["status"] != "done":
            failed += 1
            print(f"dft {backend} {m.id}: FAILED {st['reason']}", flush=True)
            continue
        done += 1
        r = st["result"]
        t = r.timings
        print(f"dft {backend} {m.id:8s} {m.formula:8s} grid {'x'.join(map(str, r.grid.shape))}: "
              f"scf {t['scf_s']:.2f} s, ed {t['ed_s']:.3f} s, esp {t['esp_s']:.2f} s, total {r.wall_s:.2f} s "
              f"[{r.method}]", flush=True)
    dt = time.perf_counter() - t0
    if done == 0:
        print(f"dft {backend}: all {failed} molecules FAILED, no throughput", flush=True)
    else:
        note = f"; {failed} FAILED" if failed else ""
        print(f"dft {backend} throughput: {done / dt:.3f} mol/s ({done} of {len(mols)} molecules{note}, "
              f"SCF + ED + ESP)", flush=True)
    return {"done": done, "failed": failed, "seconds": dt}


def band_study(mol, overrides: dict | None = None) -> None:
    """Full vs band ESP on the paper's grid for one molecule (CPU)."""
    from edg.dft import fields
    from edg.dft.config import DFTConfig
    from edg.dft.esp_band import esp_band_cpu
    from edg.dft.scf import run_scf
    from edg.edg_core.grid import grid_for_positions
    cfg = DFTConfig(backend="cpu", **(overrides or {}))
    out = run_scf(mol, cfg, "cpu")
    grid = grid_for_positions(mol.pos, cfg.grid_spacing, cfg.grid_padding)
    pts = grid.points()
    ed = fields.density(out.mol, out.dm, pts).reshape(grid.shape)
    t = time.perf_counter()
    full = fields.esp(out.mol, out.dm, pts, "cpu")
    t_full = time.perf_counter() - t
    t = time.perf_counter()
    fast, exact = esp_band_cpu(out.mol, out.dm, pts, ed, iso=cfg.iso_value, band=cfg.esp_band, stride=cfg.esp_stride)
    t_band = time.perf_counter() - t
    err = np.abs(fast - full)
    edf = ed.reshape(-1)
    outside, inside = (edf < cfg.esp_band[0]) & ~exact, (edf > cfg.esp_band[1]) & ~exact
    print(f"dft esp-band {mol.id} {mol.formula} ({grid.n_points} points, nao {out.mol.nao_nr()}): "
          f"full {t_full:.1f} s, band {t_band:.1f} s ({t_full / t_band:.1f}x), exact at {exact.mean():.1%} of points")
    print(f"dft esp-band {mol.id} |error| Hartree/e: band points {err[exact].max():.1e} (max); "
          f"outside (rho < {cfg.esp_band[0]}) median {np.median(err[outside]):.1e}, p99 "
          f"{np.percentile(err[outside], 99):.1e}, max {err[outside].max():.1e}; inside (rho > {cfg.esp_band[1]}) "
          f"median {np.median(err[inside]):.1e}, max {err[inside].max():.1e}")


def main(argv: list[str]) -> int:
    from edg.dft.backend import gpu_usable
    from edg.edg_core.readers import open_source
    opts = _parse(argv)
    overrides = QUICK if opts["quick"] else None
    if opts["quick"]:
        print("dft --quick: STO-3G on a 0.6-bohr grid (checks the benchmark; not the paper's cost)", flush=True)
    mols = embedded_qm9(opts["n"], "bench dft")
    gpu = gpu_usable()
    if opts["gpu_only"] and not gpu:
        print("dft --gpu-only: no usable GPU (needs cupy, gpu4pyscf and a CUDA device)", flush=True)
        return 1
    results = []
    if not opts["gpu_only"]:
        results.append(per_molecule("cpu", mols, overrides))
    if gpu:
        results.append(per_molecule("gpu", mols, overrides))
    if not opts["gpu_only"]:
        band_study(max(mols, key=lambda m: m.n_atoms), overrides)
        if opts["aspirin"]:
            band_study(next(iter(open_source("rmd17:aspirin?split=test&limit=1").molecules())), overrides)
    failed = sum(r["failed"] for r in results)
    if failed:
        print(f"dft: {failed} molecule runs FAILED (reasons above)", flush=True)
    return 1 if failed else 0

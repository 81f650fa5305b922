"""``edg pipeline``: the whole EDG pipeline from one YAML config (see cluster/pipeline.py)."""
from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "pipeline", help="run every stage from a config: DFT -> images -> ImageED -> teacher -> students -> tables",
        description="Run the whole pipeline described by a YAML config (shipped: configs/demo.yaml, "
                    "qm9-small.yaml, rmd17.yaml, paper.yaml). Each stage is skipped when it finished before "
                    "and resumes when it was interrupted; outputs, the resolved config and manifest.json go "
                    "to the config's `out` folder. On a cluster: "
                    "`ray job submit --working-dir . -- edg pipeline --config configs/paper.yaml`.")
    p.add_argument("--config", required=True, help="pipeline YAML (see configs/)")
    p.add_argument("--out", help="output folder or fsspec URL, e.g. s3://bucket/runs/x (overrides `out`)")
    p.add_argument("--work-dir", help="local working copy of a URL --out (default: $EDG_CACHE/staging/<hash>)")
    p.add_argument("--input", help="input spec for DFT/pretraining (overrides the config's `input`)")
    p.add_argument("--ray", action=argparse.BooleanOptionalAction, default=None,
                   help="run stages as Ray work (overrides ray.enabled)")
    from edg.cluster.runtime import ADDRESS_HELP
    p.add_argument("--ray-address", help=ADDRESS_HELP)
    from edg.cluster.registry import NAMES
    p.add_argument("--stop-after", choices=NAMES, metavar="STAGE",
                   help=f"stop after this stage ({', '.join(NAMES)})")
    p.add_argument("--force", nargs="+", default=(), metavar="STAGE", help="rerun these stages even if finished")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config field, typed like the YAML (repeatable): --set students.fit.epochs=5 "
                        "--set dft.basis=sto-3g --set ray.dft.actors=4")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (defaults <- YAML <- flags) as YAML and exit")
    from edg.cluster.stage_args import add_overwrite_arg
    add_overwrite_arg(p)
    p.set_defaults(func=cmd_pipeline)


def cmd_pipeline(args) -> int:
    from edg.cluster.pipeline import Pipeline, load_pipeline_config
    from edg.edg_core.config import merge_nested, parse_assignments
    over: dict = parse_assignments(args.set)
    if args.out:
        over["out"] = args.out
    if args.work_dir:
        over["work_dir"] = args.work_dir
    if args.input:
        over["input"] = args.input
    if args.stop_after:
        over["stop_after"] = args.stop_after
    ray = {}
    if args.ray is not None:
        ray["enabled"] = args.ray
    if args.ray_address:
        ray["address"] = args.ray_address
    if ray:
        over = merge_nested(over, {"ray": ray})
    cfg = load_pipeline_config(args.config, over)
    if args.print_config:
        import yaml
        from edg.edg_core.config import to_dict
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    pipeline = Pipeline(cfg, force=tuple(args.force), overwrite=args.overwrite)
    manifest = pipeline.run()
    out = cfg.out.rstrip("/")
    print(f"\npipeline finished in {manifest['seconds']:.1f} s -> {out}")
    if pipeline.store.remote:
        print(f"  local working copy: {pipeline.out}")
    print(f"  run manifest:   {out}/manifest.json   (resolved config: {out}/config.yaml)")
    print(f"  ED image shards: {out}/shards/ed")
    print(f"  contact sheet:  {out}/contact_sheet.png   (all views of the first molecules)")
    if "distill" in manifest["stages"]:
        print(f"  result table:   {out}/distill/results.md")
        tables = manifest["stages"]["distill"].get("tables")
        if tables:
            print(open(tables).read())
    fails = {k: v for k, v in manifest["failures"].items() if v}
    if fails:
        print("  failures: " + json.dumps(fails))
    return 0

"""``edg represent``: the ED representation study (paper Table 4) on shards rendered with --keep-fields."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

from edg.edg_core.config import add_config_args, dump_yaml, resolve, to_dict
from edg.edg_core.io import append_jsonl, read_jsonl, write_bytes_atomic, write_json_atomic

HELP = """\
Compare ED representations by how well they predict the DFT energy labels E1..E6 of the same molecules:
ED point clouds (PointNet), ED voxels (3-D ResNet), rendered ED images (ResNet18 over 6 views). The shards
must come from `edg render --fields <dft_out> --keep-fields` (ED grid + images + E1..E6 labels).

Outputs in --out: config.yaml (resolved), split.json, results.jsonl (one line per finished representation;
a rerun skips those unless --force), table.md and table.csv (rows: representation, columns: E1..E6 test RMSE,
the paper's Table 4 metric, with the MAE beside it, in Hartree and kcal/mol). While a representation
trains: <rep>/metrics.jsonl, metrics.csv, progress.json and a line per epoch on stderr, and
<rep>/checkpoint/ (every --checkpoint-every epochs) from which an interrupted run resumes.

Example:
  edg represent --shards runs/rep64 --out runs/represent --epochs 30 --reps pointnet voxel image
"""


def register(sub) -> None:
    import argparse

    from edg.train.configs import RepresentationConfig
    p = sub.add_parser("represent", help="ED representation study (Table 4): point cloud vs voxels vs images",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="shard folder/glob from edg render --keep-fields")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="YAML file with RepresentationConfig fields (flags override it)")
    p.add_argument("--force", action="store_true", help="retrain representations already in results.jsonl")
    add_config_args(p, RepresentationConfig)
    p.set_defaults(func=cmd_represent)


def _csv(results: list[dict]) -> bytes:
    from edg.train.loops.representation import TARGETS
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["representation", "metric", "unit", *TARGETS, "best_epoch", "epochs", "seconds"])
    for r in results:
        for metric in ("rmse", "mae"):
            for unit, suffix in (("hartree", "hartree"), ("kcal/mol", "kcal_per_mol")):
                key = f"test_{metric}_{suffix}"
                w.writerow([r["rep"], metric, unit, *(f"{r[key][t]:.6g}" for t in TARGETS), r["best_epoch"],
                            r["epochs"], f"{r['seconds']:.1f}"])
    return buf.getvalue().encode()


def _markdown(results: list[dict], cfg, split: dict) -> bytes:
    from edg.train.loops.representation import markdown_table
    n = {k: len(v) for k, v in split.items()}
    lines = ["# ED representation study (Table 4 layout)", "",
             f"Test RMSE (MAE in brackets) per DFT energy label; split seed {cfg.seed}: {n['train']} train / "
             f"{n['valid']} validation / {n['test']} test molecules; model chosen on validation; atom references "
             f"{'subtracted' if cfg.atom_refs else 'not used'}.", "",
             "## Hartree", "", markdown_table(results, "hartree"), "",
             "## kcal/mol", "", markdown_table(results, "kcal"), "",
             "| representation | best epoch / epochs | seconds |", "|---|---|---|",
             *(f"| {r['title']} | {r['best_epoch']} / {r['epochs']} | {r['seconds']:.0f} |" for r in results), ""]
    return "\n".join(lines).encode()


def cmd_represent(args) -> int:
    from edg.edg_core.shards import read_samples, shard_paths
    from edg.train.data.study import build_study_data, split_indices
    from edg.train.loops.representation import RepresentationConfig, atomref_baseline, train_representation
    cfg = resolve(RepresentationConfig, args, args.config)
    cfg = replace(cfg)  # re-run the config checks on the flags' values
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, out / "config.yaml")
    shard_paths(args.shards)  # a missing folder fails here with a clear message
    data = build_study_data(read_samples(args.shards), cfg)
    split = split_indices(len(data), cfg.split, cfg.seed)
    write_json_atomic(out / "split.json", {"seed": cfg.seed, **{k: [data.ids[i] for i in v]
                                                                 for k, v in split.items()}})
    manifest = out / "results.jsonl"
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("reps", "checkpoint_every", "keep_last")}
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back from results.jsonl
    done = {} if args.force else {r["rep"]: r for r in read_jsonl(manifest)  # records before RMSE: retrained
                                  if r.get("settings") == settings and "test_rmse_hartree" in r}
    results = [atomref_baseline(data, split, cfg)]
    for rep in cfg.reps:
        if rep in done:
            print(f"{rep}: finished before (results.jsonl), skipped")
            results.append(done[rep])
            continue
        r = {**train_representation(rep, data, split, cfg, run_dir=out / rep), "settings": settings}
        append_jsonl(manifest, r)
        results.append(r)
        print(f"{rep}: best epoch {r['best_epoch']}/{r['epochs']}, test RMSE (Ha) "
              + ", ".join(f"{t} {v:.4f}" for t, v in r["test_rmse_hartree"].items()), flush=True)
    write_bytes_atomic(out / "table.md", _markdown(results, cfg, split))
    write_bytes_atomic(out / "table.csv", _csv(results))
    print((out / "table.md").read_text())
    print(json.dumps({"out": str(out), "molecules": len(data)}))
    return 0

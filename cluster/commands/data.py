"""``edg data``: list datasets, inspect sources, convert them to shards, write audit files of splits."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from edg.cluster.stage_args import add_overwrite_arg, add_worker_args
from edg.edg_core.errors import DataSourceError, InvalidRecord
from edg.edg_core.io import atomic_path, progress
from edg.edg_core.readers import open_source


def register(sub) -> None:
    p = sub.add_parser("data", help="inspect inputs, convert them to shards, write split files",
                       description="Data utilities: info, convert, split.")
    dsub = p.add_subparsers(dest="data_command", metavar="<data command>", required=True)

    d = dsub.add_parser("datasets", help="list the registered datasets",
                        description="Every dataset name a spec can start with: its subset, splits, options, "
                                    "task targets and paper family (edg_core.datasets).")
    d.set_defaults(func=cmd_datasets)

    i = dsub.add_parser("info", help="summarise a source or a shard folder",
                        description="Count records, atoms, elements and labels of an input spec or shards.")
    i.add_argument("input", help="input spec (see `edg --help`) or a shard folder/glob")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.add_argument("--show", type=int, default=0, metavar="N",
                   help="also list the first N records with their labels (e.g. EDBench's E1..E6 per molecule)")
    i.set_defaults(func=cmd_info)

    c = dsub.add_parser("convert", help="read any input and write WebDataset shards",
                        description="Convert an input spec to shards (molecule + labels). Resumable: samples "
                                    "already in finished shards are skipped. Bad records go to "
                                    "<out>/failures.jsonl and the run continues.",
                        epilog="example: edg data convert --input embedded:qm9 --out runs/shards/qm9")
    c.add_argument("--input", required=True,
                   help="input spec, e.g. embedded, qm9?split=train, rmd17:aspirin?split=test")
    c.add_argument("--out", required=True, help="output folder for <prefix>-NNNNNN.tar shards: a local path or an "
                                                "fsspec URL (s3://bucket/shards, gs://..., each shard uploaded whole)")
    add_overwrite_arg(c)
    c.add_argument("--prefix", default="shard", help="shard file prefix (default: shard)")
    c.add_argument("--maxcount", type=int, default=1000, help="samples per shard (default: 1000)")
    c.add_argument("--maxsize", type=float, default=1.0, help="max shard size in GiB (default: 1)")
    add_worker_args(c)
    c.set_defaults(func=cmd_convert)

    s = dsub.add_parser("split", help="write a data set's train/valid/test membership to .npz",
                        description="Write the split so anyone can audit it. qm9: 1-based QM9 gdb ids of "
                                    "split customized_01 (seed 42; 110,000/10,000/rest). rmd17:<molecule>: "
                                    "frame ids = indices into the original MD17 trajectory (950/50/1000).")
    s.add_argument("dataset", help="a dataset spec, e.g. qm9 or rmd17:<molecule>[?root=DIR&split_id=K]")
    s.add_argument("--out", required=True, help="output .npz with keys train, valid, test")
    s.set_defaults(func=cmd_split)


def _summarise(records) -> dict:
    """Counts of a stream of records; ``charges``/``multiplicities`` count the molecules per value, and
    ``inferred`` how many of them had charge or multiplicity chosen by EDG because the input did not state it."""
    n = bad = atoms = 0
    elements, labels, charges, mults, inferred = Counter(), Counter(), Counter(), Counter(), Counter()
    first_bad = []
    for r in progress(records, "scan"):
        if isinstance(r, InvalidRecord):
            bad += 1
            if len(first_bad) < 5:
                first_bad.append(str(r))
            continue
        n += 1
        atoms += r.n_atoms
        elements.update(r.symbols)
        labels.update(r.labels.keys())
        charges[r.charge] += 1
        mults[r.multiplicity] += 1
        inferred.update(r.inferred)
    return {"molecules": n, "invalid": bad, "atoms": atoms, "mean_atoms": round(atoms / max(n, 1), 2),
            "elements": dict(elements.most_common()), "labels": dict(labels),
            "charges": {str(k): v for k, v in sorted(charges.items())},
            "multiplicities": {str(k): v for k, v in sorted(mults.items())},
            "inferred": {k: inferred[k] for k in ("charge", "multiplicity")}, "first_invalid": first_bad}


def _inferred_note(summary: dict) -> str | None:
    """One line saying how many molecules had charge/multiplicity inferred, and how to state them."""
    inf = summary.get("inferred") or {}
    parts = [f"{k} of {v} molecule{'s' if v != 1 else ''}" for k, v in inf.items() if v]
    if not parts:
        return None
    return (f"inferred (not in the input): {', '.join(parts)} (charge 0, lowest multiplicity); state them in the "
            "file (extXYZ charge=/multiplicity=) or with ?charge=N&multiplicity=M on the input spec")


def _first_records(records, n: int) -> list[dict]:
    """id, formula and scalar labels of the first ``n`` good records (array labels by their shape)."""
    out = []
    for r in records:
        if isinstance(r, InvalidRecord):
            continue
        labels = {k: (float(v) if np.ndim(v) == 0 else f"array{tuple(np.shape(v))}") for k, v in r.labels.items()
                  if not isinstance(v, str)}
        out.append({"id": r.id, "formula": r.formula, "labels": labels})
        if len(out) >= n:
            break
    return out


def cmd_info(args) -> int:
    p = Path(args.input)
    if p.is_dir() or str(args.input).endswith(".tar") or "*" in args.input:
        from edg.edg_core.shards import sample_molecule
        members = Counter()

        def recs():  # a damaged sample is counted as invalid (and named), the scan goes on
            from edg.edg_core.errors import ShardError
            from edg.edg_core.shards import decode_sample, iter_shard, shard_paths
            for path in shard_paths(args.input):
                for raw in iter_shard(path):
                    try:
                        d = decode_sample(raw, torch_tensors=False)
                    except ShardError as e:
                        yield InvalidRecord(f"{path}:{raw.get('__key__', '?')}", str(e).split(": ", 1)[-1])
                        continue
                    members.update(k for k in ("grid", "ed", "esp", "edimg", "stimg", "fu", "fs", "edp") if k in d)
                    yield sample_molecule(d)
        summary = _summarise(recs())
        summary["members"] = dict(members)
    else:
        src = open_source(args.input)  # one Source: a FIFO or standard input is read once
        summary = _summarise(src)
        if args.show:
            summary["records"] = _first_records(src, args.show)
    summary["input"] = args.input
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            if k == "records":  # one line per record: id, formula, label=value ...
                print(f"{k:>14}:")
                for r in v:
                    labels = " ".join(f"{n}={x:.10g}" if isinstance(x, float) else f"{n}={x}"
                                      for n, x in r["labels"].items())
                    print(f"{'':>16}{r['id']} {r['formula']} {labels}")
                continue
            print(f"{k:>14}: {v}")
        if note := _inferred_note(summary):
            print(note)
    return 0


def cmd_convert(args) -> int:
    from edg.cluster.stage_args import open_run, stage_workers
    from edg.cluster.stages import run_convert
    with open_run(args, "edg data convert") as run:
        src = open_source(args.input)
        with stage_workers(args, "edg data convert", uses_gpu=False) as workers:
            s = run_convert(src, run, workers, total=len(src), prefix=args.prefix, maxcount=args.maxcount,
                            maxsize=int(args.maxsize * (1 << 30)))
    print(f"edg {s.line()} -> {args.out}")
    if s.failed:
        print(f"failure manifest: {s.failures}")
    return 0


def cmd_datasets(args) -> int:
    from edg.edg_core.datasets import DATASETS
    for ds in DATASETS.values():
        form = ds.name if ds.name != "file" else "<path>"
        if ds.subset and ds.name != "file":
            form += f":<{ds.subset}>" if ds.subset_required else f"[:<{ds.subset}>]"
        print(f"{form}: {ds.description}")
        splits = f"; splits: {', '.join(ds.splits)} (default {ds.default_split})" if ds.splits else ""
        print(f"    options: {', '.join(ds.record_options)}{splits}")
        if ds.task:
            print(f"    task: targets {', '.join(ds.targets)}; metrics {', '.join(ds.metrics)}; "
                  f"paper family {ds.family}" + (f" ({ds.paper_table})" if ds.paper_table else ""))
    return 0


def cmd_split(args) -> int:
    from edg.edg_core.datasets import DATASETS, resolve
    spec = resolve(args.dataset)
    out = Path(args.out)
    if spec.dataset.split_members is None:
        with_splits = ", ".join(n for n, d in DATASETS.items() if d.split_members)
        raise DataSourceError(f"edg data split: {spec.name} has no fixed split; datasets with one: {with_splits}")
    parts, info = spec.dataset.split_ids(spec)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **parts, info=np.array(info))
    print(f"{info}: " + ", ".join(f"{k} {len(v)}" for k, v in parts.items()) + f" -> {out}")
    return 0

"""``edg dft``: B3LYP single points + ED/ESP grids for every molecule of an input, in-process or on Ray actors."""
from __future__ import annotations

from edg_core.config import add_config_args, apply_args, dump_yaml, load_yaml
from edg_core.readers import open_source


def register(sub) -> None:
    from dft.config import DFTConfig
    p = sub.add_parser(
        "dft", help="DFT single points (energies E1..E6, HOMO/LUMO, dipole) and ED/ESP cube grids",
        description="Run B3LYP/6-31G** (6-31+G** with S; RKS/UKS by multiplicity) for every molecule of an "
                    "input and write <out>/fields/<key>.npz (scalars + float16 ED/ESP on a 0.4-bohr grid). "
                    "Resumable: finished molecules are skipped; failures go to <out>/failures.jsonl and the run "
                    "continues. --workers 0 (or --local) runs in this process; otherwise Ray actors "
                    "(an existing cluster if reachable, else a local runtime).")
    p.add_argument("--input", required=True, help="input spec (see `edg --help`), e.g. embedded:qm9, qm9:train")
    p.add_argument("--out", required=True, help="output folder, or an fsspec URL (s3://bucket/dft: each result "
                                                "file is uploaded whole by the worker that wrote it)")
    p.add_argument("--config", help="YAML file with a `dft:` section of DFTConfig fields (flags override it)")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray actors (0 = in-process; default: one per GPU share, else one per CPU)")
    p.add_argument("--local", action="store_true", help="same as --workers 0")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved by each actor (default: 1)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPU share of each actor (default 0.25 when the cluster has GPUs and the backend allows)")
    p.add_argument("--ray-address", default="auto",
                   help="Ray cluster address, or `local` for a fresh runtime (default: auto)")
    p.add_argument("--retry-failed", action="store_true", help="retry molecules listed in failures.jsonl")
    add_config_args(p, DFTConfig)
    p.set_defaults(func=cmd_dft)


def _config(args):
    from dft.config import DFTConfig
    cfg = load_yaml(DFTConfig, args.config, section="dft") if args.config else DFTConfig()
    return apply_args(cfg, args)


def cmd_dft(args) -> int:
    from cluster.stages import Workers, run_dft
    from edg_core.storage import Mirror, exists, join
    cfg = _config(args)
    out = args.out
    store = Mirror(out, exclude=("fields/*", "cubes/*"), temporary=True)
    dump_yaml(cfg, store.local / "dft_config.yaml")
    store.commit("dft_config.yaml")
    store.close()
    src = open_source(args.input)
    total = len(src)
    if args.local or args.workers == 0:
        from dft.backend import resolve_backend
        print(f"edg dft: {total} records from {args.input} -> {out} (in-process, backend "
              f"{resolve_backend(cfg.backend)})")
        s = run_dft(src, out, cfg, Workers(actors=0), total=total, retry_failed=args.retry_failed)
    else:
        from cluster.runtime import ray_session
        with ray_session(args.ray_address) as resources:
            gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
            gpw = args.gpus_per_worker
            if gpw is None:
                gpw = 0.25 if gpus > 0 and cfg.backend != "cpu" else 0.0
            n = args.workers or (int(gpus / gpw) if gpw > 0 else max(1, int(cpus // args.cpus_per_worker)))
            print(f"edg dft: {total} records from {args.input} -> {out} (Ray: {n} actors x "
                  f"{args.cpus_per_worker:g} CPU, {gpw:g} GPU)")
            s = run_dft(src, out, cfg, Workers(actors=n, cpus=args.cpus_per_worker, gpus=gpw), total=total,
                        retry_failed=args.retry_failed)
    print(f"edg dft: done {s['done']}, skipped {s['skipped']}, failed {s['failed']} in {s['seconds']:.1f} s "
          f"({s['molecules_per_s']:.3f} mol/s)")
    if s["failed"] or exists(s["failures"]):
        print(f"failure manifest: {s['failures']}")
    print(f"results: {join(out, 'fields')}")
    return 0

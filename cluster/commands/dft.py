"""``edg dft``: B3LYP single points + ED/ESP grids for every molecule of an input, in-process or on Ray actors."""
from __future__ import annotations

from edg.edg_core.config import add_config_args, dump_yaml
from edg.edg_core.readers import open_source


def register(sub) -> None:
    from edg.cluster.stage_args import add_overwrite_arg, add_worker_args
    from edg.dft.config import DFTConfig
    p = sub.add_parser(
        "dft", help="DFT single points (energies E1..E6, HOMO/LUMO, dipole) and ED/ESP cube grids",
        description="Run B3LYP/6-31G** (6-31+G** with S; RKS/UKS by multiplicity) for every molecule of an "
                    "input and write <out>/fields/<pp>/<key>.npz (scalars + float16 ED/ESP on a 0.4-bohr grid). "
                    "Resumable: finished molecules are skipped; failures go to <out>/failures.jsonl (one line "
                    "per molecule) and the run continues. Runs in this process by default (using every core), "
                    "or on Ray actors with --actors N.",
        epilog="example: edg dft --input embedded:qm9?limit=4 --out runs/dft --basis sto-3g")
    p.add_argument("--input", required=True, help="input spec (see `edg --help`), e.g. embedded:qm9, qm9?split=train")
    p.add_argument("--out", required=True, help="output folder, or an fsspec URL (s3://bucket/dft: each result "
                                                "file is uploaded whole by the worker that wrote it)")
    p.add_argument("--config", help="YAML config (e.g. a pipeline config): its `dft:` section sets DFTConfig "
                                    "fields; flags override it")
    add_overwrite_arg(p)
    p.add_argument("--retry-failed", action="store_true", help="retry molecules listed in failures.jsonl")
    add_worker_args(p)
    add_config_args(p.add_argument_group("DFT settings (DFTConfig)"), DFTConfig)
    p.set_defaults(func=cmd_dft)


def cmd_dft(args) -> int:
    from edg.cluster.pipeline import resolve_section
    from edg.cluster.stage_args import open_run, stage_workers
    from edg.cluster.stages import run_dft
    from edg.dft.backend import resolve_backend
    from edg.edg_core.run_folder import DFTLayout
    from edg.edg_core.storage import exists
    cfg = resolve_section(args, "dft")
    with open_run(args, "edg dft") as run:
        src = open_source(args.input)
        dump_yaml(cfg, run.local / "dft_config.yaml")
        run.commit("dft_config.yaml")
        print(f"edg dft: {len(src)} records from {args.input} -> {run.url} "
              f"(backend {resolve_backend(cfg.backend)})")
        with stage_workers(args, "edg dft", uses_gpu=cfg.backend != "cpu", items=len(src)) as workers:
            s = run_dft(src, run, cfg, workers, total=len(src), retry_failed=args.retry_failed)
    print(f"edg {s.line()}")
    if s.failed or exists(s.failures):
        print(f"failure manifest: {s.failures}")
    print(f"results: {run.where(DFTLayout.FIELDS)}")
    return 0

"""``edg report``: compare finished student runs (tables in the paper's layout, learning curves)."""
from __future__ import annotations

import argparse

from edg.edg_core.errors import EDGError

HELP = """\
Compare finished runs of `edg distill`, `edg benchmark` or `edg pipeline`: result tables in the paper's layout
(Table 1 QM9 with energies in meV, Table 2 rMD17: mean ± std over seeds, with and without EDG), results.csv,
lambda_sweep.csv and learning curves, written to --out.

Each w/ vs w/o EDG pair also gets Δ = w/ − w/o per seed, paired by seed and split, with its 95% paired
t-interval (results.csv: paired_seeds, diff_mean, diff_ci95_low/high, paired_t_p, verdict): "within noise"
where the interval contains 0, "1 seed: no interval" with one seed. Run several seeds of both arms
(`edg benchmark --seeds 42 43 44`, a pipeline's students.seeds) to get intervals.

Each RUN is a run folder (holding result.json) or a folder of run folders (a benchmark's --out, a pipeline's
distill/ folder). Runs with the same name from two places are refused (they would count as two seeds).

Example:
  edg report runs/quick runs/bench --out runs/compare
"""


def register(sub) -> None:
    p = sub.add_parser("report", help="compare finished student runs: tables and learning curves",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="a run folder, or a folder of run folders")
    p.add_argument("--out", required=True, help="folder for the tables and figures")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(func=cmd_report)


def finished_runs(paths: list[str]) -> list[dict]:
    """The result records of every finished run under ``paths`` (a run folder or one level above), in order;
    a path with none, or one run name found twice, is a one-line ``EDGError``."""
    from edg.train.report import collect_results
    results, seen = [], {}
    for given in paths:
        try:
            found = collect_results(given)
        except (OSError, ValueError, TypeError) as e:  # unreadable, not JSON, not an object
            raise EDGError(f"{given}: a result record that cannot be read ({e})") from None
        if not found:
            raise EDGError(f"{given}: no finished run here (a run folder holds result.json) or one level below")
        for r in found:
            if "run" not in r:
                raise EDGError(f"{r['run_dir']}: not a result record of edg distill (no 'run' field)")
            if r["run"] in seen:
                raise EDGError(f"run {r['run']!r} found twice ({seen[r['run']]} and {r['run_dir']}); "
                               f"give one of them")
            seen[r["run"]] = r["run_dir"]
            results.append(r)
    return results


def cmd_report(args) -> int:
    results = finished_runs(args.runs)
    from edg.train.report import write_report
    paths = write_report(args.out, results, plots=not args.no_plots)
    print(f"report: {len(results)} runs")
    for name, value in paths.items():
        for p in value if isinstance(value, list) else [value]:
            print(f"  {name}: {p}")
    return 0

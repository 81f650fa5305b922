"""Result tables in the paper's layout (w/o EDG, w/ EDG, relative improvement) and figures.

Table 1 (QM9): one column per target in the paper's order (mu ... Cv, with units), rows per student: w/o EDG,
w/ EDG, Impr. and the chosen lambda. Table 2 (rMD17): one row per molecule and metric (Energy, Forces),
columns per student: w/o EDG, w/ EDG, Impr. Students appear in the paper's order, others after them.

Input: the run records written by ``train.loops.distill.run_distill`` (``<out>/<run>/result.json``, with
``history.jsonl`` and ``test_errors.npz`` beside them). "w/ EDG" is the lambda > 0 whose mean validation
metric (over seeds) is lowest, as the paper searches lambda; every number is a mean (± std) over seeds.
Each w/ vs w/o pair also gets its difference paired by seed (same seed, same split) with a 95% paired
t-interval (``train.paired``): "within noise" where the interval contains 0, "1 seed: no interval" with one
seed. Units as the paper prints them: a Table 1 (QM9) energy recorded in eV (the Geom3D unit the task trains
and predicts in) is shown in meV (``shown_unit``).
Figures (matplotlib, Agg): learning curves, the lambda sweep (paper Figure 4), and per-frame |error| along the
test trajectory (paper Figure 3).
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from edg.edg_core.datasets import dataset_of, group_of
from edg.edg_core.io import read_jsonl, write_bytes_atomic

from .metrics import mean_std, relative_improvement
from .paired import PairedDiff, paired_difference

METRIC_NAMES = {"energy_mae": "Energy", "force_mae": "Forces", "mae": "MAE"}
PRINTED = {"eV": ("meV", 1000.0)}
"""Recorded unit -> (unit, factor) a paper table laid out by targets (Table 1, QM9) prints: energies in meV."""
DIGITS = {"meV": 2}
"""Decimals of a unit in the tables (others: 4)."""


def shown_unit(dataset: str, unit: str) -> tuple[str, float]:
    """``(unit shown, factor)`` for a metric of ``dataset`` recorded in ``unit``: ``PRINTED`` for a dataset whose
    paper table has one column per target (the registry's ``table_layout == "targets"``: Table 1), else as
    recorded (factor 1)."""
    ds = dataset_of(dataset)
    if ds is not None and ds.table_layout == "targets" and unit in PRINTED:
        return PRINTED[unit]
    return unit, 1.0


def _value(run: dict, split: str, metric: str) -> float:
    """A run's ``split`` metric in the unit its table shows (``shown_unit`` of the run's recorded unit)."""
    return float(run[split][metric]) * shown_unit(run["dataset"], run.get("units", {}).get(metric, ""))[1]


def pair_key(run: dict) -> tuple:
    """What two runs must share to be paired: the seed and the split (the recorded ids when the record holds
    them, else the task's split description and sizes)."""
    split = run.get("split")
    if isinstance(split, dict):
        import hashlib
        sig = hashlib.sha1(json.dumps(split, sort_keys=True).encode()).hexdigest()[:12]
    else:
        info = run.get("task_info") or {}
        sig = json.dumps([info.get(k) for k in ("split", "n_train", "n_valid", "n_test")])
    return int(run["seed"]), sig


def reported_metrics(dataset: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """The test metrics the registry says ``dataset``'s tables report, else ``default``."""
    ds = dataset_of(dataset)
    return ds.metrics if ds is not None and ds.metrics else tuple(default)


def collect_results(out: str | Path) -> list[dict]:
    """Every finished run record of ``out`` with ``run_dir`` added: ``out`` itself when it is a run folder (holds
    ``result.json``), else the run folders one level below (``*/result.json``)."""
    records = []
    own = Path(out) / "result.json"
    for p in [own] if own.is_file() else sorted(Path(out).glob("*/result.json")):
        r = json.loads(p.read_text())
        r["run_dir"] = str(p.parent)
        records.append(r)
    return records


@dataclass
class Cell:
    """Mean ± std over seeds of one metric for one (dataset, student, lambda)."""
    mean: float
    std: float
    n: int
    lambda_ed: float


@dataclass
class TableRow:
    dataset: str
    metric: str
    unit: str                  # the unit shown (``shown_unit``)
    student: str
    baseline: Cell | None
    edg: Cell | None
    paired: PairedDiff | None = None   # w/ − w/o EDG per seed (same seed and split), in ``unit``

    @property
    def improvement(self) -> float:
        if self.baseline is None or self.edg is None:
            return float("nan")
        return relative_improvement(self.baseline.mean, self.edg.mean)


def _groups(results: list[dict]) -> dict[tuple[str, str, float], list[dict]]:
    g = defaultdict(list)
    for r in results:
        g[(r["dataset"], r["student"], float(r["lambda_ed"]))].append(r)
    return g


def _cell(runs: list[dict], split: str, metric: str) -> Cell:
    m, s = mean_std(_value(r, split, metric) for r in runs)
    return Cell(m, s, len(runs), float(runs[0]["lambda_ed"]))


def _paired(base_runs: list[dict], edg_runs: list[dict], metric: str) -> PairedDiff:
    """The w/ − w/o difference of ``metric`` (test split) over the seeds both arms ran on the same split."""
    return paired_difference({pair_key(r): _value(r, "test", metric) for r in edg_runs},
                             {pair_key(r): _value(r, "test", metric) for r in base_runs})


def best_lambda(results: list[dict], dataset: str, student: str) -> float | None:
    """The lambda > 0 with the lowest mean validation selection metric, or None without EDG runs."""
    best, best_val = None, np.inf
    for (d, s, lam), runs in _groups(results).items():
        if d != dataset or s != student or lam == 0:
            continue
        val = mean_std(r["valid"][r["select_metric"]] for r in runs)[0]
        if val < best_val:
            best, best_val = lam, val
    return best


def build_rows(results: list[dict]) -> list[TableRow]:
    """One row per (dataset, metric, student): baseline (lambda 0) and EDG at the validation-best lambda."""
    groups = _groups(results)
    rows = []
    for dataset, student in sorted({(d, s) for d, s, _ in groups}):
        lam = best_lambda(results, dataset, student)
        base_runs, edg_runs = groups.get((dataset, student, 0.0)), groups.get((dataset, student, lam))
        any_run = (base_runs or edg_runs)[0]
        for metric in reported_metrics(dataset, tuple(any_run["test"])):
            unit = shown_unit(dataset, any_run["units"].get(metric, ""))[0]
            rows.append(TableRow(dataset, metric, unit, student,
                                 _cell(base_runs, "test", metric) if base_runs else None,
                                 _cell(edg_runs, "test", metric) if edg_runs else None,
                                 _paired(base_runs, edg_runs, metric) if base_runs and edg_runs else None))
    return rows


def _digits(unit: str) -> int:
    return DIGITS.get(unit, 4)


def _fmt(c: Cell | None, digits: int = 4) -> str:
    if c is None:
        return "–"
    return f"{c.mean:.{digits}f}" + (f" ± {c.std:.{digits}f}" if c.n > 1 else "")


def _delta(r: TableRow | None) -> str:
    """The paired difference cell: ``-1.20 [-2.10, -0.30]``, ``... within noise``, ``... (1 seed: no interval)``."""
    return "–" if r is None or r.paired is None else r.paired.text(_digits(r.unit))


def _student_order(kind: str, students: set[str]) -> list[str]:
    """The paper's students of the family's table first (its order), then the others alphabetically."""
    from .paper_settings import PAPER_TABLES
    paper = [s for t in PAPER_TABLES.values() if t["family"] == kind for s in t["students"]]
    return [s for s in paper if s in students] + sorted(students - set(paper))


def _imp(r: TableRow | None) -> str:
    return "–" if r is None or np.isnan(r.improvement) else f"{r.improvement:+.1f}%"


def _targets_table(kind: str, rows: list[TableRow], title: str, order: tuple[str, ...]) -> str:
    """One family as the paper's Table 1: columns = subsets (targets; ``order`` first, units), rows = student x
    (w/o EDG, w/ EDG, Impr., lambda)."""
    sub = [r for r in rows if group_of(r.dataset) == kind]
    by_key = {(r.dataset.split(":", 1)[1], r.student): r for r in sub}
    seen = {r.dataset.split(":", 1)[1] for r in sub}
    targets = [t for t in order if t in seen] + sorted(seen - set(order))
    units = {r.dataset.split(":", 1)[1]: r.unit for r in sub}
    head = ["Model"] + [f"{t} ({units[t]})" for t in targets]
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in _student_order(kind, {r.student for r in sub}):
        cells = {"w/o EDG": [], "w/ EDG": [], "Impr.": [], "Δ (95% CI)": [], "λ": []}
        for t in targets:
            r = by_key.get((t, s))
            cells["w/o EDG"].append(_fmt(r.baseline, _digits(r.unit)) if r else "–")
            cells["w/ EDG"].append(_fmt(r.edg, _digits(r.unit)) if r else "–")
            cells["Impr."].append(_imp(r))
            cells["Δ (95% CI)"].append(_delta(r))
            cells["λ"].append(f"{r.edg.lambda_ed:g}" if r is not None and r.edg is not None else "–")
        for label, vals in cells.items():
            lines.append(f"| {s} {label} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def markdown_tables(rows: list[TableRow]) -> str:
    """One Markdown table per dataset family, laid out as the registry says (``edg_core.datasets``): QM9 as the
    paper's Table 1 (``targets``), rMD17 as its Table 2 (``rows``: rows = (dataset, metric), columns =
    student x (w/o, w/, Impr.)); a dataset without a family gets a ``rows`` table of its own."""
    out = []
    for kind in sorted({group_of(r.dataset) for r in rows}):
        ds = dataset_of(next(r.dataset for r in rows if group_of(r.dataset) == kind))
        title = f"### {ds.paper_table}" if ds is not None and ds.paper_table else f"### {kind}"
        if ds is not None and ds.table_layout == "targets":
            out.append(_targets_table(kind, rows, title, ds.subsets))
        else:
            out.append(_rows_by_dataset(kind, rows, title))
    note = ("Test MAE at the best validation epoch; mean ± std over seeds. w/ EDG: the λ > 0 with the lowest "
            "mean validation metric. Impr. = (w/o − w/) / w/o. Δ = w/ − w/o per seed, paired (same seed, same "
            "split): its mean over the seeds both arms ran and the 95% paired t-interval (negative: EDG lowered "
            "the error); 'within noise' where the interval contains 0, '1 seed: no interval' with one seed. "
            "QM9 energies in meV, as the paper prints them.")
    return "\n\n".join(out) + "\n\n" + note + "\n"


def _rows_by_dataset(kind: str, rows: list[TableRow], title: str) -> str:
    """Rows = (dataset, metric), columns = student x (w/o EDG, w/ EDG, Impr.) for one family."""
    sub = [r for r in rows if group_of(r.dataset) == kind]
    students = _student_order(kind, {r.student for r in sub})
    cols = ("w/o EDG", "w/ EDG", "Impr.", "Δ (95% CI)")
    head = ["Dataset", "Metric"] + [f"{s} {c}" for s in students for c in cols]
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key = {(r.dataset, r.metric, r.student): r for r in sub}
    for dataset, metric in sorted({(r.dataset, r.metric) for r in sub}):
        unit = next(r.unit for r in sub if (r.dataset, r.metric) == (dataset, metric))
        cells = [dataset.split(":", 1)[1], f"{METRIC_NAMES.get(metric, metric)} ({unit})"]
        for s in students:
            r = by_key.get((dataset, metric, s))
            if r is None:
                cells += ["–"] * len(cols)
                continue
            lam = f" (λ={r.edg.lambda_ed:g})" if r.edg is not None else ""
            digits = _digits(r.unit)
            cells += [_fmt(r.baseline, digits), _fmt(r.edg, digits) + lam, _imp(r), _delta(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(rows: list[TableRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dataset", "metric", "unit", "student", "baseline_mean", "baseline_std", "baseline_seeds",
                "edg_mean", "edg_std", "edg_seeds", "edg_lambda", "improvement_pct",
                "paired_seeds", "diff_mean", "diff_ci95_low", "diff_ci95_high", "paired_t_p", "verdict"])

    def g(x: float) -> str:
        return "" if np.isnan(x) else f"{x:.6g}"

    for r in rows:
        b, e, p = r.baseline, r.edg, r.paired
        w.writerow([r.dataset, r.metric, r.unit, r.student,
                    *(("", "", "") if b is None else (f"{b.mean:.6g}", f"{b.std:.6g}", b.n)),
                    *(("", "", "", "") if e is None else (f"{e.mean:.6g}", f"{e.std:.6g}", e.n, f"{e.lambda_ed:g}")),
                    "" if np.isnan(r.improvement) else f"{r.improvement:.3f}",
                    *(("", "", "", "", "", "") if p is None else
                      (p.n, g(p.mean), g(p.low), g(p.high), g(p.p), p.verdict))])
    return buf.getvalue()


def lambda_sweep_csv(results: list[dict]) -> str:
    """Every (dataset, student, lambda): mean valid selection metric and mean test metrics."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dataset", "student", "lambda", "seeds", "valid_select", "metric", "unit", "test_mean", "test_std"])
    for (d, s, lam), runs in sorted(_groups(results).items()):
        val = mean_std(r["valid"][r["select_metric"]] for r in runs)[0]
        for metric in reported_metrics(d, tuple(runs[0]["test"])):
            c = _cell(runs, "test", metric)
            unit = shown_unit(d, runs[0].get("units", {}).get(metric, ""))[0]
            w.writerow([d, s, f"{lam:g}", len(runs), f"{val:.6g}", metric, unit, f"{c.mean:.6g}", f"{c.std:.6g}"])
    return buf.getvalue()


def write_tables(results: list[dict], out: str | Path) -> dict[str, Path]:
    """results.md, results.csv and lambda_sweep.csv under ``out`` (atomically)."""
    out = Path(out)
    rows = build_rows(results)
    paths = {"markdown": out / "results.md", "csv": out / "results.csv", "lambda_sweep": out / "lambda_sweep.csv"}
    write_bytes_atomic(paths["markdown"], ("# EDG results\n\n" + markdown_tables(rows)).encode())
    write_bytes_atomic(paths["csv"], csv_table(rows).encode())
    write_bytes_atomic(paths["lambda_sweep"], lambda_sweep_csv(results).encode())
    return paths


# ---------------------------------------------------------------- figures
def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue())
    return path


def plot_learning_curves(results: list[dict], out: str | Path) -> list[Path]:
    """Per dataset x student: validation selection metric per epoch, one line per (lambda, seed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    by = defaultdict(list)
    for r in results:
        by[(r["dataset"], r["student"])].append(r)
    for (d, s), runs in sorted(by.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in sorted(runs, key=lambda r: (r["lambda_ed"], r["seed"])):
            hist = read_jsonl(Path(r["run_dir"]) / "metrics.jsonl") or \
                read_jsonl(Path(r["run_dir"]) / "history.jsonl")  # the file's name in earlier EDG versions
            key = f"valid_{r['select_metric']}"
            ep = [h["epoch"] for h in hist if key in h]
            ax.plot(ep, [h[key] for h in hist if key in h], lw=1.2,
                    label=f"λ={r['lambda_ed']:g} seed {r['seed']}", ls="-" if r["lambda_ed"] == 0 else "--")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {runs[0]['select_metric']}")
        ax.set_yscale("log")
        ax.set_title(f"{s} on {d}")
        ax.legend(fontsize=7)
        paths.append(_save(fig, Path(out) / f"curves_{s}_{d.replace(':', '-')}.png"))
        plt.close(fig)
    return paths


def plot_lambda_sweep(results: list[dict], out: str | Path) -> list[Path]:
    """Figure 4: test metric against lambda (log axis), the baseline (lambda 0) as a horizontal line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    groups = _groups(results)
    for d, s in sorted({(d, s) for d, s, _ in groups}):
        metrics = reported_metrics(d, ("mae",))
        lams = sorted(lam for dd, ss, lam in groups if (dd, ss) == (d, s) and lam > 0)
        if not lams:
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            cells = [_cell(groups[(d, s, lam)], "test", metric) for lam in lams]
            ax.errorbar(lams, [c.mean for c in cells], yerr=[c.std for c in cells], marker="o", label="w/ EDG")
            if (d, s, 0.0) in groups:
                b = _cell(groups[(d, s, 0.0)], "test", metric)
                ax.axhline(b.mean, color="k", ls="--", label="w/o EDG")
            ax.set_xscale("log")
            ax.set_xlabel("λ")
            unit = shown_unit(d, groups[(d, s, lams[0])][0]["units"].get(metric, ""))[0]
            ax.set_ylabel(f"test {METRIC_NAMES.get(metric, metric)} ({unit})")
            ax.legend(fontsize=8)
        fig.suptitle(f"{s} on {d}: λ sweep")
        fig.tight_layout()
        paths.append(_save(fig, Path(out) / f"lambda_sweep_{s}_{d.replace(':', '-')}.png"))
        plt.close(fig)
    return paths


def plot_trajectory_errors(results: list[dict], out: str | Path, max_frames: int = 1000) -> list[Path]:
    """Figure 3: per-frame |error| of the test frames in trajectory order, baseline vs EDG (best lambda, seed
    of the lowest id). Only for datasets whose molecule ids end with the frame index (the registry's
    ``trajectory_ids``: rMD17)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    on_trajectory = [r for r in results if getattr(dataset_of(r["dataset"]), "trajectory_ids", False)]
    for d, s in sorted({(r["dataset"], r["student"]) for r in on_trajectory}):
        lam = best_lambda(results, d, s)
        chosen = {}
        for label, want in (("w/o EDG", 0.0), (f"w/ EDG (λ={lam:g})" if lam else "", lam)):
            runs = sorted((r for r in results if (r["dataset"], r["student"], r["lambda_ed"]) == (d, s, want)),
                          key=lambda r: r["seed"])
            if runs and want is not None:
                chosen[label] = runs[0]
        if not chosen:
            continue
        metrics = reported_metrics(d, ("mae",))
        fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.6 * len(metrics)), sharex=True, squeeze=False)
        for label, r in chosen.items():
            with np.load(Path(r["run_dir"]) / "test_errors.npz") as z:
                frame = np.array([int(i.rsplit(":", 1)[1]) for i in z["ids"]])
                order = np.argsort(frame)[:max_frames]
                for ax, metric in zip(axes[:, 0], metrics):
                    ax.plot(frame[order], z[metric][order], lw=0.8, label=label, alpha=0.8)
                    ax.set_ylabel(f"|{METRIC_NAMES[metric]} error| ({r['units'][metric]})")
        axes[0, 0].legend(fontsize=8)
        axes[-1, 0].set_xlabel("frame index in the MD trajectory")
        fig.suptitle(f"{s} on {d}: per-frame test error")
        paths.append(_save(fig, Path(out) / f"trajectory_{s}_{d.replace(':', '-')}.png"))
        plt.close(fig)
    return paths


def write_report(out: str | Path, results: list[dict] | None = None, plots: bool = True) -> dict[str, object]:
    """Tables and (optionally) figures for every finished run under ``out``; returns the written paths."""
    results = collect_results(out) if results is None else results
    if not results:
        return {}
    paths: dict[str, object] = dict(write_tables(results, out))
    if plots:
        paths["curves"] = plot_learning_curves(results, out)
        paths["lambda_sweep_plots"] = plot_lambda_sweep(results, out)
        paths["trajectory_plots"] = plot_trajectory_errors(results, out)
    return paths

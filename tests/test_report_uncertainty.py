"""Gains with their uncertainty: `edg report` (and the pipeline's tables, the same writer) show mean ± std over
seeds and, for each w/ vs w/o EDG pair, the per-seed difference with a 95% paired t-interval, "within noise"
where it contains 0 and "1 seed: no interval" with one seed. The numbers are checked against scipy and numpy
computed here, independently of train.paired (which uses t.ppf; here ttest_rel's own interval)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from edg.cluster.cli import main
from edg.edg_core.io import write_json_atomic
from scipy import stats

UNITS = {"energy_mae": "kcal/mol", "force_mae": "kcal/mol/Å", "weighted_mae": "kcal/mol(/Å)"}
SPLIT = {"train": ["rmd17:ethanol:1", "rmd17:ethanol:2"], "valid": ["rmd17:ethanol:3"], "test": ["rmd17:ethanol:4"]}


def _record(root, dataset, lam, seed, energy, force, student="schnet", split=SPLIT, units=UNITS,
            metric_names=("energy_mae", "force_mae")):
    """A result.json in run_distill's format (the fields the report reads) with known test numbers."""
    run = f"{student}__{dataset.replace(':', '-')}__lam{lam:g}__seed{seed}"
    test = dict(zip(metric_names, (energy, force)))
    select = metric_names[-1]
    write_json_atomic(root / run / "result.json",
                      {"run": run, "student": student, "dataset": dataset, "lambda_ed": lam, "seed": seed,
                       "valid": {select: 1.0 + lam}, "test": test, "units": units, "select_metric": select,
                       "split": split})


def _report(tmp_path, runs) -> tuple[dict, str]:
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out), "--no-plots"]) == 0
    rows = {(r["dataset"], r["metric"], r["student"]): r for r in csv.DictReader(open(out / "results.csv"))}
    return rows, (out / "results.md").read_text()


def test_three_seeds_mean_std_and_paired_interval_match_scipy(tmp_path):
    runs = tmp_path / "runs"
    base_f, edg_f = [4.0, 4.6, 4.3], [3.5, 4.0, 3.9]     # EDG lower on every seed, by 0.5, 0.6, 0.4
    base_e, edg_e = [1.0, 1.3, 0.9], [1.1, 1.1, 1.0]     # mixed: +0.1, -0.2, +0.1
    for i, seed in enumerate((42, 43, 44)):
        _record(runs, "rmd17:ethanol", 0.0, seed, base_e[i], base_f[i])
        _record(runs, "rmd17:ethanol", 0.1, seed, edg_e[i], edg_f[i])
    rows, md = _report(tmp_path, runs)

    f = rows[("rmd17:ethanol", "force_mae", "schnet")]
    assert float(f["baseline_mean"]) == pytest.approx(np.mean(base_f), rel=1e-5)
    assert float(f["baseline_std"]) == pytest.approx(np.std(base_f, ddof=1), rel=1e-5)
    assert float(f["edg_std"]) == pytest.approx(np.std(edg_f, ddof=1), rel=1e-5)
    t = stats.ttest_rel(edg_f, base_f)
    ci = t.confidence_interval(0.95)
    assert f["paired_seeds"] == "3"
    assert float(f["diff_mean"]) == pytest.approx(np.mean(np.subtract(edg_f, base_f)), rel=1e-5)
    assert float(f["diff_ci95_low"]) == pytest.approx(ci.low, rel=1e-5)
    assert float(f["diff_ci95_high"]) == pytest.approx(ci.high, rel=1e-5)
    assert float(f["paired_t_p"]) == pytest.approx(t.pvalue, rel=1e-4)
    assert ci.high < 0 and f["verdict"] == "better"

    e = rows[("rmd17:ethanol", "energy_mae", "schnet")]
    ci_e = stats.ttest_rel(edg_e, base_e).confidence_interval(0.95)
    assert ci_e.low < 0 < ci_e.high and e["verdict"] == "within noise"
    assert float(e["diff_ci95_low"]) == pytest.approx(ci_e.low, rel=1e-5)

    force_line = next(ln for ln in md.splitlines() if ln.startswith("| ethanol | Forces"))
    assert f"{np.mean(base_f):.4f} ± {np.std(base_f, ddof=1):.4f}" in force_line
    assert f"-0.5000 [{ci.low:+.4f}, {ci.high:+.4f}]" in force_line and "within noise" not in force_line
    energy_line = next(ln for ln in md.splitlines() if ln.startswith("| ethanol | Energy"))
    assert f"[{ci_e.low:+.4f}, {ci_e.high:+.4f}] within noise" in energy_line
    assert "95% paired t-interval" in md


def test_one_seed_says_no_interval_and_pairs_only_shared_seeds_and_splits(tmp_path):
    runs = tmp_path / "runs"
    _record(runs, "rmd17:ethanol", 0.0, 42, 1.0, 4.0)
    _record(runs, "rmd17:ethanol", 0.5, 42, 0.8, 3.0)
    # aspirin: w/o on seeds 1, 2, 3; w/ on seeds 2, 3, 4, seed 3 on another split: only seed 2 pairs
    other = {**SPLIT, "test": ["rmd17:aspirin:9"]}
    for seed, energy in ((1, 2.0), (2, 2.2), (3, 2.4)):
        _record(runs, "rmd17:aspirin", 0.0, seed, energy, 6.0)
    for seed, energy, split in ((2, 2.0, SPLIT), (3, 1.0, other), (4, 1.5, SPLIT)):
        _record(runs, "rmd17:aspirin", 0.1, seed, energy, 5.0, split=split)
    rows, md = _report(tmp_path, runs)

    eth = rows[("rmd17:ethanol", "energy_mae", "schnet")]
    assert eth["paired_seeds"] == "1" and eth["verdict"] == "1 seed: no interval"
    assert eth["diff_ci95_low"] == "" and float(eth["diff_mean"]) == pytest.approx(-0.2)
    line = next(ln for ln in md.splitlines() if ln.startswith("| ethanol | Energy"))
    assert "-0.2000 (1 seed: no interval)" in line

    asp = rows[("rmd17:aspirin", "energy_mae", "schnet")]
    assert asp["baseline_seeds"] == "3" and asp["edg_seeds"] == "3"   # mean ± std over every seed of each arm
    assert asp["paired_seeds"] == "1" and float(asp["diff_mean"]) == pytest.approx(2.0 - 2.2)


def test_table1_shows_qm9_energies_in_mev_with_paired_intervals(tmp_path):
    """QM9 energies recorded in eV (the task's unit) are printed in meV as the paper's Table 1; a run recorded in
    meV already is not scaled twice; intervals are in meV."""
    runs = tmp_path / "runs"
    base, edg = [0.020, 0.024, 0.022], [0.015, 0.021, 0.016]   # eV
    for i, seed in enumerate((1, 2, 3)):
        _record(runs, "qm9:U0", 0.0, seed, base[i], None, units={"mae": "eV"}, metric_names=("mae",))
        _record(runs, "qm9:U0", 0.5, seed, edg[i], None, units={"mae": "eV"}, metric_names=("mae",))
    _record(runs, "qm9:mu", 0.0, 1, 0.05, None, units={"mae": "D"}, metric_names=("mae",))
    rows, md = _report(tmp_path, runs)
    u0 = rows[("qm9:U0", "mae", "schnet")]
    assert u0["unit"] == "meV"
    assert float(u0["baseline_mean"]) == pytest.approx(1000 * np.mean(base), rel=1e-5)
    ci = stats.ttest_rel(1000 * np.array(edg), 1000 * np.array(base)).confidence_interval(0.95)
    assert float(u0["diff_ci95_low"]) == pytest.approx(ci.low, rel=1e-5)
    assert rows[("qm9:mu", "mae", "schnet")]["unit"] == "D"
    table = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in md.splitlines() if ln.startswith("| ")]
    assert table[0][1:] == ["mu (D)", "U0 (meV)"]
    cells = {r[0]: r[1:] for r in table[1:]}
    assert cells["schnet w/o EDG"][1] == f"{1000 * np.mean(base):.2f} ± {1000 * np.std(base, ddof=1):.2f}"
    assert cells["schnet Δ (95% CI)"][1].startswith(f"{1000 * np.mean(np.subtract(edg, base)):+.2f} [")


def test_report_pairs_real_distillation_runs_by_seed(tmp_path):
    """Tiny real runs (two seeds x w/o, w/ EDG): their records pair by seed and split, and the table's interval
    is the one scipy gives for their recorded test errors."""
    import json
    small = [a for kv in ("hidden_channels=16", "num_filters=16", "num_interactions=2", "num_gaussians=12",
                          "cutoff=5.0") for a in ("--student-arg", kv)]
    runs = tmp_path / "runs"
    for lam in ("0", "0.1"):
        for seed in ("1", "2"):
            assert main(["distill", "--dataset", "rmd17:ethanol?root=embedded", "--teacher-targets",
                         "standin:coulomb", "--epochs", "1", "--batch-size", "8", "--lambda", lam, "--seed", seed,
                         *small, "--out", str(runs)]) == 0
    rows, _ = _report(tmp_path, runs)
    rec = {(r["lambda_ed"], r["seed"]): r["test"]["force_mae"]
           for r in (json.loads(p.read_text()) for p in runs.glob("*/result.json"))}
    base, edg = [rec[(0.0, s)] for s in (1, 2)], [rec[(0.1, s)] for s in (1, 2)]
    f = rows[("rmd17:ethanol", "force_mae", "schnet")]
    assert f["paired_seeds"] == "2"
    assert float(f["diff_ci95_high"]) == pytest.approx(stats.ttest_rel(edg, base).confidence_interval().high,
                                                      rel=1e-4)

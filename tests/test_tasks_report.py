"""Result tables and figures built from given run records (no training)."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from edg.edg_core.io import append_jsonl, write_json_atomic
from edg.train.report import build_rows, collect_results, csv_table, markdown_tables, write_report

UNITS = {"energy_mae": "kcal/mol", "force_mae": "kcal/mol/Å", "weighted_mae": "kcal/mol(/Å)"}


def _record(tmp, dataset, lam, seed, valid, energy, force, student="schnet"):
    run = f"{student}__{dataset.replace(':', '-')}__lam{lam:g}__seed{seed}"
    d = tmp / run
    for e in range(1, 4):
        append_jsonl(d / "history.jsonl", {"epoch": e, "valid_weighted_mae": valid * (4 - e)})
    ids = np.array([f"{dataset}:{i}" for i in (30, 10, 20)])
    np.savez(d / "test_errors.npz", ids=ids, energy_mae=np.full(3, energy), force_mae=np.full(3, force),
             weighted_mae=np.full(3, force))
    r = {"run": run, "student": student, "dataset": dataset, "lambda_ed": lam, "seed": seed,
         "valid": {"weighted_mae": valid}, "test": {"energy_mae": energy, "force_mae": force, "weighted_mae": force},
         "units": UNITS, "select_metric": "weighted_mae"}
    write_json_atomic(d / "result.json", r)
    return r


@pytest.fixture()
def results(tmp_path):
    # ethanol: baseline over two seeds; lambda 0.1 best on validation (but not on test), lambda 1.0 worse
    _record(tmp_path, "rmd17:ethanol", 0.0, 1, valid=2.0, energy=1.0, force=4.0)
    _record(tmp_path, "rmd17:ethanol", 0.0, 2, valid=2.2, energy=1.2, force=4.4)
    _record(tmp_path, "rmd17:ethanol", 0.1, 1, valid=1.5, energy=0.9, force=3.0)
    _record(tmp_path, "rmd17:ethanol", 0.1, 2, valid=1.7, energy=0.7, force=3.4)
    _record(tmp_path, "rmd17:ethanol", 1.0, 1, valid=1.9, energy=0.1, force=0.1)
    _record(tmp_path, "rmd17:aspirin", 0.0, 1, valid=5.0, energy=2.0, force=6.0)  # no EDG run yet
    return tmp_path


def test_rows_select_lambda_on_validation_and_compute_improvement(results):
    rows = {(r.dataset, r.metric): r for r in build_rows(collect_results(results))}
    e = rows[("rmd17:ethanol", "energy_mae")]
    assert e.baseline.mean == pytest.approx(1.1) and e.baseline.n == 2
    assert e.baseline.std == pytest.approx(np.std([1.0, 1.2], ddof=1))
    assert e.edg.lambda_ed == 0.1  # chosen by validation, although lambda 1.0 is better on test
    assert e.edg.mean == pytest.approx(0.8)
    assert e.improvement == pytest.approx(100 * (1.1 - 0.8) / 1.1)
    f = rows[("rmd17:ethanol", "force_mae")]
    assert f.improvement == pytest.approx(100 * (4.2 - 3.2) / 4.2)
    a = rows[("rmd17:aspirin", "force_mae")]
    assert a.edg is None and np.isnan(a.improvement)
    assert ("rmd17:ethanol", "weighted_mae") not in rows  # the paper reports energy and force


def test_markdown_and_csv_layout(results):
    rows = build_rows(collect_results(results))
    md = markdown_tables(rows)
    assert "| Dataset | Metric | schnet w/o EDG | schnet w/ EDG | schnet Impr. | schnet Δ (95% CI) |" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| ethanol | Energy"))
    assert "1.1000 ± 0.1414" in line and "0.8000 ± 0.1414 (λ=0.1)" in line and "+27.3%" in line
    assert "-0.3000 [" in line  # seeds 1 and 2 paired: differences -0.1 and -0.5
    asp = next(ln for ln in md.splitlines() if ln.startswith("| aspirin | Force"))
    assert asp.endswith("| 6.0000 | – | – | – |")
    table = list(csv.DictReader(io.StringIO(csv_table(rows))))
    eth_f = next(t for t in table if t["dataset"] == "rmd17:ethanol" and t["metric"] == "force_mae")
    assert float(eth_f["improvement_pct"]) == pytest.approx(23.8095, abs=1e-3)
    assert eth_f["edg_lambda"] == "0.1" and eth_f["baseline_seeds"] == "2" and eth_f["unit"] == "kcal/mol/Å"


def test_write_report_files_and_figures(results):
    paths = write_report(results)
    for key in ("markdown", "csv", "lambda_sweep"):
        assert paths[key].exists()
    sweep = list(csv.DictReader(open(paths["lambda_sweep"])))
    assert {(s["dataset"], s["lambda"]) for s in sweep} >= {("rmd17:ethanol", "0"), ("rmd17:ethanol", "1")}
    pngs = paths["curves"] + paths["lambda_sweep_plots"] + paths["trajectory_plots"]
    assert len(paths["curves"]) == 2 and len(paths["lambda_sweep_plots"]) == 1
    assert len(paths["trajectory_plots"]) == 2
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def _qm9_record(target, student, lam, valid, mae):
    return {"run": f"{student}__qm9-{target}__lam{lam:g}__seed42", "student": student, "dataset": f"qm9:{target}",
            "lambda_ed": lam, "seed": 42, "valid": {"mae": valid}, "test": {"mae": mae},
            "units": {"mae": {"U0": "eV", "mu": "D"}[target]}, "select_metric": "mae"}


def test_table1_has_qm9_targets_as_columns_in_paper_order_and_students_as_rows():
    results = [_qm9_record("U0", "schnet", 0.0, 0.02, 0.020), _qm9_record("U0", "schnet", 0.5, 0.015, 0.015),
               _qm9_record("U0", "schnet", 1.0, 0.018, 0.001),  # better on test, worse on validation
               _qm9_record("mu", "schnet", 0.0, 0.05, 0.050), _qm9_record("mu", "egnn", 0.0, 0.04, 0.040)]
    md = markdown_tables(build_rows(results))
    table = [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines()
             if line.startswith("| ")]
    assert table[0][1:] == ["mu (D)", "U0 (meV)"]  # paper order: mu ... U0, not alphabetical; energies in meV
    rows = {r[0]: r[1:] for r in table[1:]}
    assert list(rows)[:6] == ["schnet w/o EDG", "schnet w/ EDG", "schnet Impr.", "schnet Δ (95% CI)", "schnet λ",
                              "egnn w/o EDG"]
    assert rows["schnet w/o EDG"] == ["0.0500", "20.00"]
    assert rows["schnet w/ EDG"] == ["–", "15.00"] and rows["schnet λ"] == ["–", "0.5"]  # chosen on validation
    assert rows["schnet Δ (95% CI)"] == ["–", "-5.00 (1 seed: no interval)"]
    assert rows["schnet Impr."] == ["–", "+25.0%"]
    assert rows["egnn w/o EDG"] == ["0.0400", "–"] and rows["egnn w/ EDG"] == ["–", "–"]
    assert "### Table 1: QM9" in md

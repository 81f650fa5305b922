"""`edg report RUN... --out DIR` compares finished runs from several places: the paper-layout table, curves, and
one-line refusals for a folder without runs and a run name found twice."""
from __future__ import annotations

import shutil

import pytest
from edg.cluster.cli import main

RUN = ["distill", "--dataset", "rmd17:ethanol?root=embedded", "--teacher-targets", "standin:coulomb",
       "--epochs", "1", "--batch-size", "8"]


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    assert main([*RUN, "--lambda", "0", "--out", str(a)]) == 0
    assert main([*RUN, "--lambda", "0.1", "--out", str(b)]) == 0
    return a, b


def test_report_compares_runs_from_two_folders(two_folders, tmp_path, capsys):
    a, b = two_folders
    out = tmp_path / "compare"
    assert main(["report", str(a), str(b / "schnet__rmd17-ethanol__lam0.1__seed42"), "--out", str(out)]) == 0
    table = (out / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| ethanol | Energy"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] != "" and "(λ=0.1)" in cells[3] and cells[4].endswith("%")  # w/o, w/ EDG, improvement
    assert list(out.glob("curves_*.png"))
    assert "report: 2 runs" in capsys.readouterr().out


def test_report_refuses_an_empty_folder_and_a_run_twice(two_folders, tmp_path, capsys):
    a, _ = two_folders
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--out", str(tmp_path / "r1")]) == 2
    assert "no finished run here" in capsys.readouterr().err
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    assert main(["report", str(a), str(copy), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "found twice" in err and len(err.splitlines()) == 1

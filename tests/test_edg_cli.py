"""``edg distill`` and ``edg benchmark`` end to end on a few rMD17 frames with a tiny SchNet."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml
from edg.cluster.cli import main

ROOT = "/work/shared/data/rmd17"
TINY = ["--student-arg", "hidden_channels=8", "--student-arg", "num_filters=8", "--student-arg",
        "num_interactions=1", "--student-arg", "num_gaussians=8", "--student-arg", "cutoff=4.0"]
DATA = ["--task", f"root={ROOT}", "--task", "train_size=8", "--task", "valid_size=4", "--task", "test_size=4"]


def test_distill_writes_run_and_skips_when_finished(tmp_path, capsys):
    args = ["distill", "--dataset", "rmd17:ethanol", "--lambda", "0.5", "--teacher-targets", "standin:coulomb",
            "--out", str(tmp_path), "--epochs", "2", "--batch-size", "4", "--seed", "3", *TINY, *DATA]
    assert main(args) == 0
    run = tmp_path / "schnet__rmd17-ethanol__lam0.5__seed3"
    r = json.loads((run / "result.json").read_text())
    assert r["lambda_ed"] == 0.5 and r["seed"] == 3 and r["epochs"] == 2
    assert r["split"]["train"][0].startswith("rmd17:ethanol:") and len(r["split"]["test"]) == 4
    assert set(r["test"]) == {"energy_mae", "force_mae", "weighted_mae", "weighted_mse"}
    assert "stand-in" in r["teacher_targets"]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["edg"]["lambda_ed"] == 0.5 and cfg["student_args"]["hidden_channels"] == 8
    # unset fields resolved to the paper's SchNet-on-rMD17 settings and written with the run
    assert (cfg["fit"]["lr"], cfg["fit"]["loss"], cfg["fit"]["scheduler"], cfg["fit"]["batch_size"]) == \
        (5e-4, "l1", "cosine", 4)
    assert cfg["task"]["select_metric"] == "force_mae" and r["select_metric"] == "force_mae"
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 2 and hist[0]["train_ed_loss"] > 0
    assert (run / "best_student.pt").exists() and (run / "test_errors.npz").exists()
    assert not (run / "checkpoint").exists()  # removed when the run is finished
    assert (run / "metrics.csv").read_text().splitlines()[0].split(",")[:2] == ["epoch", "train_loss"]
    assert json.loads((run / "progress.json").read_text())["state"] == "done"
    err = capsys.readouterr().err  # a line per epoch without a TTY, validation metrics with units
    assert "schnet__rmd17-ethanol__lam0.5__seed3 epoch 2/2" in err and "kcal/mol/Å" in err and "ETA" in err

    stamp = (run / "result.json").stat().st_mtime_ns
    assert main(args) == 0  # finished: skipped
    assert (run / "result.json").stat().st_mtime_ns == stamp
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_distill_resumes_from_checkpoint(tmp_path):
    base = ["distill", "--dataset", "rmd17:ethanol", "--out", str(tmp_path), "--batch-size", "4", *TINY, *DATA]
    assert main(base + ["--epochs", "4"]) == 0
    full = json.loads((tmp_path / "schnet__rmd17-ethanol__lam0__seed42" / "result.json").read_text())

    from edg.train.loops.distill import DistillConfig, train_student
    from edg.train.students import build_student
    from edg.train.tasks import build_task
    cfg = DistillConfig(out=str(tmp_path / "b"), dataset="rmd17:ethanol").resolved()  # the paper's settings
    task = build_task("rmd17:ethanol", **cfg.task, root=ROOT, train_size=8, valid_size=4, test_size=4)
    run_dir = tmp_path / "b" / "run"
    run_dir.mkdir(parents=True)
    sargs = {"hidden_channels": 8, "num_filters": 8, "num_interactions": 1, "num_gaussians": 8, "cutoff": 4.0}
    torch.manual_seed(cfg.fit.seed)
    m = build_student("schnet", **sargs)
    # an "interrupted" run: 3 epochs done under a 4-epoch schedule, the last checkpoint after epoch 2
    fc = dataclasses.replace(cfg.fit, epochs=4, batch_size=4, checkpoint_every=2)
    train_student(task, m, fc, run_dir=run_dir, stop_after=3)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3
    torch.manual_seed(123)  # a resumed run must not depend on a fresh initialisation
    res = train_student(task, build_student("schnet", **sargs), fc, run_dir=run_dir)
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4
    assert res.test["force_mae"] == pytest.approx(full["test"]["force_mae"], rel=1e-5)


def test_benchmark_grid_writes_tables(tmp_path, capsys):
    args = ["benchmark", "--datasets", "rmd17:ethanol", "--lambdas", "0", "0.1", "--seeds", "1",
            "--teacher-targets", "standin:coulomb", "--out", str(tmp_path), "--epochs", "1", "--batch-size", "4",
            "--no-plots", *TINY, *DATA]
    assert main(args) == 0
    md = (tmp_path / "results.md").read_text()
    assert "| ethanol | Energy (kcal/mol) |" in md and "(λ=0.1)" in md
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 3  # header + energy + force


def test_lambda_without_targets_is_a_clear_error(tmp_path, capsys):
    # the embedded frames: the test must not depend on where rMD17 lies (a clone without ../shared)
    assert main(["distill", "--dataset", "rmd17:ethanol?root=embedded", "--lambda", "0.1", "--out", str(tmp_path)]) == 2
    assert "--teacher-targets" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_with_ray_tasks(tmp_path):
    import shutil
    import tempfile
    ray_dir = tempfile.mkdtemp(prefix="edgray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    args = ["benchmark", "--datasets", "rmd17:ethanol", "--lambdas", "0", "0.1", "--seeds", "1", "--ray",
            "--ray-temp-dir", ray_dir, "--teacher-targets", "standin:coulomb",
            "--out", str(tmp_path / "runs"), "--epochs", "1", "--batch-size", "4", "--no-plots", *TINY, *DATA]
    try:
        assert main(args) == 0
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert len(list((tmp_path / "runs").glob("*/result.json"))) == 2
    assert (tmp_path / "runs" / "results.md").exists()
